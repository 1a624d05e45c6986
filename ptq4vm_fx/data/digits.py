"""The bundled data set: scikit-learn's 8x8 handwritten digits (real scans, shipped with sklearn).

1797 grayscale 8x8 images, 10 classes, split once with a fixed seed into train (1181),
calibration (256) and test (360) images. Images are (N, 1, 8, 8) float32, normalised with the
training split's mean and standard deviation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SPLIT_SEED = 0
NUM_TEST = 360
NUM_CALIB = 256


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # (N, 1, 8, 8) float32, normalised
    labels: torch.Tensor  # (N,) int64


def load_digits_splits() -> dict[str, Split]:
    """{'train', 'calib', 'test'} splits of the digits set, the same on every machine."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    parts = {
        "test": order[:NUM_TEST],
        "calib": order[NUM_TEST : NUM_TEST + NUM_CALIB],
        "train": order[NUM_TEST + NUM_CALIB :],
    }
    train = images[parts["train"]]
    mean, std = train.mean().item(), train.std().item()
    return {name: Split((images[idx] - mean) / std, labels[idx]) for name, idx in parts.items()}
