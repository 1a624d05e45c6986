"""The ptq4vm custom ops: ``torch.ops.ptq4vm.*``, with CPU reference and fake implementations.

Registering them is done by :func:`ptq4vm_fx.ops` being imported (``torch.library`` needs a
definition before any graph can hold the op). Every op runs on any device through its
reference implementation; the ``ptq4vm`` torch.compile backend swaps in Triton kernels on CUDA.

Numerics (see DESIGN.md section 3):

* ``quantize_per_token``: ``q = clamp(round((x * inv_smooth) * (1/scale)) + zp, -2^(b-1), 2^(b-1)-1)``
  as int8, round half to even. ``zp`` is the *signed* zero point ``za - 2^(b-1)``.
* ``qlinear``: ``y = float(acc - zp * colsum(qw)) * scale * w_scale + bias`` with ``acc`` the exact
  int32 dot product.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .quant import integer
from .scan import selective_scan_ref, token_major_empty

__all__ = ["selective_scan", "quantize_per_token", "qlinear"]


# --------------------------------------------------------------------------------------------
# ptq4vm::selective_scan
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("ptq4vm::selective_scan", mutates_args=())
def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor],
    z: Optional[Tensor],
    delta_bias: Optional[Tensor],
    delta_softplus: bool,
    reverse: bool,
) -> Tensor:
    """See :func:`selective_scan_ref`."""
    _check_scan_shapes(u, delta, A, B, C, D, z, delta_bias)
    with torch.no_grad():
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)


def _check_scan_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, d, L), got shape {tuple(u.shape)}")
    batch, d, length = u.shape
    n = A.shape[-1]
    expected = {
        "delta": (delta, (batch, d, length)),
        "A": (A, (d, n)),
        "B": (B, (batch, n, length)),
        "C": (C, (batch, n, length)),
        "D": (D, (d,)),
        "z": (z, (batch, d, length)),
        "delta_bias": (delta_bias, (d,)),
    }
    for name, (t, shape) in expected.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"selective_scan: {name} must have shape {shape}, got {tuple(t.shape)}")


@selective_scan.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    return token_major_empty(*u.shape, u.dtype, u.device)


def _scan_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*[t if t is not None else torch.empty(0) for t in inputs[:8]])
    ctx.present = [t is not None for t in inputs[:8]]
    ctx.flags = inputs[8:]


def _scan_backward(ctx, grad_out):
    saved = [t if p else None for t, p in zip(ctx.saved_tensors, ctx.present)]
    needs = [t is not None and ctx.needs_input_grad[i] for i, t in enumerate(saved)]
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(n) if t is not None else None for t, n in zip(saved, needs)]
        out = selective_scan_ref(*leaves, *ctx.flags)
        wrt = [t for t, n in zip(leaves, needs) if n]
        grads = iter(torch.autograd.grad(out, wrt, grad_out) if wrt else [])
    return tuple(next(grads) if n else None for n in needs) + (None, None)


selective_scan.register_autograd(_scan_backward, setup_context=_scan_setup_context)


# --------------------------------------------------------------------------------------------
# ptq4vm::quantize_per_token and ptq4vm::qlinear
# --------------------------------------------------------------------------------------------


def _expand_token_param(p: Tensor, x_leading: torch.Size, what: str) -> Tensor:
    """(L,) per-token static or x.shape[:-1] per-row (dynamic) -> broadcastable to x.shape[:-1]."""
    if tuple(p.shape) == tuple(x_leading):
        return p
    if p.dim() == 1 and len(x_leading) >= 1 and p.shape[0] == x_leading[-1]:
        return p
    tokens = x_leading[-1] if len(x_leading) else 1
    raise ValueError(
        f"{what}: the input has {tokens} tokens but the quantization parameters were calibrated for "
        f"{p.shape[0] if p.dim() == 1 else tuple(p.shape)} tokens; per-token static scales only fit the "
        f"image size they were calibrated at (input leading shape {tuple(x_leading)})"
    )


@torch.library.custom_op("ptq4vm::quantize_per_token", mutates_args=())
def quantize_per_token(x: Tensor, inv_smooth: Tensor, scale: Tensor, zero_point: Tensor, bits: int) -> Tensor:
    """x (…, L, C) float -> int8 codes (…, L, C), signed (see module docstring).

    inv_smooth (C,) fp32; scale (L,) fp32 (static) or x.shape[:-1] (dynamic); zero_point like scale
    (int32 or integer-valued float, signed range).
    """
    if x.shape[-1] != inv_smooth.shape[0]:
        raise ValueError(
            f"quantize_per_token: x has {x.shape[-1]} channels, inv_smooth has {inv_smooth.shape[0]}"
        )
    scale = _expand_token_param(scale, x.shape[:-1], "quantize_per_token")
    zero_point = _expand_token_param(zero_point, x.shape[:-1], "quantize_per_token")
    return integer.quantize_codes(x, inv_smooth, integer.reciprocal_scale(scale), zero_point, bits).to(torch.int8)


@quantize_per_token.register_fake
def _(x, inv_smooth, scale, zero_point, bits):
    return torch.empty(x.shape, dtype=torch.int8, device=x.device)


@torch.library.custom_op("ptq4vm::qlinear", mutates_args=())
def qlinear(
    xq: Tensor,
    x_scale: Tensor,
    x_zero_point: Tensor,
    wq: Tensor,
    w_scale: Tensor,
    w_colsum: Tensor,
    bias: Optional[Tensor],
) -> Tensor:
    """Integer linear. xq (…, L, K) int8; x_scale, x_zero_point (L,) or xq.shape[:-1];
    wq (N, K) int8; w_scale (N,) fp32; w_colsum (N,) int32 = wq.sum(1); bias (N,) or None.
    Returns fp32 (…, L, N). The int32 accumulation is exact (computed in float64, exact for K < 2^38)."""
    if xq.dtype != torch.int8 or wq.dtype != torch.int8:
        raise ValueError(f"qlinear: xq and wq must be int8, got {xq.dtype} and {wq.dtype}")
    if xq.shape[-1] != wq.shape[1]:
        raise ValueError(f"qlinear: xq has {xq.shape[-1]} input channels, wq expects {wq.shape[1]}")
    x_scale = _expand_token_param(x_scale, xq.shape[:-1], "qlinear")
    x_zero_point = _expand_token_param(x_zero_point, xq.shape[:-1], "qlinear")
    return integer.dequantize_accumulator(integer.int_matmul(xq, wq), x_scale, x_zero_point, w_scale, w_colsum, bias)


@qlinear.register_fake
def _(xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias):
    return torch.empty((*xq.shape[:-1], wq.shape[0]), dtype=torch.float32, device=xq.device)
