import pytest

from ptq4vm_fx.config import METHODS, PRESETS, QuantConfig, resolve_config


def test_presets_and_round_trip():
    for preset, (w, a) in PRESETS.items():
        for method in METHODS:
            config = QuantConfig.preset_config(preset, method)
            assert (config.weight_bits, config.act_bits, config.method) == (w, a, method)
            assert QuantConfig.from_dict(config.to_dict()) == config
    assert resolve_config("W4A4").act_bits == 4
    assert resolve_config(None).name == "ptq4vm-w8a8"


@pytest.mark.parametrize("kwargs,match", [
    (dict(weight_bits=9), "weight_bits must be an int"),
    (dict(act_bits=1), "act_bits must be an int"),
    (dict(alpha=1.5), "alpha must be in"),
    (dict(linears=("head",)), "linears must be a non-empty subset"),
    (dict(jlss_epochs=-1), "jlss_epochs >= 0"),
])
def test_invalid_configs_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantConfig(**kwargs)


def test_unknown_fields_in_a_dict():
    with pytest.raises(ValueError, match="unknown QuantConfig fields"):
        QuantConfig.from_dict({"bits": 8})
