"""The selective scan's one reference, and the (batch, d, L) layouts the scan kernels use.

:func:`selective_scan_ref` is Mamba's selective scan in fp32, run token by token on (batch, n, d) state
slabs that stay in cache, with its own backward (which recomputes the states from one kept per chunk of
tokens: nothing (L, batch, n, d) sized is stored). It is the CPU implementation of
``ptq4vm::selective_scan`` (:mod:`ptq4vm_fx.ops`), the specification the Triton scan kernels are
tested against (``kernels/selective_scan.py``'s references call it) and what JLSS differentiates
through (docs/design.md section 6). This module registers nothing: kernels import it freely.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["selective_scan_ref", "ordered_scan_ref", "check_order_maps", "token_major", "token_major_empty",
           "channel_major"]


# --------------------------------------------------------------------------------------------
# the scan core  y_t = sum_n h_t C_t,  h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t,  with its own backward
# --------------------------------------------------------------------------------------------


# Backward recomputes the states this many tokens at a time from the state before them, the one state
# per chunk the forward keeps (4 to 16 time the same on Vim-T shapes; 2 stores too many states).
_CHUNK = 8


def _scan_order(length: int, reverse: bool) -> range:
    """Token indices in the order the scan visits them."""
    return range(length - 1, -1, -1) if reverse else range(length)


class _Tokens:
    """The scan's inputs token-major, fp32, and per token as views shaped for products with a state.

    dt, dtu (dt * u): (L, batch, d); B, C: (L, batch, n); At: (n, d), A transposed. A state is a
    (batch, n, d) slab: d, the longest axis, innermost, so each product runs long vectorized rows; one
    slab (a few hundred KB) stays in cache across the products of its token, where a whole
    (L, batch, n, d) product streams through memory and page-faults its fresh output."""

    def __init__(self, u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, reverse: bool):
        self.dt = dt.permute(2, 0, 1).contiguous()
        self.dtu = self.dt * u.permute(2, 0, 1)
        self.B, self.C = B.permute(2, 0, 1).contiguous(), C.permute(2, 0, 1).contiguous()
        self.At = A.t().contiguous()
        self.order = _scan_order(self.dt.shape[0], reverse)
        self.dt_row, self.dtu_row = self.dt[:, :, None].unbind(0), self.dtu[:, :, None].unbind(0)  # (batch, 1, d)
        self.dtu_col = self.dtu[..., None].unbind(0)  # (batch, d, 1)
        self.B_col, self.C_col = self.B[..., None].unbind(0), self.C[..., None].unbind(0)  # (batch, n, 1)
        self.B_row, self.C_row = self.B[:, :, None].unbind(0), self.C[:, :, None].unbind(0)  # (batch, 1, n)

    def slab(self) -> Tensor:
        length, batch, d = self.dt.shape
        return self.dt.new_empty(batch, self.At.shape[0], d)

    def step(self, t: int, h: Tensor, prev: Optional[Tensor], decay: Tensor) -> None:
        """h = exp(dt_t A) prev + dt_t u_t B_t, the decay kept in ``decay``; ``prev`` None for the first
        token (h = the drive), or h itself (updated in place)."""
        if prev is None:
            torch.mul(self.B_col[t], self.dtu_row[t], out=h)
            return
        torch.mul(self.dt_row[t], self.At, out=decay).exp_()
        if h is prev:
            h.mul_(decay)
        else:
            torch.mul(decay, prev, out=h)
        h.addcmul_(self.B_col[t], self.dtu_row[t])


def _scan_forward(x: _Tokens, checkpoints: bool) -> tuple[Tensor, Optional[Tensor]]:
    """y (L, batch, d), and with ``checkpoints`` the state before each chunk of _CHUNK tokens of the scan
    order ((L + _CHUNK - 1) // _CHUNK, batch, n, d; the first is zero). One state slab, updated in place."""
    length, batch, d = x.dt.shape
    y = x.dt.new_empty(length, batch, d)
    y_row = y[:, :, None].unbind(0)  # (batch, 1, d)
    h, decay = x.slab(), x.slab()
    saved = h.new_empty(((length + _CHUNK - 1) // _CHUNK, *h.shape)) if checkpoints else None
    for i, t in enumerate(x.order):
        if checkpoints and i % _CHUNK == 0:
            if i == 0:
                saved[0].zero_()
            else:
                saved[i // _CHUNK].copy_(h)
        x.step(t, h, h if i > 0 else None, decay)
        torch.bmm(x.C_row[t], h, out=y_row[t])
    return y, saved


def _scan_backward(x: _Tokens, saved: Tensor, gy: Tensor) -> tuple[Tensor, ...]:
    """dL/d(dt u), dL/d dt through the decays, dL/dAt (n, d), dL/dB, dL/dC, each token-major like its
    input, given dL/dy ``gy`` (L, batch, d). Walks the chunks last to first: recomputes a chunk's states
    and decays from its checkpoint, then runs the adjoint recurrence
    dL/dh_t = C_t gy_t + decay_next dL/dh_next back through it."""
    length = gy.shape[0]
    gy_row, gy_col = gy[:, :, None].unbind(0), gy[..., None].unbind(0)  # (batch, 1, d), (batch, d, 1)
    grad_B, grad_C = torch.empty_like(x.B), torch.empty_like(x.C)
    grad_dtu, grad_dt = torch.empty_like(x.dtu), torch.zeros_like(x.dt)
    grad_B_col, grad_C_col = grad_B[..., None].unbind(0), grad_C[..., None].unbind(0)  # (batch, n, 1)
    grad_dtu_row = grad_dtu[:, :, None].unbind(0)  # (batch, 1, d)
    grad_At = x.slab().zero_()  # (batch, n, d), summed over batch at the end
    states, decays = [x.slab() for _ in range(_CHUNK)], [x.slab() for _ in range(_CHUNK)]
    gh, g_exp = x.slab(), x.slab()
    for start in range((length - 1) // _CHUNK * _CHUNK, -1, -_CHUNK):
        positions = range(start, min(start + _CHUNK, length))
        prev = saved[start // _CHUNK] if start > 0 else None
        for j, i in enumerate(positions):
            x.step(x.order[i], states[j], prev, decays[j])
            prev = states[j]
        for j in reversed(range(len(positions))):
            i, t = positions[j], x.order[positions[j]]
            if i == length - 1:
                torch.mul(x.C_col[t], gy_row[t], out=gh)
            else:  # gh holds decay_next dL/dh_next
                gh.addcmul_(x.C_col[t], gy_row[t])
            torch.bmm(states[j], gy_col[t], out=grad_C_col[t])
            torch.bmm(gh, x.dtu_col[t], out=grad_B_col[t])
            torch.bmm(x.B_row[t], gh, out=grad_dtu_row[t])
            if i > 0:
                # decay_t h_prev dL/dh_t: the gradient of the decay's exponent dt_t A
                h_prev = states[j - 1] if j > 0 else saved[start // _CHUNK]
                torch.mul(decays[j], h_prev, out=g_exp).mul_(gh)
                torch.linalg.vecdot(g_exp, x.At, dim=1, out=grad_dt[t])
                grad_At.addcmul_(g_exp, x.dt_row[t])
                gh.mul_(decays[j])
    return grad_dtu, grad_dt, grad_At.sum(0), grad_B, grad_C


class _ScanCore(torch.autograd.Function):
    """u, dt: (batch, d, L) fp32; A: (d, n); B, C: (batch, n, L) -> y (batch, d, L).

    Forward keeps one state per chunk of _CHUNK tokens; backward recomputes the others chunk by chunk
    (:func:`_scan_backward`). Nothing (L, batch, n, d) sized is allocated."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, reverse: bool):
        y, saved = _scan_forward(_Tokens(u, dt, A, B, C, reverse), checkpoints=True)
        ctx.save_for_backward(u, dt, A, B, C, saved)
        ctx.reverse = reverse
        return y.permute(1, 2, 0)

    @staticmethod
    def backward(ctx, grad_y):
        u, dt, A, B, C, saved = ctx.saved_tensors
        x = _Tokens(u, dt, A, B, C, ctx.reverse)
        grad_dtu, grad_dt, grad_At, grad_B, grad_C = _scan_backward(x, saved, grad_y.permute(2, 0, 1).contiguous())
        grad_dt.addcmul_(grad_dtu, u.permute(2, 0, 1))
        grad_u = grad_dtu.mul_(x.dt)
        return (grad_u.permute(1, 2, 0), grad_dt.permute(1, 2, 0), grad_At.t(), grad_B.permute(1, 2, 0),
                grad_C.permute(1, 2, 0), None)


def token_major_empty(batch: int, d: int, length: int, dtype: torch.dtype, device) -> Tensor:
    """An uninitialised (batch, d, length) tensor stored token-major (stride 1 along d): the
    transposed view of a contiguous (batch, length, d) one, so a kernel walking the tokens reads or
    writes the channels of one token as one coalesced row. Works under fake tensors too."""
    return torch.empty((batch, length, d), dtype=dtype, device=device).transpose(1, 2)


def token_major(t: Tensor) -> Tensor:
    """(batch, d, L) ``t`` stored token-major (a copy only if it is not stored so already)."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def channel_major(A: Tensor) -> Tensor:
    """(d, n) state matrix ``A`` (or (K, d, n), one per direction) stored with stride 1 along d (a copy
    only if it is not stored so already): the layout the scan kernels read it in
    (kernels/selective_scan.py explains why)."""
    return A.transpose(-1, -2).contiguous().transpose(-1, -2)


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
    *,
    z_silu: bool = False,
) -> Tensor:
    """Mamba's selective scan in fp32, differentiable.

    u, delta, z: (batch, d, L); A: (d, n) fp32; B, C: (batch, n, L); D, delta_bias: (d,).
    Returns (batch, d, L) in u's dtype, stored token-major (stride 1 along d: the layout the
    Triton kernels write, and the one out_proj reads). ``reverse`` scans from token L-1 down to 0.
    ``z_silu``: z holds silu(z) already (the lowering's in_proj epilogue), the output is multiplied by it.
    """
    dtype = u.dtype
    u, delta, B, C = u.float(), delta.float(), B.float(), C.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    A = A.float()
    if torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C)):
        y = _ScanCore.apply(u, delta, A, B, C, reverse)
    else:  # nothing kept for a backward
        y = _scan_forward(_Tokens(u, delta, A, B, C, reverse), checkpoints=False)[0].permute(1, 2, 0)
    if D is not None:
        y = y + D.float()[:, None] * u
    if z is not None:
        y = y * (z.float() if z_silu else F.silu(z.float()))
    return token_major(y.to(dtype))


# --------------------------------------------------------------------------------------------
# scans through token orders (VMamba's cross scan, LocalMamba's directions): docs/design.md section 6
# --------------------------------------------------------------------------------------------


def check_order_maps(order: Tensor, scatter: Optional[Tensor], length: int, z_order: Optional[Tensor] = None,
                     tokens: Optional[int] = None) -> None:
    """Raise ValueError unless ``order`` (K, S) and ``scatter`` ((K, S) or None: ``order``) are integer maps
    whose entries lie in [-1, length) and each row of ``scatter`` without its -1 entries is a permutation of
    0 .. length-1 (every token's output written exactly once per direction), with -1 exactly where ``order``
    has it (a padding step reads nothing and writes nothing). With ``z_order`` (K, S) (z read through its own
    map), z and the output have ``tokens`` tokens: z_order and scatter (None: z_order) index those, scatter's
    -1 entries are z_order's, and order's entries lie in [0, length) (no padding step: LocalVim's padded
    tokens are steps of its sequence, with the conv's outputs)."""
    out_length, padding = (length, order) if z_order is None else (tokens, z_order)
    for name, t, n in (("order", order, length), ("z_order", z_order, out_length), ("scatter", scatter, out_length)):
        if t is None:
            continue
        if not isinstance(t, Tensor) or t.dim() != 2 or t.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"ordered_scan: {name} must be a (K, S) int32 / int64 tensor, got "
                             f"{getattr(t, 'dtype', type(t).__name__)} of shape {tuple(getattr(t, 'shape', ()))}")
        if t.numel() and (int(t.min()) < -1 or int(t.max()) >= n):
            raise ValueError(f"ordered_scan: {name} entries must lie in [-1, {n}), got "
                             f"[{int(t.min())}, {int(t.max())}]")
    if z_order is not None and (z_order.shape != order.shape or bool((order < 0).any())):
        raise ValueError("ordered_scan: z_order must have order's shape, and order no -1 entries with it")
    if scatter is None:
        scatter = padding
    elif scatter.shape != order.shape or not torch.equal(scatter < 0, padding < 0):
        raise ValueError(f"ordered_scan: scatter must have order's shape and its -1 (padding) entries"
                         f"{'' if z_order is None else ' where z_order has them'}")
    expected = torch.arange(out_length, device=scatter.device)
    for k, row in enumerate(scatter):
        if not torch.equal(row[row >= 0].sort().values.to(expected.dtype), expected):
            raise ValueError(f"ordered_scan: direction {k} does not write each of the {out_length} tokens exactly once")


def _inverse(scatter_row: Tensor, length: int) -> Tensor:
    """(S,) scan positions -> (L,) int64: the scan step whose output each token receives (no data-dependent
    shapes: the -1 steps land in a slot past the end, which is dropped)."""
    target = torch.where(scatter_row >= 0, scatter_row.long(), length)
    steps = torch.arange(len(scatter_row), device=scatter_row.device)
    return steps.new_zeros(length + 1).scatter_(0, target, steps)[:length]


def ordered_scan_ref(
    u: Tensor,
    deltas: list[Tensor],
    A: Tensor,
    Bs: list[Tensor],
    Cs: list[Tensor],
    D: Optional[Tensor],
    z: Optional[Tensor],
    delta_bias: Optional[Tensor],
    order: Tensor,
    scatter: Optional[Tensor] = None,
    delta_softplus: bool = False,
    z_order: Optional[Tensor] = None,
) -> Tensor:
    """K selective scans, each reading the tokens through its order, their outputs summed; differentiable.

    u, z: (batch, d, L) and per direction k deltas[k]: (batch, d, L), Bs[k], Cs[k]: (batch, n, L), all in
    the model's natural token order; A: (K, d, n); D, delta_bias: (K, d) or None. ``order`` (K, S): step i
    of direction k reads token order[k, i], or for -1 a padding token (u = z = 0, B = C = 0, raw delta 0:
    the zero-padded token of the official code, which still decays the state). Step i's output goes to
    token scatter[k, i] (``scatter`` None: ``order``; -1: dropped). With ``z_order`` (K, S), z (batch, d, T)
    is read through it instead (-1: z = 0) and the output has z's T tokens (scatter None: ``z_order``), and
    ``order`` has no -1: LocalVim, whose u, deltas, B and C are in each direction's sequence order. Each
    direction's output is rounded to u's dtype and the directions are summed in order k = 0, 1, ... as
    ``y_0 + y_1 + ...`` in that dtype. Returns (batch, d, L or T) in u's dtype, stored token-major. Gather,
    :func:`selective_scan_ref`, scatter."""
    length = u.shape[-1]
    tokens = length if z_order is None or z is None else z.shape[-1]
    if z_order is not None and z is None:
        raise ValueError("ordered_scan: z_order reads z, which is None")
    if torch._guards.detect_fake_mode((order, scatter, z_order)) is None:  # traced (a compiled graph's autograd)
        check_order_maps(order, scatter, length, z_order, tokens)
    scatter = (order if z_order is None else z_order) if scatter is None else scatter
    out = None
    for k in range(order.shape[0]):

        def read(t: Optional[Tensor], by: Tensor = order[k]) -> Optional[Tensor]:
            return None if t is None else torch.where(by >= 0, t.index_select(-1, by.clamp(min=0).long()), 0)

        y = selective_scan_ref(read(u), read(deltas[k]), A[k], read(Bs[k]), read(Cs[k]),
                               None if D is None else D[k], read(z, order[k] if z_order is None else z_order[k]),
                               None if delta_bias is None else delta_bias[k], delta_softplus)
        y = y.index_select(-1, _inverse(scatter[k], tokens))
        out = y if out is None else out + y
    return token_major(out)
