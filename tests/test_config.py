import pytest

from ptq4vm_fx.config import METHODS, PRESETS, QuantConfig, compatible, resolve_config
from ptq4vm_fx.errors import InputError
from ptq4vm_fx.models.zoo import FAMILY as VIM


def test_presets_and_round_trip():
    for preset, (w, a) in PRESETS.items():
        for method in filter(lambda m: compatible(preset, m), METHODS):
            config = QuantConfig.preset_config(preset, method)
            assert (config.weight_bits, config.act_bits, config.method) == (w, a, method)
            assert QuantConfig.from_dict(config.to_dict()) == config
    assert resolve_config("W4A4").act_bits == 4
    assert resolve_config(None).name == "ptq4vm-w8a8"


@pytest.mark.parametrize("kwargs,match", [
    (dict(weight_bits=9), "weight_bits must be an int"),
    (dict(act_bits=1), "act_bits must be an int"),
    (dict(alpha=1.5), "alpha must be in"),
    (dict(linears=()), "linears must be a non-empty list"),
    (dict(linears="in_proj"), "linears must be a non-empty list"),
    (dict(jlss_epochs=-1), "jlss_epochs >= 0"),
])
def test_invalid_configs_are_named(kwargs, match):
    with pytest.raises(InputError, match=match):
        QuantConfig(**kwargs)


def test_family_defaults_fill_what_the_config_leaves_open():
    config = QuantConfig.preset_config("w8a8", "pts_smooth")
    assert config.alpha is None and config.linears is None
    resolved = config.for_family(VIM)
    assert resolved.alpha == VIM.alpha == 0.5 and resolved.linears == VIM.linears
    assert QuantConfig(method="pts_smooth", alpha=0.7).for_family(VIM).alpha == 0.7
    assert QuantConfig(method="minmax").for_family(VIM).alpha is None  # minmax does not smooth
    assert QuantConfig.from_dict(resolved.to_dict()) == resolved
    with pytest.raises(InputError, match=r"linears \['head'\] are not quantizable linears of a vim model"):
        QuantConfig(linears=("head", "in_proj")).for_family(VIM)


def test_unknown_fields_in_a_dict():
    with pytest.raises(InputError, match="unknown QuantConfig fields"):
        QuantConfig.from_dict({"bits": 8})


def test_bad_configs_are_input_errors():
    with pytest.raises(InputError, match="unknown preset 'w3a3'"):
        QuantConfig.preset_config("w3a3")
    with pytest.raises(InputError, match="config must be a QuantConfig or a preset name, got int"):
        resolve_config(8)
    with pytest.raises(InputError, match="weight_bits is set by the preset"):
        QuantConfig.preset_config("w4a4", "pts", weight_bits=8)
    with pytest.raises(InputError, match=r"unknown QuantConfig options: \['epochs'\]"):
        QuantConfig.preset_config("w4a4", "ptq4vm", epochs=3)


@pytest.mark.parametrize("method, option, value, stage", [
    ("smoothquant", "jlss_epochs", 5, "no JLSS"),
    ("pts_smooth", "seed", 1, "no JLSS"),
    ("pts_smooth", "grid_norm", 2.0, "no clipping grid search"),
    ("minmax", "alpha", 0.8, "no smoothing"),
    ("dynamic", "grid_samples", 32, "no clipping grid search"),
    ("pts", "jlss_lr", 1e-3, "no JLSS"),
])
def test_options_the_method_does_not_read_are_refused(method, option, value, stage):
    expected = f"option {option} does nothing for method '{method}' \\(it runs {stage}\\)"
    with pytest.raises(InputError, match=expected):
        QuantConfig.preset_config("w4a4", method, **{option: value})
    with pytest.raises(InputError, match=expected):
        QuantConfig(method=method, **{option: value})


def test_an_unread_option_is_refused_even_at_its_default_value():
    with pytest.raises(InputError, match="option jlss_epochs does nothing for method 'smoothquant'"):
        QuantConfig.preset_config("w8a8", "smoothquant", jlss_epochs=QuantConfig().jlss_epochs)


@pytest.mark.parametrize("method, options", [
    ("minmax", dict(linears=("in_proj",))),
    ("dynamic", dict(linears=("out_proj",))),
    ("smoothquant", dict(alpha=0.8)),
    ("pts", dict(linears=("x_proj", "dt_proj"))),
    ("pts_smooth", dict(alpha=0.7, linears=("in_proj",))),
    ("ptq4vm", dict(alpha=0.6, grid_candidates=10, grid_norm=2.0, grid_samples=32, jlss_epochs=2,
                    jlss_batch_size=8, jlss_lr=1e-3, jlss_weight_decay=1e-4, seed=3)),
])
def test_each_method_accepts_its_own_options(method, options):
    config = QuantConfig.preset_config("w4a4", method, **options)
    assert all(getattr(config, k) == (tuple(v) if k == "linears" else v) for k, v in options.items())
    assert QuantConfig.from_dict(config.to_dict()) == config


# ---- weight methods (rtn, VQ) -----------------------------------------------------------------


