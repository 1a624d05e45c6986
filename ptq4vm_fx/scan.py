"""The selective scan's one reference, and the (batch, d, L) layouts the scan kernels use.

:func:`selective_scan_ref` is Mamba's selective scan in fp32, vectorized over tokens (batched matmuls
around one in-place recurrence) with its own backward. It is the CPU implementation of
``ptq4vm::selective_scan`` (:mod:`ptq4vm_fx.ops`), the specification the Triton scan kernels are
tested against (``kernels/selective_scan.py``'s references call it) and what JLSS differentiates
through (docs/design.md section 6). This module registers nothing: kernels import it freely.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["selective_scan_ref", "token_major", "token_major_empty", "channel_major"]


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
