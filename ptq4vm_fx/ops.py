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
import torch.nn.functional as F
from torch import Tensor

__all__ = ["selective_scan", "selective_scan_ref", "quantize_per_token", "qlinear"]


# --------------------------------------------------------------------------------------------
# the scan core  y_t = sum_n h_t C_t,  h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t,  with its own backward
# --------------------------------------------------------------------------------------------


def _recurrence_(a: Tensor, h: Tensor, reverse: bool, decay_of_prev: bool = False) -> None:
    """In place over dim 0 of (L, ...) tensors: h[t] += a[t] * h[p], p = t-1 (t+1 when ``reverse``).

    ``decay_of_prev`` uses a[p] instead of a[t]: the adjoint recurrence of the backward pass."""
    length = h.shape[0]
    steps = range(length - 2, -1, -1) if reverse else range(1, length)
    for t in steps:
        prev = t + 1 if reverse else t - 1
        h[t].addcmul_(a[prev] if decay_of_prev else a[t], h[prev])


class _ScanCore(torch.autograd.Function):
    """u, dt: (batch, d, L) fp32; A: (d, n); B, C: (batch, n, L) -> y (batch, d, L).

    Token-major (L, batch, d, n) buffers so each step of the recurrence is one contiguous
    ``addcmul_``; everything else is batched matmuls. Saves decay and states for backward."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, reverse: bool):
        dt_l, u_l = dt.permute(2, 0, 1).contiguous(), u.permute(2, 0, 1).contiguous()  # (L, batch, d)
        B_l, C_l = B.permute(2, 0, 1).contiguous(), C.permute(2, 0, 1).contiguous()  # (L, batch, n)
        decay = torch.exp(dt_l[..., None] * A)  # (L, batch, d, n)
        dtu = dt_l * u_l
        h = dtu[..., None] * B_l[:, :, None, :]  # the drive, turned into the states in place
        _recurrence_(decay, h, reverse)
        y = torch.matmul(h, C_l[..., None]).squeeze(-1)  # (L, batch, d)
        ctx.save_for_backward(u_l, dt_l, dtu, A, B_l, C_l, decay, h)
        ctx.reverse = reverse
        return y.permute(1, 2, 0)

    @staticmethod
    def backward(ctx, grad_y):
        u_l, dt_l, dtu, A, B_l, C_l, decay, h = ctx.saved_tensors
        reverse = ctx.reverse
        gy = grad_y.permute(2, 0, 1).contiguous()  # (L, batch, d)
        gh = gy[..., None] * C_l[:, :, None, :]
        # dL/dh_t = gy_t C_t + decay_{next} dL/dh_{next}: the recurrence run the other way
        _recurrence_(decay, gh, not reverse, decay_of_prev=True)
        grad_C = torch.matmul(gy[:, :, None, :], h).squeeze(2)  # (L, batch, n)
        grad_B = torch.matmul(dtu[:, :, None, :], gh).squeeze(2)
        grad_dtu = torch.matmul(gh, B_l[..., None]).squeeze(-1)  # (L, batch, d)
        # decay_t * h_prev_t, times dL/dh_t: the gradient of the decay's exponent (dt_t * A)
        g_exp = torch.empty_like(h)
        if reverse:
            torch.mul(h[1:], decay[:-1], out=g_exp[:-1])
            g_exp[-1] = 0
        else:
            torch.mul(h[:-1], decay[1:], out=g_exp[1:])
            g_exp[0] = 0
        g_exp.mul_(gh)
        grad_dt = (g_exp * A).sum(-1) + grad_dtu * u_l
        grad_A = (g_exp * dt_l[..., None]).sum((0, 1))
        grad_u = grad_dtu * dt_l
        return (
            grad_u.permute(1, 2, 0),
            grad_dt.permute(1, 2, 0),
            grad_A,
            grad_B.permute(1, 2, 0),
            grad_C.permute(1, 2, 0),
            None,
        )


def token_major_empty(batch: int, d: int, length: int, dtype: torch.dtype, device) -> Tensor:
    """An uninitialised (batch, d, length) tensor stored token-major (stride 1 along d): the
    transposed view of a contiguous (batch, length, d) one, so a kernel walking the tokens reads or
    writes the channels of one token as one coalesced row. Works under fake tensors too."""
    return torch.empty((batch, length, d), dtype=dtype, device=device).transpose(1, 2)


def token_major(t: Tensor) -> Tensor:
    """(batch, d, L) ``t`` stored token-major (a copy only if it is not stored so already)."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def channel_major(A: Tensor) -> Tensor:
    """(d, n) state matrix ``A`` stored with stride 1 along d (a copy only if it is not stored so
    already): the layout the scan kernels read it in (kernels/selective_scan.py explains why)."""
    return A.t().contiguous().t()


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    reverse: bool = False,
) -> Tensor:
    """Mamba's selective scan in fp32, differentiable.

    u, delta, z: (batch, d, L); A: (d, n) fp32; B, C: (batch, n, L); D, delta_bias: (d,).
    Returns (batch, d, L) in u's dtype, stored token-major (stride 1 along d: the layout the
    Triton kernels write, and the one out_proj reads). ``reverse`` scans from token L-1 down to 0.
    """
    dtype = u.dtype
    u, delta, B, C = u.float(), delta.float(), B.float(), C.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    y = _ScanCore.apply(u, delta, A.float(), B, C, reverse)
    if D is not None:
        y = y + D.float()[:, None] * u
    if z is not None:
        y = y * F.silu(z.float())
    return token_major(y.to(dtype))


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
    return quantize_codes(x, inv_smooth, scale, zero_point, bits).to(torch.int8)


def quantize_codes(x: Tensor, inv_smooth: Tensor, scale: Tensor, zero_point: Tensor, bits: int) -> Tensor:
    """The integer codes of the contract as float (…, L, C); scale/zero_point broadcast to x.shape[:-1]."""
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    inv_scale = torch.reciprocal(scale.float())
    q = torch.round((x.float() * inv_smooth.float()) * inv_scale[..., None]) + zero_point.float()[..., None]
    return q.clamp(lo, hi)


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
    acc = torch.matmul(xq.double(), wq.double().t()).to(torch.int32)
    corrected = acc - x_zero_point.to(torch.int32)[..., None] * w_colsum.to(torch.int32)
    y = corrected.float() * x_scale.float()[..., None] * w_scale.float()
    if bias is not None:
        y = y + bias.float()
    return y


@qlinear.register_fake
def _(xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias):
    return torch.empty((*xq.shape[:-1], wq.shape[0]), dtype=torch.float32, device=xq.device)