def test_weight_presets_nest_the_vq_config():
    config = QuantConfig.preset_config("w2a16", "vimvq", vq={"steps": 7})
    assert (config.weight_bits, config.act_bits, config.weight_only, config.smooth) == (2, 16, True, False)
    assert (config.vq.k, config.vq.d, config.vq.steps, config.vq.incremental) == (256, 4, 7, True)
    data = config.to_dict()
    assert data["vq"]["steps"] == 7 and QuantConfig.from_dict(data) == config
    assert QuantConfig.preset_config("w3a16", "vq_convex").vq.incremental is False  # set by the method
    assert QuantConfig.preset_config("w3a16", "vimvq", vq={"d": 1}).vq.k == 8  # k = 2^(bits * d)
    combined = QuantConfig.preset_config("w2a8", "vimvq")
    assert (combined.granularity, combined.smooth, combined.vq.k) == ("per_token", True, 256)
    assert QuantConfig.preset_config("w1a16", "rtn").vq is None
    assert compatible("w2a8", "vimvq") and not compatible("w2a8", "rtn") and not compatible("w3a16", "ptq4vm")


@pytest.mark.parametrize("preset, method, options, match", [
    ("w3a16", "ptq4vm", {}, "preset w3a16 is not for method 'ptq4vm': it is for rtn, vq_kmeans"),
    ("w2a8", "rtn", {}, "preset w2a8 is not for method 'rtn'"),
    ("w3a16", "vimvq", dict(vq={"d": 4}), "needs 12-bit codes"),
    ("w2a16", "vimvq", dict(vq={"k": 64}), r"k=64 codewords of length d=4 is log2\(k\)/d = 1.5 bits"),
    ("w2a16", "vq_kmeans", dict(vq={"steps": 3}), "option vq.steps does nothing for method 'vq_kmeans'"),
    ("w2a16", "vq_convex", dict(vq={"confirm_threshold": 0.9}), "vq.confirm_threshold does nothing"),
    ("w2a16", "rtn", dict(vq={}), "option vq does nothing for method 'rtn'"),
    ("w2a16", "vimvq", dict(alpha=0.5), "alpha does nothing for method 'vimvq' at act_bits=16"),
])
def test_weight_configs_that_make_no_sense_are_refused(preset, method, options, match):
    with pytest.raises(InputError, match=match):
        QuantConfig.preset_config(preset, method, **options)


def test_weight_bits_and_codebooks_are_checked_in_the_constructor():
    with pytest.raises(InputError, match="act_bits must be 16 \\(weights only\\) for rtn"):
        QuantConfig(method="rtn", weight_bits=2, act_bits=8)
    with pytest.raises(InputError, match="no default codebook for 4-bit weights"):
        QuantConfig(method="vimvq", weight_bits=4, act_bits=16)
    with pytest.raises(InputError, match="act_bits must be an int in \\[2, 8\\], got 16 \\(weight-only configs"):
        QuantConfig(method="pts", weight_bits=4, act_bits=16)
    with pytest.raises(InputError, match="incremental=False is method vq_convex"):
        QuantConfig(method="vimvq", weight_bits=2, act_bits=16, vq=QuantConfig.preset_config(
            "w2a16", "vq_convex").vq)


def test_recipe_official_takes_the_official_settings_per_family():
    from ptq4vm_fx.config import OFFICIAL
    from ptq4vm_fx.models.localmamba import VSSM_FAMILY
    from ptq4vm_fx.models.vmamba import FAMILY as VMAMBA

    for family, epochs, batch, lrs, alpha in ((VIM, 100, 256, (5e-4, 5e-4, 1e-2), 0.5),
                                              (VMAMBA, 50, 32, (1e-4, 1e-4, 1e-4), 0.65)):
        config = QuantConfig.preset_config("w4a4", recipe="official").for_family(family)
        got = (config.jlss_epochs, config.jlss_batch_size, config.jlss_lrs, config.alpha)
        assert got == (epochs, batch, lrs, alpha)
        assert all(getattr(config, name) == value for name, value in OFFICIAL.items())
        assert QuantConfig.from_dict(config.to_dict()).for_family(family) == config
    assert QuantConfig.preset_config("w4a4").for_family(VIM).jlss_epochs == 10  # the default recipe changes nothing
    with pytest.raises(InputError, match="recipe official sets jlss_epochs"):
        QuantConfig.preset_config("w4a4", recipe="official", jlss_epochs=5).for_family(VIM)
    with pytest.raises(InputError, match="no settings for local_vssm models"):
        QuantConfig.preset_config("w4a4", recipe="official").for_family(VSSM_FAMILY)
    with pytest.raises(InputError, match="option recipe does nothing for method 'pts_smooth'"):
        QuantConfig.preset_config("w4a4", "pts_smooth", recipe="official")


@pytest.mark.parametrize("kwargs,match", [
    (dict(act_search="middle"), "act_search must be one of zero, midpoint, both"),
    (dict(jlss_loss="l1"), "jlss_loss must be one of"),
    (dict(jlss_lr=(1e-3, 1e-3)), "jlss_lr must be a positive rate or three"),
    (dict(jlss_lr=-1.0), "jlss_lr must be a positive rate"),
    (dict(jlss_grad_clip=0.0), "jlss_grad_clip must be positive"),
])
def test_jlss_options_are_checked(kwargs, match):
    with pytest.raises(InputError, match=match):
        QuantConfig(**kwargs)
    assert QuantConfig.from_dict(QuantConfig(jlss_lr=[1e-3, 2e-3, 3e-3]).to_dict()).jlss_lrs == (1e-3, 2e-3, 3e-3)
