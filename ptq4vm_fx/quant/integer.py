"""The integer numerics of the project, written once (docs/design.md section 3).

Every path that produces or consumes integer codes calls this module: the ops' CPU references
(``ptq4vm::quantize_per_token``, ``ptq4vm::int8_linear`` and the fused ops), the fake-quant path
(:mod:`.fake_quant`, with straight-through rounding), the report, and the references the Triton
kernels are tested against bit for bit. The Triton device code (``kernels/_common.py``) mirrors
:func:`quantize_codes` and :func:`dequantize_accumulator` operation for operation.

* Activations: asymmetric, ``bits``-bit codes stored signed: ``q = clamp(round((x * inv_smooth) *
  inv_scale) + zp, -2^(b-1), 2^(b-1) - 1)`` in fp32 in that order, with ``zp = za - 2^(b-1)`` the
  signed zero point and ``inv_scale = 1 / scale`` computed by :func:`reciprocal_scale`.
* Weights: per output channel, symmetric, narrow range ``[-(2^(b-1) - 1), 2^(b-1) - 1]``.
* Rounding: half to even (:func:`round_half_even`), everywhere.
* Integer GEMM: ``y = float32(acc - zp * colsum(qw)) * x_scale * w_scale + bias`` with ``acc`` the
  exact int32 dot product of the signed codes (:func:`dequantize_accumulator`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torch import Tensor


def round_half_even(v: Tensor) -> Tensor:
    """Round to the nearest integer, ties to even (``torch.round``)."""
    return torch.round(v)


def round_half_even_ste(v: Tensor) -> Tensor:
    """:func:`round_half_even` forward, identity backward (exact: v + (round(v) - v) == round(v))."""
    return v + (round_half_even(v) - v).detach()


def act_range(bits: int) -> tuple[int, int]:
    """The signed range of a ``bits``-bit activation code: (-2^(b-1), 2^(b-1) - 1)."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def weight_qmax(bits: int) -> int:
    """The largest weight code of the narrow symmetric range: 2^(b-1) - 1."""
    return 2 ** (bits - 1) - 1


def reciprocal_scale(scale: Tensor) -> Tensor:
    """``1 / scale`` in fp32: the factor every quantizer multiplies by (never a division)."""
    return torch.reciprocal(scale.float())


def unclamped_codes(x: Tensor, inv_smooth: Optional[Tensor], inv_scale: Tensor, zero_point: Tensor,
                    rounding: Callable[[Tensor], Tensor] = round_half_even) -> Tensor:
    """``round((x * inv_smooth) * inv_scale) + zero_point`` before saturation, fp32 (..., C): x (..., C);
    ``inv_smooth`` (C,) or None; ``inv_scale`` and ``zero_point`` (signed) broadcast against x.shape[:-1].
    ``rounding``: :func:`round_half_even`, or :func:`round_half_even_ste` on the fake-quant path."""
    p = x.float() if inv_smooth is None else x.float() * inv_smooth.float()
    return rounding(p * inv_scale.float()[..., None]) + zero_point.float()[..., None]


def quantize_codes(x: Tensor, inv_smooth: Optional[Tensor], inv_scale: Tensor, zero_point: Tensor, bits: int,
                   rounding: Callable[[Tensor], Tensor] = round_half_even) -> Tensor:
    """Activation codes of x (..., C) as fp32 (integer valued): :func:`unclamped_codes` saturated to
    :func:`act_range`."""
    return unclamped_codes(x, inv_smooth, inv_scale, zero_point, rounding).clamp(*act_range(bits))


def weight_codes(w: Tensor, scale: Tensor, bits: int,
                 rounding: Callable[[Tensor], Tensor] = round_half_even) -> Tensor:
    """Per-output-channel symmetric codes of w (O, C) with scale (O,), as fp32 (integer valued)."""
    qmax = weight_qmax(bits)
    return rounding(w * torch.reciprocal(scale)[:, None]).clamp(-qmax, qmax)


def act_qparams(lo: Tensor, hi: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Asymmetric (scale, signed zero point) covering [min(lo, 0), max(hi, 0)], elementwise, fp32."""
    lo = torch.minimum(lo, torch.zeros_like(lo))
    hi = torch.maximum(hi, torch.zeros_like(hi))
    scale = ((hi - lo) / (2**bits - 1)).clamp(min=1e-8)
    zero_point = (round_half_even(-lo / scale) - 2 ** (bits - 1)).clamp(*act_range(bits))
    return scale, zero_point


def column_sums(wq: Tensor) -> Tensor:
    """(N,) int32: the sum of each output row of the weight codes wq (N, K), for the zero-point term."""
    return wq.to(torch.int32).sum(1, dtype=torch.int32)


def int_matmul(xq: Tensor, wq: Tensor) -> Tensor:
    """The exact int32 accumulator ``xq @ wq.T`` of int8 codes xq (..., K) and wq (N, K): computed in
    float64, exact while |acc| < 2^53 (K < 2^38)."""
    return torch.matmul(xq.double(), wq.double().t()).to(torch.int32)


def dequantize_accumulator(acc: Tensor, x_scale: Tensor, x_zero_point: Tensor, w_scale: Tensor,
                           w_colsum: Tensor, bias: Optional[Tensor]) -> Tensor:
    """fp32 (..., N) output of the integer GEMM from its int32 accumulator acc (..., N):
    ``float32(acc - zp * colsum) * x_scale * w_scale + bias`` in that order; x_scale / x_zero_point
    broadcast against acc.shape[:-1], w_scale / w_colsum / bias (N,)."""
    corrected = acc - x_zero_point.to(torch.int32)[..., None] * w_colsum.to(torch.int32)
    y = corrected.float() * x_scale.float()[..., None] * w_scale.float()
    return y if bias is None else y + bias.float()
