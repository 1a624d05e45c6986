"""The weight methods' pass (rtn, vq_kmeans, vq_convex, vimvq) through prepare / convert, on a tiny Vim."""

import pytest
import torch
from torch import nn

import ptq4vm_fx
from ptq4vm_fx.capture import blocks
from ptq4vm_fx.errors import InputError
from ptq4vm_fx.passes.insert_observers import quantizable_linears
from ptq4vm_fx.quant.vq import rtn_weight
from ptq4vm_fx.quant.vq_linear import VQActLinear, VQLinear

from ..conftest import calibrated, tiny_vim

FAST = {"steps": 20, "codebook_steps": 5, "hull_every": 10, "batch_size": 8}  # (vimvq: confirm_every 10)


def _images(n=16, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _modules(qmodel) -> dict[str, nn.Module]:
    """{qualified name: module} of the family's linears in every block."""
    names = ("in_proj", "x_proj", "x_proj_b", "dt_proj", "dt_proj_b", "out_proj")
    return {f"{prefix}.{node.target}": block.get_submodule(node.target)
            for prefix, block in blocks(qmodel) for node in block.graph.nodes
            if node.op == "call_module" and node.target.rpartition(".")[2] in names}


def _convert(model, config, images):
    return ptq4vm_fx.convert(calibrated(model, images, config, batch_size=8))


@pytest.mark.parametrize("method", ["vq_kmeans", "vq_convex", "vimvq"])
def test_vq_methods_replace_the_fitting_linears_and_keep_dt_proj_float(tiny, method):
    options = {} if method == "vq_kmeans" else {"vq": FAST}
    config = ptq4vm_fx.QuantConfig.preset_config("w2a16", method, **options)
    images = _images()
    prepared = calibrated(tiny, images, config, batch_size=8)
    assert not any("observer" in name for name, _ in prepared.named_modules())  # weight-only: inputs only
    qmodel = ptq4vm_fx.convert(prepared)
    modules = _modules(qmodel)
    for name, module in modules.items():
        if "dt_proj" in name:  # in_features = dt_rank = 2: not a multiple of d = 4
            assert type(module) is nn.Linear and "not divisible by the codeword length d=4" in \
                qmodel.meta["float_layers"][name]
        else:
            assert type(module) is VQLinear and (module.k, module.d) == (256, 4), name
    stats = qmodel.meta["block_stats"]
    assert list(stats) == ["layers.0", "layers.1"]
    for block in stats.values():  # (20 steps need not beat the k-means start: the next test trains longer)
        assert 0 < block["loss_after"] and (method != "vq_kmeans" or block["loss_after"] == block["loss_before"])
        assert len(block["layers"]) == 4 and block["seconds"] > 0
        assert ("vq" in block) == (method != "vq_kmeans")
    if method == "vimvq":
        layer = stats["layers.0"]["vq"]["layers"][0]
        assert layer["name"] == "layers.0.mixer.in_proj" and layer["nominal_bits"] == 2.0
        assert layer["confirmed_by_threshold"] + layer["confirmed_forced"] == 128 * 32 // 4
    assert qmodel.meta["convert_seconds"] > 0 and qmodel.meta["peak_rss_mib"] > 100
    assert qmodel.meta["peak_cuda_mib"] is None
    with torch.no_grad():
        y, ref = qmodel(images), tiny(images)
    assert 10 * torch.log10(ref.pow(2).sum() / (y - ref).pow(2).sum()) > 5


def test_calibration_lowers_the_block_loss_below_the_kmeans_start(tiny):
    config = ptq4vm_fx.QuantConfig.preset_config("w1a16", "vimvq", vq={**FAST, "steps": 60})
    stats = _convert(tiny, config, _images())
    assert all(s["loss_after"] < 0.9 * s["loss_before"] for s in stats.meta["block_stats"].values())


@pytest.mark.parametrize("preset, dt_proj_fits", [("w2a16", False), ("w3a16", True)])
def test_rtn_rounds_the_layers_the_preset_codebook_fits(tiny, preset, dt_proj_fits):
    config = ptq4vm_fx.QuantConfig.preset_config(preset, "rtn")
    qmodel = _convert(tiny, config, _images())
    for name, module in _modules(qmodel).items():  # d = 4 (w2) does not divide dt_rank = 2, d = 2 (w3) does
        original = tiny.get_submodule(name).weight
        rounded = "dt_proj" not in name or dt_proj_fits
        assert type(module) is nn.Linear
        assert torch.equal(module.weight, rtn_weight(original, config.weight_bits) if rounded else original), name


def test_activations_quantized_too(tiny):
    config = ptq4vm_fx.QuantConfig.preset_config("w2a8", "vimvq", vq=FAST)
    images = _images()
    prepared = calibrated(tiny, images, config, batch_size=8)
    qmodel = ptq4vm_fx.convert(prepared)
    for name, module in _modules(qmodel).items():
        if "dt_proj" in name:
            assert type(module) is nn.Linear
        else:
            assert type(module) is VQActLinear and module.a_bits == 8 and module.tokens == 17
            assert not torch.equal(module.smooth, torch.ones_like(module.smooth))  # smoothed like pts_smooth
    weight_only = _convert(tiny, ptq4vm_fx.QuantConfig.preset_config("w2a16", "vimvq", vq=FAST), images)
    with torch.no_grad():
        ref, y8, y16 = tiny(images), qmodel(images), weight_only(images)
    sqnr = [float(10 * torch.log10(ref.pow(2).sum() / (y - ref).pow(2).sum())) for y in (y8, y16)]
    assert abs(sqnr[0] - sqnr[1]) < 3  # A8 costs little next to 2-bit weights


def test_layers_the_codebook_does_not_fit_are_refused_when_named(tiny):
    images = _images(2)
    with pytest.raises(InputError, match=r"layers.0.mixer.dt_proj: in_features=2 is not divisible .* linears "
                                         r"\['dt_proj'\] names it"):
        ptq4vm_fx.prepare(tiny, images[:1], ptq4vm_fx.QuantConfig.preset_config("w2a16", "vimvq",
                                                                                linears=("dt_proj",)))
    small = tiny_vim(embed_dim=16)  # out_proj 32 -> 16: 128 sub-vectors of 4 < k = 256
    config = ptq4vm_fx.QuantConfig.preset_config("w2a16", "vq_kmeans", linears=("in_proj", "out_proj"))
    with pytest.raises(InputError, match=r"layer layers.0.mixer.out_proj: 128 sub-vectors .* fewer than the k=256"):
        ptq4vm_fx.prepare(small, images[:1], config)
    kmeans = ptq4vm_fx.QuantConfig.preset_config("w2a16", "vq_kmeans")
    qmodel = ptq4vm_fx.convert(calibrated(small, images, kmeans))  # by default such layers stay float
    assert type(qmodel.get_submodule("layers.1.mixer.out_proj")) is nn.Linear
    assert type(qmodel.get_submodule("layers.1.mixer.in_proj")) is VQLinear
    assert "128 sub-vectors" in qmodel.meta["float_layers"]["layers.1.mixer.out_proj"]
    with pytest.raises(InputError, match=r"nothing to quantize: .* fits vq_kmeans-w2a16 \(layer"):
        ptq4vm_fx.prepare(tiny_vim(embed_dim=8), images[:1], kmeans)
    with pytest.raises(InputError, match="simulate=True is for the integer methods"):
        ptq4vm_fx.convert(calibrated(tiny, images, ptq4vm_fx.QuantConfig.preset_config("w2a16", "rtn")),
                          simulate=True)


def test_plan_names_every_family_linear(tiny):
    from ptq4vm_fx.capture import capture
    from ptq4vm_fx.models.zoo import FAMILY
    from ptq4vm_fx.passes.vector_quantize import weight_layers

    gm = capture(tiny)
    config = ptq4vm_fx.QuantConfig.preset_config("w2a16", "vimvq").for_family(FAMILY)
    layers, kept = weight_layers(gm, config, explicit=False)
    every = [f"{p}.{n.target}" for p, b in blocks(gm) for n in quantizable_linears(b, config.linears)]
    assert sorted(layers + list(kept)) == sorted(every) and sorted(kept) == [
        f"layers.{i}.mixer.{n}" for i in range(2) for n in ("dt_proj", "dt_proj_b")]
