"""Evaluation helpers: batched logits, top-k accuracy, SQNR."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .progress import progress


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 128, desc: str = "eval") -> Tensor:
    """Logits (N, classes) fp32 of ``model`` on images (N, C, H, W), in batches."""
    return torch.cat([model(b).float() for b in progress(images.split(batch_size), desc=desc)])


def topk_accuracy(logits: Tensor, labels: Tensor, k: int = 1) -> float:
    """Percentage of rows whose label is among the ``k`` largest logits."""
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == labels[:, None]).any(1)
    return 100.0 * hits.float().mean().item()


def sqnr_db(reference: Tensor, test: Tensor) -> float:
    """10 log10(|ref|^2 / |ref - test|^2); inf when identical."""
    noise = (reference.double() - test.double()).pow(2).sum()
    if noise == 0:
        return float("inf")
    return 10.0 * torch.log10(reference.double().pow(2).sum() / noise).item()
