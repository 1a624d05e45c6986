"""Fake quantization with straight-through rounding: the simulation JLSS trains and ``simulate=True`` runs.

The codes are :mod:`.integer`'s, computed with the straight-through rounding, so forward values equal
the integer path's exactly. Activation zero points are signed (``za - 2^(b-1)``), weights symmetric
narrow range.
"""

from __future__ import annotations

from torch import Tensor

from . import integer
from .integer import act_qparams


def act_codes(x: Tensor, inv_smooth: Tensor, scale: Tensor, zero_point: Tensor, bits: int) -> Tensor:
    """Integer codes (as float, STE-differentiable) of x (…, L, C); scale/zero_point broadcast to x.shape[:-1]."""
    return integer.quantize_codes(x, inv_smooth, integer.reciprocal_scale(scale), zero_point, bits,
                                  rounding=integer.round_half_even_ste)


def fake_quant_act(x: Tensor, inv_smooth: Tensor, scale: Tensor, zero_point: Tensor, bits: int) -> Tensor:
    """Dequantized per-token (or per-row) activations, (…, L, C) float32."""
    return (act_codes(x, inv_smooth, scale, zero_point, bits) - zero_point[..., None]) * scale[..., None]


def weight_codes(w: Tensor, scale: Tensor, bits: int) -> Tensor:
    """Per-output-channel symmetric codes (as float, STE) of w (O, C) with scale (O,)."""
    return integer.weight_codes(w, scale, bits, rounding=integer.round_half_even_ste)


def fake_quant_weight(w: Tensor, scale: Tensor, bits: int) -> Tensor:
    """Dequantized per-output-channel weight (O, C) fp32."""
    return weight_codes(w, scale, bits) * scale[:, None]


def dynamic_act_qparams(x: Tensor, inv_smooth: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Per-row (every token of every sample) qparams from the values themselves: x.shape[:-1] each."""
    v = (x.float() * inv_smooth).detach()
    return act_qparams(v.amin(-1), v.amax(-1), bits)
