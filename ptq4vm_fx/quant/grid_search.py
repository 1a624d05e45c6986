"""Clipping-range grid search (PTQ4VM stage 2): minimise the Lp error of the quantized tensor.

Each row (weights) or token (activations) picks, among ``candidates`` shrink factors of its full
range, the one with the least ``sum |x - q(x)|^p``. An activation range [lo, hi] shrinks toward zero
(``r * [lo, hi]``, r = 1, 1 - 1/candidates, ...), toward its midpoint (``[lo + a (hi - lo), hi - a (hi -
lo)]``, a = 1/candidates, 2/candidates, ... below 1/2, as the official PTQ4VM code: never the full
range), or both.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .fake_quant import fake_quant_weight
from .integer import act_qparams, act_range, reciprocal_scale, weight_qmax

# Elements of one token slice of the search's (N, L, C) tensors: 512 KB each, so a slice and its work
# buffer stay in cache across a candidate's passes (the whole tensors are 77 MB at N = 256 on Vim-T).
_CHUNK_FLOATS = 1 << 17


def _ratios(candidates: int) -> list[float]:
    return [1.0 - i / candidates for i in range(candidates)]


def _act_ranges(lo: Tensor, hi: Tensor, candidates: int, shrink: str) -> list[tuple[Tensor, Tensor]]:
    """The candidate ranges of ``shrink`` ("zero", "midpoint" or "both": module docstring)."""
    toward_zero = [(lo * r, hi * r) for r in _ratios(candidates)]
    width = hi - lo
    toward_mid = [(lo + width * (i / candidates), hi - width * (i / candidates))
                  for i in range(1, candidates) if 2 * i < candidates]
    return {"zero": toward_zero, "midpoint": toward_mid, "both": toward_zero + toward_mid}[shrink]


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
    x: Tensor, inv_smooth: Tensor, bits: int, candidates: int = 100, p: float = 2.4, per_token: bool = True,
    shrink: str = "zero",
) -> tuple[Tensor, Tensor]:
    """x (N, L, C) samples -> (scale, signed zero point), each (L,), minimising each token's Lp error
    among the ranges ``shrink`` gives (module docstring).

    With ``per_token=False`` one range for all tokens (returned broadcast to (L,))."""
    v = x.float() * inv_smooth
    dims = (0, 2) if per_token else (0, 1, 2)
    lo, hi = v.amin(dims), v.amax(dims)
    length = x.shape[1]
    candidate_qparams = [tuple(t.expand(length) for t in act_qparams(c_lo, c_hi, bits))
                         for c_lo, c_hi in _act_ranges(lo, hi, candidates, shrink)]
    errors = v.new_empty(len(candidate_qparams), length)  # (candidates, L)
    work = torch.empty_like(v)
    step = max(1, _CHUNK_FLOATS // (v.shape[0] * v.shape[2]))
    for start in range(0, length, step):  # a few tokens at a time: their (N, tokens, C) slices stay in cache
        tokens = slice(start, start + step)
        for k, (s, z) in enumerate(candidate_qparams):
            errors[k, tokens] = _act_error(v[:, tokens], s[tokens], z[tokens], bits, p, work[:, tokens])
    best_err = torch.full((length,), float("inf"), device=x.device)
    best_s, best_z = act_qparams(lo, hi, bits)
    best_s, best_z = best_s.expand(length).clone(), best_z.expand(length).clone()
    for (s, z), err in zip(candidate_qparams, errors):
        if not per_token:
            err = err.sum().expand(length)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better, s, best_s)
        best_z = torch.where(better, z, best_z)
    return best_s, best_z


def _act_error(v: Tensor, scale: Tensor, zero_point: Tensor, bits: int, p: float, work: Tensor) -> Tensor:
    """Per token (L,), the sum over samples and channels of ``|fake_quant_act(x) - v|^p`` for v = x *
    inv_smooth (N, L, C) fp32 and (L,) scale / signed zero point: the same fp32 operations in the same
    order as :func:`.fake_quant.fake_quant_act` (its straight-through rounding equals rounding), in place
    in ``work`` (v's shape) instead of a dozen fresh (N, L, C) tensors per candidate. On token slices
    (views) of whole tensors the sums equal the whole tensors' bit for bit (the reduction over N and C
    does not depend on L)."""
    zp = zero_point.float()[:, None]
    q = torch.mul(v, reciprocal_scale(scale)[:, None], out=work).round_().add_(zp).clamp_(*act_range(bits))
    return q.sub_(zp).mul_(scale[:, None]).sub_(v).abs_().pow_(p).sum((0, 2))
