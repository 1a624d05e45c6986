"""The bundled defaults: a small model of each family trained on the digits set, and its data."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputError
from ..models.checkpoint import load_checkpoint
from ..models.family import create_model
from .digits import load_digits_splits

MODEL_NAME = "vim_digits"  # the default model of the CLI and the API
# one per family, 1-channel 8x8 images, 10 classes; scripts/train_digits.py --model NAME reproduces each
BUNDLED_MODELS = ("vim_digits", "vmamba_digits", "local_vssm_digits", "local_vim_digits")
SPLITS = ("train", "calib", "test")


def checkpoint_path(name: str) -> Path:
    """Where the bundled model ``name``'s checkpoint lives (ptq4vm_fx/data/<name>.pt)."""
    return Path(__file__).with_name(f"{name}.pt")



def bundled_model(name: str = MODEL_NAME) -> torch.nn.Module:
    """A trained bundled model (eval mode; 1-channel 8x8 images, 10 classes): ``vim_digits`` (the default),
    ``vmamba_digits``, ``local_vssm_digits`` or ``local_vim_digits``."""
    if name not in BUNDLED_MODELS:
        raise InputError(f"no bundled model {name!r}; bundled: {', '.join(BUNDLED_MODELS)}")
    path = checkpoint_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"bundled checkpoint missing: {path} (run scripts/train_digits.py --model {name})")
    return load_checkpoint(create_model(name), path).eval()


def bundled_digits(split: str = "calib") -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, 8, 8) float32, normalised; labels (N,) int64) of one split of the bundled digits
    set: ``"calib"`` (256 images, for calibration), ``"test"`` (360) or ``"train"`` (1181)."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r} of the bundled digits; choose one of {', '.join(SPLITS)}")
    data = load_digits_splits()[split]
    return data.images, data.labels


__all__ = ["bundled_model", "bundled_digits", "load_digits_splits", "checkpoint_path", "MODEL_NAME",
           "BUNDLED_MODELS", "SPLITS"]
