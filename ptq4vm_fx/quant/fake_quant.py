"""Quantizer math: qparams from ranges, fake quantization with straight-through rounding.

Forward values equal the integer path's codes exactly (same expressions as ``ops.quantize_codes``).
Activation zero points are signed (``za - 2^(b-1)``), weights are symmetric narrow range.
"""

from __future__ import annotations

import torch
from torch import Tensor


def act_range(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def weight_qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def round_ste(x: Tensor) -> Tensor:
    """Round half to even forward, identity backward (exact: x + (round(x) - x) == round(x))."""
    return x + (torch.round(x) - x).detach()


def act_qparams(lo: Tensor, hi: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Asymmetric (scale, signed zero point) covering [min(lo, 0), max(hi, 0)], elementwise."""
    lo = torch.minimum(lo, torch.zeros_like(lo))
    hi = torch.maximum(hi, torch.zeros_like(hi))
    scale = ((hi - lo) / (2**bits - 1)).clamp(min=1e-8)
    zero_point = (torch.round(-lo / scale) - 2 ** (bits - 1)).clamp(*act_range(bits))
    return scale, zero_point


def act_codes(x: Tensor, inv_smooth: Tensor, scale: Tensor, zero_point: Tensor, bits: int) -> Tensor:
    """Integer codes (as float, STE-differentiable) of x (…, L, C); scale/zero_point broadcast to x.shape[:-1]."""
    q = round_ste((x.float() * inv_smooth) * torch.reciprocal(scale)[..., None]) + zero_point[..., None]
    return q.clamp(*act_range(bits))


def fake_quant_act(x: Tensor, inv_smooth: Tensor, scale: Tensor, zero_point: Tensor, bits: int) -> Tensor:
    """Dequantized per-token (or per-row) activations, (…, L, C) float32."""
    return (act_codes(x, inv_smooth, scale, zero_point, bits) - zero_point[..., None]) * scale[..., None]


def weight_codes(w: Tensor, scale: Tensor, bits: int) -> Tensor:
    """Per-output-channel symmetric codes (as float, STE) of w (O, C) with scale (O,)."""
    qmax = weight_qmax(bits)
    return round_ste(w * torch.reciprocal(scale)[:, None]).clamp(-qmax, qmax)


def fake_quant_weight(w: Tensor, scale: Tensor, bits: int) -> Tensor:
    return weight_codes(w, scale, bits) * scale[:, None]


def dynamic_act_qparams(x: Tensor, inv_smooth: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Per-row (every token of every sample) qparams from the values themselves: x.shape[:-1] each."""
    v = (x.float() * inv_smooth).detach()
    return act_qparams(v.amin(-1), v.amax(-1), bits)
