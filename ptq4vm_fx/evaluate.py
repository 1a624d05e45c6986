"""Evaluation: top-1/top-5 over a stream of labelled batches, throughput, logits SQNR.

Under torch.distributed every process evaluates its own shard; image and hit counts are summed
over processes, so every process returns the global accuracy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from . import distributed
from .errors import InputError
from .progress import progress


@dataclass
class Evaluation:
    """Accuracy of one model on one data set (all processes together) and this process's logits."""

    top1: float  # percent
    top5: float  # percent; 100 when the model has at most 5 classes
    images: int
    seconds: float  # wall time of the slowest process
    logits: Tensor = field(repr=False)  # (local images, classes) fp32, on the CPU
    labels: Tensor = field(repr=False)  # (local images,) int64

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict:
        return {
            "top1": self.top1,
            "top5": self.top5,
            "images": self.images,
            "seconds": self.seconds,
            "images_per_second": self.images_per_second,
        }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    desc: str = "eval",
    device: torch.device | str = "cpu",
    total: int | None = None,
    dtype: torch.dtype | None = None,
) -> Evaluation:
    """Run ``model`` on (images (B, C, H, W), labels (B,)) batches, the images moved to ``device`` and
    cast to ``dtype`` (None: as they come); ``total`` sizes the progress bar."""
    logits, labels = [], []
    start = time.perf_counter()
    with progress(total=total, desc=desc, unit="img") as bar:
        for images, target in batches:
            logits.append(model(images.to(device=device, dtype=dtype)).float().cpu())
            labels.append(target)
            bar.update(len(target))
    seconds = time.perf_counter() - start
    if not logits:
        raise InputError("no images to evaluate")
    logits, labels = torch.cat(logits), torch.cat(labels)
    counts = distributed.all_reduce(
        torch.tensor([len(labels), _hits(logits, labels, 1), _hits(logits, labels, 5)], dtype=torch.float64)
    )
    seconds = distributed.all_reduce(torch.tensor([seconds], dtype=torch.float64), op="max").item()
    images = int(counts[0])
    return Evaluation(
        100.0 * counts[1].item() / images, 100.0 * counts[2].item() / images, images, seconds, logits, labels
    )


def _hits(logits: Tensor, labels: Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == labels[:, None]).any(1).sum())


def topk_accuracy(logits: Tensor, labels: Tensor, k: int = 1) -> float:
    """Percentage of rows of logits (N, classes) whose label (N,) is among the ``k`` largest logits."""
    return 100.0 * _hits(logits, labels, k) / len(labels)


def sqnr_db(reference: Tensor, test: Tensor) -> float:
    """10 log10(|ref|^2 / |ref - test|^2); inf when identical."""
    return power_ratio_db(*_power_sums(reference, test).tolist())


def logits_sqnr_db(reference: Evaluation, test: Evaluation) -> float:
    """SQNR of ``test``'s logits against ``reference``'s over all processes (same data, same order)."""
    if reference.logits.shape != test.logits.shape or not torch.equal(reference.labels, test.labels):
        raise ValueError("the two evaluations did not see the same images")
    return power_ratio_db(*distributed.all_reduce(_power_sums(reference.logits, test.logits)).tolist())


def _power_sums(reference: Tensor, test: Tensor) -> Tensor:
    """(2,) float64: signal power and noise power."""
    ref = reference.double()
    return torch.stack([ref.pow(2).sum(), (ref - test.double()).pow(2).sum()])


def power_ratio_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise): inf for no noise, -inf for no signal."""
    if noise == 0:
        return float("inf")
    return 10.0 * math.log10(signal / noise) if signal > 0 else float("-inf")
