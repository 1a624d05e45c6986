"""--recipe: the official PTQ4VM settings on the command line (docs/design.md section 5)."""

from types import SimpleNamespace

import pytest

from ptq4vm_fx.cli import main, quantize, sweep


@pytest.fixture
def configs(monkeypatch):
    """The configs the commands would calibrate with (none is calibrated; the command stops at pts or a
    quantize)."""
    seen = []

    def record(model, calib, loader, config, *args, **kwargs):
        seen.append(config)
        if config.method == "pts" or len(seen) == 1:
            raise SystemExit(0)
        return None, SimpleNamespace(quant_top1=0.0)

    monkeypatch.setattr(quantize, "quantize_and_evaluate", record)
    monkeypatch.setattr(sweep, "quantize_and_evaluate", record)
    return seen


def test_recipe_official_reaches_ptq4vm_only(configs):
    with pytest.raises(SystemExit):
        main(["quantize", "--preset", "w4a4", "--recipe", "official", "--quiet"])
    with pytest.raises(SystemExit):
        main(["sweep", "--methods", "ptq4vm", "pts", "--presets", "w4a4", "--recipe", "official", "--quiet"])
    assert [(c.method, c.recipe) for c in configs] == [("ptq4vm", "official"), ("ptq4vm", "official"),
                                                       ("pts", "default")]


def test_recipe_official_for_a_method_without_jlss_is_bad_input(capsys):
    assert main(["quantize", "--method", "pts", "--recipe", "official", "--quiet"]) == 2
    assert "option recipe does nothing for method 'pts'" in capsys.readouterr().err
