"""The bundled default: the Vim trained on the digits set, and its data."""

from __future__ import annotations

from pathlib import Path

import torch

from ..models.checkpoint import load_checkpoint
from ..models.zoo import create_vim
from .digits import load_digits_splits

MODEL_NAME = "vim_digits"
CHECKPOINT = Path(__file__).with_name("vim_digits.pt")


def bundled_model() -> torch.nn.Module:
    """The trained digits Vim (eval mode); ``scripts/train_digits.py`` reproduces its checkpoint."""
    if not CHECKPOINT.is_file():
        raise FileNotFoundError(f"bundled checkpoint missing: {CHECKPOINT} (run scripts/train_digits.py)")
    return load_checkpoint(create_vim(MODEL_NAME), CHECKPOINT).eval()


__all__ = ["bundled_model", "load_digits_splits", "MODEL_NAME", "CHECKPOINT"]
