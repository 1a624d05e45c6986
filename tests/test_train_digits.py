"""scripts/train_digits.py: its --model-kwargs parsing, and a variant's configuration recorded in the
checkpoint it writes."""

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_digits.py"


@pytest.fixture(scope="module")
def train_digits():
    spec = importlib.util.spec_from_file_location("train_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_kwargs_are_python_literals(train_digits):
    assert train_digits.model_kwarg("forward_type='v05'") == ("forward_type", "v05")
    assert train_digits.model_kwarg("dims=[48, 96]") == ("dims", [48, 96])
    for bad in ["forward_type=v05", "=3", "dims"]:
        with pytest.raises(argparse.ArgumentTypeError, match="expected KEY=VALUE"):
            train_digits.model_kwarg(bad)


def test_a_variant_is_trained_and_its_configuration_saved(train_digits, tmp_path, monkeypatch):
    """One epoch of a narrow vmamba_digits with the z gate, written to --output (not the bundled file)."""
    output = tmp_path / "variant.pt"
    monkeypatch.setattr(sys, "argv", [
        "train_digits.py", "--model", "vmamba_digits", "--epochs", "1", "--batch-size", "512",
        "--weight-decay", "0", "--model-kwargs", "forward_type='v05'", "dims=[8, 16]", "--output", str(output),
    ])  # fmt: skip
    train_digits.main()
    saved = torch.load(output, weights_only=True)
    assert saved["args"]["model"] == "vmamba_digits"
    assert saved["args"]["forward_type"] == "v05" and saved["args"]["dims"] == [8, 16]
    # the z gate doubles in_proj's output: (2 * ssm_ratio * dims[0], dims[0], 1, 1) = (32, 8, 1, 1)
    assert saved["model"]["layers.0.blocks.0.op.in_proj.weight"].shape[:2] == (32, 8)
