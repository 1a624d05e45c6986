"""The bundled default: the Vim trained on the digits set, and its data."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputError
from ..models.checkpoint import load_checkpoint
from ..models.family import create_model
from .digits import load_digits_splits

MODEL_NAME = "vim_digits"
CHECKPOINT = Path(__file__).with_name("vim_digits.pt")
SPLITS = ("train", "calib", "test")


def bundled_model() -> torch.nn.Module:
    """The trained digits Vim (eval mode; 1-channel 8x8 images, 10 classes); ``scripts/train_digits.py``
    reproduces its checkpoint."""
    if not CHECKPOINT.is_file():
        raise FileNotFoundError(f"bundled checkpoint missing: {CHECKPOINT} (run scripts/train_digits.py)")
    return load_checkpoint(create_model(MODEL_NAME), CHECKPOINT).eval()


def bundled_digits(split: str = "calib") -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, 8, 8) float32, normalised; labels (N,) int64) of one split of the bundled digits
    set: ``"calib"`` (256 images, for calibration), ``"test"`` (360) or ``"train"`` (1181)."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r} of the bundled digits; choose one of {', '.join(SPLITS)}")
    data = load_digits_splits()[split]
    return data.images, data.labels


__all__ = ["bundled_model", "bundled_digits", "load_digits_splits", "MODEL_NAME", "CHECKPOINT", "SPLITS"]
