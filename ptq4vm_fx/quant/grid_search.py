"""Clipping-range grid search (PTQ4VM stage 2): minimise the Lp error of the quantized tensor.

Each row (weights) or token (activations) picks, among ``candidates`` shrink factors of its full
range, the one with the least ``sum |x - q(x)|^p``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .fake_quant import fake_quant_act, fake_quant_weight
from .integer import act_qparams, weight_qmax


def _ratios(candidates: int) -> list[float]:
    return [1.0 - i / candidates for i in range(candidates)]


@torch.no_grad()
def search_weight_scale(w: Tensor, bits: int, candidates: int = 100, p: float = 2.4) -> Tensor:
    """w (O, C) -> per-row scale (O,) minimising the row's Lp quantization error."""
    absmax = w.abs().amax(1).clamp(min=1e-8)
    best_err = torch.full_like(absmax, float("inf"))
    best = absmax / weight_qmax(bits)
    for r in _ratios(candidates):
        scale = r * absmax / weight_qmax(bits)
        err = (fake_quant_weight(w, scale, bits) - w).abs().pow(p).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, scale, best)
    return best


@torch.no_grad()
def search_token_qparams(
    x: Tensor, inv_smooth: Tensor, bits: int, candidates: int = 100, p: float = 2.4, per_token: bool = True
) -> tuple[Tensor, Tensor]:
    """x (N, L, C) samples -> (scale, signed zero point), each (L,), minimising each token's Lp error.

    With ``per_token=False`` one range for all tokens (returned broadcast to (L,))."""
    v = x.float() * inv_smooth
    dims = (0, 2) if per_token else (0, 1, 2)
    lo, hi = v.amin(dims), v.amax(dims)
    length = x.shape[1]
    best_err = torch.full((length,), float("inf"), device=x.device)
    best_s, best_z = act_qparams(lo, hi, bits)
    best_s, best_z = best_s.expand(length).clone(), best_z.expand(length).clone()
    for r in _ratios(candidates):
        s, z = act_qparams(lo * r, hi * r, bits)
        s, z = s.expand(length), z.expand(length)
        err = (fake_quant_act(x, inv_smooth, s, z, bits) - v).abs().pow(p).sum((0, 2))
        if not per_token:
            err = err.sum().expand(length)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better, s, best_s)
        best_z = torch.where(better, z, best_z)
    return best_s, best_z
