"""Mamba selective scan (S6) forward, single direction and Vim's bidirectional combine.

For one batch element, channel d and state index n (fp32 state, h_{-1} = 0):

    dt_t   = delta_t + delta_bias                    (softplus(dt) = log1p(exp(dt)) if dt <= 20 else dt)
    h_t    = exp(dt_t * A[d, n]) * h_{t-1} + (dt_t * u_t) * B_t[n]
    y_t    = sum_n h_t[n] * C_t[n] + D[d] * u_t
    y_t   *= silu(z_t) = z_t / (1 + exp(-z_t))      (if z is given)

``reverse=True`` runs t = L-1 .. 0 from h_L = 0, i.e. ``flip(scan(flip(inputs)))`` without the
flip copies (the backward branch of Vim's bidirectional Mamba block).

Each program owns one batch element and a block of channels, keeps the state in registers as an
(N, BLOCK_D) tile and walks the sequence. The loads and stores of a token are rows of BLOCK_D
channels: coalesced when the (batch, D, L) tensors are stored token-major (stride 1 along D), as
the conv kernel and the scans write them.

Register layout (checked on sm_90 code by tests/kernels/test_codegen.py): the tile's channel
axis is its fast axis, so with BLOCK_D >= 32 * num_warps each thread owns whole channels and the
per-token sum over the N states is a register sum: no warp shuffles, no shared-memory layout
conversions, no barriers inside the token loop. Three things keep it so:
  - A is read channel-major (stride 1 along D, :func:`ptq4vm_fx.scan.channel_major`: Vim computes
    it so, and the wrappers copy it so when it is not). With A row-major, its unit stride along N
    makes Triton (3.6 and 3.8) lay the tile out along N and reduce across threads.
  - A's pointer is not specialized on its 16-byte alignment (``do_not_specialize_on_alignment``).
    Aligned, with its stride along N a multiple of 16 (any Vim width), A's load is vectorized four
    channels to a thread, and the tile follows: N spread over threads, shuffles and shared memory
    in every token step. A is read once per program, so its scalar load costs nothing.
  - Masks are compile-time true when D and N fill their blocks (EVEN_D / EVEN_N), which removes
    the per-load predicates.

B and C rows (a token's N states, every thread reads the whole row) load as 16-byte vectors where
the launch proves every row offset a multiple of 16 bytes (:func:`bc_row_align`; Vim's x_proj
output, 56 columns at Vim-S, is so in fp32 and fp16): the single-direction kernel's step goes from
35 to 11 global loads and 186 to 160 SASS instructions (sm_90); the bidirectional kernel's (its
second half) from 383 to 311 and 76 to 28 loads, at 134 registers uncapped (15 one-warp programs
an SM; under a 96-register cap it spills 56 bytes): BIDIRECTIONAL_MAXNREG.

The bidirectional kernel with one channel per thread does not hold A (``ROWS``, BIDIRECTIONAL_A_ROWS):
holding both directions' A took 32 of those 134 registers. The launch passes A row-major (16-byte aligned
rows) and each step reads it as (BLOCK_D, 4) tiles joined in registers, a thread's channel's states as 16-byte
vectors (L1 hits) in the state tile's own layout (a (N, BLOCK_D) tile with unit stride along N is laid out
along N, over threads; a (N / 4, BLOCK_D, 4) tile too with triton 3.6, not 3.8); the channel-major A and its
unspecialized pointer above stay for the other kernels and finer tiles. With the states summed in one FMA
chain, C read at B's row + N (x_proj's output) and the scratch and combine addressed from an opaque per-step
copy of the channel offsets (no per-thread 64-bit addresses hoisted out of the loop), the lowered Vim-S launch
takes 80 registers, no spill (25 programs an SM: Vim-S batch 128 in one wave), 8.70 SASS and 1.0 MUFU per
element with its z gate from in_proj's epilogue (``Z_SILU``; 8.95 and 1.0625 without; docs/design.md).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..quant import integer
from ..scan import channel_major, token_major_empty
from ..scan import ordered_scan_ref as _ordered_scan_reference
from ..scan import selective_scan_ref as _scan_reference
from ._common import (
    FLOAT_DTYPES,
    _log1p_unit,  # noqa: F401  (the softplus' series, importable here as before)
    _quantize_values,
    _round_to,
    _silu,
    _softplus,
    check_devices,
    check_quant_params,
    check_tensor,
    f32,
    interpret_mode,
    inverse_token_params,
    qrange,
    vec,
)


@triton.jit
def _lanes(pid, BLOCK: tl.constexpr, size, EVEN: tl.constexpr):
    """Offsets pid * BLOCK + [0, BLOCK) and their in-bounds mask (compile-time true when EVEN)."""
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    if EVEN:
        mask = tl.full((BLOCK,), 1, tl.int1)
    else:
        mask = offs < size
    return offs, mask


@triton.jit
def _branch_constants(A_ptr, s_ad, s_an, D_ptr, dbias_ptr, offs_d, mask_d, offs_n, mask_n,
                      HAS_D: tl.constexpr, HAS_DBIAS: tl.constexpr, BLOCK_D: tl.constexpr):
    """A^T * log2(e) (BLOCK_N, BLOCK_D) fp32 (exp(dt * A) == exp2(dt * A2)), D and delta_bias (BLOCK_D,)
    fp32 (zeros where absent)."""
    mask_nd = mask_n[:, None] & mask_d[None, :]
    A2 = tl.load(A_ptr + offs_n[:, None] * s_an + offs_d[None, :] * s_ad, mask=mask_nd, other=0.0)
    A2 = A2.to(tl.float32) * 1.4426950408889634
    Dv = tl.zeros((BLOCK_D,), tl.float32)
    dbias = tl.zeros((BLOCK_D,), tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_DBIAS:
        dbias = tl.load(dbias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    return A2, Dv, dbias


@triton.jit
def _channel_inputs(t, b, offs_d, mask_d, u_ptr, s_ub, s_ud, s_ul, dt_ptr, s_tb, s_td, s_tl):
    """u_t and delta_t of channels ``offs_d`` of batch ``b``: (BLOCK_D,) fp32 each."""
    u = tl.load(u_ptr + (b * s_ub + t * s_ul) + offs_d * s_ud, mask=mask_d, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + (b * s_tb + t * s_tl) + offs_d * s_td, mask=mask_d, other=0.0).to(tl.float32)
    return u, dt


@triton.jit
def _halves(x):
    """x (D, K): its even and odd columns, (D, K // 2) each (a split within each thread's registers)."""
    return tl.split(tl.reshape(x, (x.shape[0], x.shape[1] // 2, 2)))


# y + the sum over K of h * c for h, c (D, K), one multiply-add after another; Triton JIT functions cannot
# recurse, hence one function a width
@triton.jit
def _fma2(h, c, y):
    h0, h1 = _halves(h)
    c0, c1 = _halves(c)
    y = y + tl.reshape(h0, (h0.shape[0],)) * tl.reshape(c0, (c0.shape[0],))
    return y + tl.reshape(h1, (h1.shape[0],)) * tl.reshape(c1, (c1.shape[0],))


@triton.jit
def _fma4(h, c, y):
    h0, h1 = _halves(h)
    c0, c1 = _halves(c)
    return _fma2(h1, c1, _fma2(h0, c0, y))


@triton.jit
def _fma8(h, c, y):
    h0, h1 = _halves(h)
    c0, c1 = _halves(c)
    return _fma4(h1, c1, _fma4(h0, c0, y))


@triton.jit
def _fma16(h, c, y):
    h0, h1 = _halves(h)
    c0, c1 = _halves(c)
    return _fma8(h1, c1, _fma8(h0, c0, y))


@triton.jit
def _state_sum(h, Ct, y):
    """y + sum_n h[n] * Ct[n] for h (BLOCK_N, BLOCK_D) and Ct (BLOCK_N,): with BLOCK_N 4, 8 or 16 one
    multiply-add after another (BLOCK_N FFMA; tl.sum's tree takes a multiply and an add more per pair), the
    states split out of each thread's registers (one channel per thread: no data moves)."""
    K: tl.constexpr = h.shape[0]
    hT = tl.permute(h, (1, 0))
    cT = tl.permute(tl.broadcast_to(Ct[:, None], h.shape), (1, 0))
    if K == 16:
        y = _fma16(hT, cT, y)
    elif K == 8:
        y = _fma8(hT, cT, y)
    elif K == 4:
        y = _fma4(hT, cT, y)
    else:
        y = y + tl.sum(h * Ct[:, None], axis=0)
    return y


@triton.jit
def _opaque(x, OPAQUE: tl.constexpr):
    """x, copied by an opaque move when OPAQUE (a GPU build; the interpreter has no inline PTX): addresses
    computed from it inside a loop stay there, a 32-bit offset from the loop's scalar row pointer, instead of
    a per-thread 64-bit pointer hoisted out of the loop into two registers for the whole walk."""
    if OPAQUE:
        x = tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=tl.int32, is_pure=False, pack=1)
    return x


@triton.jit
def _a_quad(A_ptr, s_ad, offs_d, mask_d, q: tl.constexpr):
    """States 4q .. 4q+3 of A's rows (BLOCK_D, 4): 32 threads along the channels, a 16-byte vector each."""
    k = tl.arange(0, 4)
    ptrs = A_ptr + offs_d[:, None] * s_ad + (q * 4 + k[None, :])
    return tl.load(tl.multiple_of(ptrs, [1, 16]), mask=mask_d[:, None], other=0.0).to(tl.float32)


@triton.jit
def _a_rows(A_ptr, s_ad, offs_d, mask_d, BLOCK_N: tl.constexpr):
    """A^T (BLOCK_N, BLOCK_D) fp32 of a row-major A (unit stride along N; the launch checks its rows are
    16-byte aligned and N == BLOCK_N, 4, 8 or 16), unscaled: loaded as (BLOCK_D, 4) tiles of 4 states, so
    that each thread reads its channel's states as 16-byte vectors (a (BLOCK_N, BLOCK_D) tile with unit
    stride along N would be laid out along N, spread over threads), joined in registers."""
    if BLOCK_N == 4:
        A = _a_quad(A_ptr, s_ad, offs_d, mask_d, 0)[:, :, None]  # (BLOCK_D, 4 states, groups)
    else:
        A = tl.join(_a_quad(A_ptr, s_ad, offs_d, mask_d, 0), _a_quad(A_ptr, s_ad, offs_d, mask_d, 1))
    if BLOCK_N == 16:  # (BLOCK_D, 4, j, i) for group g = 2 i + j, as (BLOCK_D, 4, g)
        A = tl.join(A, tl.join(_a_quad(A_ptr, s_ad, offs_d, mask_d, 2), _a_quad(A_ptr, s_ad, offs_d, mask_d, 3)))
        A = tl.reshape(tl.permute(A, (0, 1, 3, 2)), (offs_d.shape[0], 4, 4))
    return tl.reshape(tl.permute(A, (2, 1, 0)), (BLOCK_N, offs_d.shape[0]))  # n = 4 g + k


@triton.jit
def _scan_step(
    h, t, b, offs_d, mask_d, offs_n, mask_n, A2, Dv, dbias, u, dt,
    B_ptr, s_bb, s_bn, s_bl,
    C_ptr, s_cb, s_cn, s_cl,
    z_ptr, s_zb, s_zd, s_zl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BC_ALIGN: tl.constexpr, PADDED: tl.constexpr = False, ROWS: tl.constexpr = False,
    C_AFTER_B: tl.constexpr = False,
):
    """One token ``t`` of the recurrence for channels ``offs_d`` of batch ``b``, given the token's u
    and delta (:func:`_channel_inputs`; the kernels load them one token ahead, so that their
    latency overlaps a token step: the recurrence starts from them, while B, C and z are needed
    later in the step): returns the new state h (BLOCK_N, BLOCK_D) fp32 and the gated output y_t
    (BLOCK_D,) fp32. ``BC_ALIGN``: B and C row offsets are multiples of it (:func:`bc_row_align`).
    ``PADDED``: t may be -1, a zero-padded token (B, C and z read as zeros; its u and delta come as zeros).
    ``ROWS``: A2 is A itself (:func:`_a_rows`; log2(e) goes into dt) and the output sums the states in one
    chain (:func:`_state_sum`). ``C_AFTER_B``: C's rows follow B's (x_proj's output): C read at B's row + N."""
    mask_bc, mask_z = mask_n, mask_d
    if PADDED:
        mask_bc, mask_z = mask_n & (t >= 0), mask_d & (t >= 0)
        t = tl.maximum(t, 0)
    row_b = tl.multiple_of(b * s_bb + t * s_bl, BC_ALIGN)
    row_c = tl.multiple_of(b * s_cb + t * s_cl, BC_ALIGN)
    Bt = tl.load(B_ptr + row_b + offs_n * s_bn, mask=mask_bc, other=0.0).to(tl.float32)
    if C_AFTER_B:  # one base address for both rows
        Ct = tl.load(B_ptr + row_b + (offs_n + offs_n.shape[0]) * s_bn, mask=mask_bc, other=0.0).to(tl.float32)
    else:
        Ct = tl.load(C_ptr + row_c + offs_n * s_cn, mask=mask_bc, other=0.0).to(tl.float32)
    if HAS_DBIAS:
        dt = dt + dbias
    if SOFTPLUS:
        dt = _softplus(dt)
    if ROWS:
        dA = tl.exp2((dt * 1.4426950408889634)[None, :] * A2)
    else:
        dA = tl.exp2(dt[None, :] * A2)
    h = dA * h + Bt[:, None] * (dt * u)[None, :]
    if ROWS:
        y = _state_sum(h, Ct, Dv * u if HAS_D else tl.zeros_like(u))
    else:
        y = tl.sum(h * Ct[:, None], axis=0)
        if HAS_D:
            y = y + Dv * u
    if HAS_Z:
        zt = tl.load(z_ptr + b * s_zb + offs_d * s_zd + t * s_zl, mask=mask_z, other=0.0).to(tl.float32)
        y = y * _silu(zt)
    return h, y


@triton.jit
def _emit(y, t, b, offs_d, mask_d, out_ptr, s_ob, s_od, s_ol,
          q_ptr, s_qb, s_ql, s_qd, inv_smooth, inv_scale_ptr, zp_ptr, qmin, qmax,
          QUANT: tl.constexpr, STORE_OUT: tl.constexpr):
    """Round y_t to out's dtype; store it as out[b, :, t] (with STORE_OUT) and, with QUANT, its
    token-major quantization."""
    y_out = _round_to(y, out_ptr.dtype.element_ty)
    if STORE_OUT:
        tl.store(out_ptr + b * s_ob + offs_d * s_od + t * s_ol, y_out.to(out_ptr.dtype.element_ty), mask=mask_d)
    if QUANT:
        q = _quantize_values(y_out, inv_smooth, tl.load(inv_scale_ptr + t), tl.load(zp_ptr + t),
                             qmin, qmax)
        tl.store(q_ptr + b * s_qb + t * s_ql + offs_d * s_qd, q, mask=mask_d)


@triton.jit(do_not_specialize_on_alignment=["A_ptr"])  # A: module docstring
def _selective_scan_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dbias_ptr, z_ptr, out_ptr,
    Dm, N, L,
    s_ub, s_ud, s_ul,
    s_tb, s_td, s_tl,
    s_ad, s_an,
    s_bb, s_bn, s_bl,
    s_cb, s_cn, s_cl,
    s_zb, s_zd, s_zl,
    s_ob, s_od, s_ol,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr, BC_ALIGN: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr, EVEN_N: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_d, mask_d = _lanes(tl.program_id(1), BLOCK_D, Dm, EVEN_D)
    offs_n, mask_n = _lanes(0, BLOCK_N, N, EVEN_N)
    A2, Dv, dbias = _branch_constants(A_ptr, s_ad, s_an, D_ptr, dbias_ptr, offs_d, mask_d, offs_n, mask_n,
                                      HAS_D, HAS_DBIAS, BLOCK_D)
    h = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    if REVERSE:
        t_first = L - 1
    else:
        t_first = 0
    u, dt = _channel_inputs(t_first, b, offs_d, mask_d, u_ptr, s_ub, s_ud, s_ul, dt_ptr, s_tb, s_td, s_tl)
    for i in range(L):
        # this token and the next (the last step reloads its own token: no read past the ends)
        if REVERSE:
            t = L - 1 - i
            t_next = tl.maximum(t - 1, 0)
        else:
            t = i
            t_next = tl.minimum(i + 1, L - 1)
        u_next, dt_next = _channel_inputs(t_next, b, offs_d, mask_d, u_ptr, s_ub, s_ud, s_ul, dt_ptr, s_tb, s_td, s_tl)
        h, y = _scan_step(h, t, b, offs_d, mask_d, offs_n, mask_n, A2, Dv, dbias, u, dt,
                          B_ptr, s_bb, s_bn, s_bl, C_ptr, s_cb, s_cn, s_cl, z_ptr, s_zb, s_zd, s_zl,
                          HAS_D, HAS_Z, HAS_DBIAS, SOFTPLUS, BC_ALIGN)
        u, dt = u_next, dt_next
        _emit(y, t, b, offs_d, mask_d, out_ptr, s_ob, s_od, s_ol,
              out_ptr, 0, 0, 0, y, dbias_ptr, dbias_ptr, 0.0, 0.0, False, True)  # no quantization


@triton.jit
def _both_steps(i, L, b, offs_d, mask_d, offs_n, mask_n, hf, uf, dtf, hb, ub, dtb, consts_f, consts_b, fwd, bwd,
                HAS_DF: tl.constexpr, HAS_DBF: tl.constexpr, HAS_DB: tl.constexpr, HAS_DBB: tl.constexpr,
                SOFTPLUS: tl.constexpr, BC_ALIGN: tl.constexpr, a_rows=None, ROWS: tl.constexpr = False,
                C_AFTER_B: tl.constexpr = False):
    """Step i of :func:`_bidirectional_scan_kernel`: the forward scan at token i, the backward one at L-1-i,
    both ungated, and the next step's channel inputs (the last step reloads its own tokens: no read past the
    ends). consts_f / consts_b: a direction's (A2, D, delta_bias) (:func:`_branch_constants`); fwd / bwd: its
    (u, delta, B, C) pointers, each with its three strides. Returns (hf, yf, uf, dtf, hb, yb, ub, dtb):
    states (BLOCK_N, BLOCK_D) and outputs (BLOCK_D,) fp32, the next inputs. ``ROWS``: A read each step from
    a_rows = (Af_ptr, s_afd, Ab_ptr, s_abd) (:func:`_a_rows`), not held; ``C_AFTER_B``: :func:`_scan_step`."""
    tb = L - 1 - i
    A2f, Dvf, dbiasf = consts_f
    A2b, Dvb, dbiasb = consts_b
    (uf_ptr, s_ufb, s_ufd, s_ufl, dtf_ptr, s_tfb, s_tfd, s_tfl,
     Bf_ptr, s_bfb, s_bfn, s_bfl, Cf_ptr, s_cfb, s_cfn, s_cfl) = fwd
    (ub_ptr, s_ubb, s_ubd, s_ubl, dtb_ptr, s_tbb, s_tbd, s_tbl,
     Bb_ptr, s_bbb, s_bbn, s_bbl, Cb_ptr, s_cbb, s_cbn, s_cbl) = bwd
    uf_next, dtf_next = _channel_inputs(tl.minimum(i + 1, L - 1), b, offs_d, mask_d,
                                        uf_ptr, s_ufb, s_ufd, s_ufl, dtf_ptr, s_tfb, s_tfd, s_tfl)
    ub_next, dtb_next = _channel_inputs(tl.maximum(tb - 1, 0), b, offs_d, mask_d,
                                        ub_ptr, s_ubb, s_ubd, s_ubl, dtb_ptr, s_tbb, s_tbd, s_tbl)
    if ROWS:
        Af_ptr, s_afd, Ab_ptr, s_abd = a_rows
        A2f = _a_rows(Af_ptr, s_afd, offs_d, mask_d, hf.shape[0])
    hf, yf = _scan_step(hf, i, b, offs_d, mask_d, offs_n, mask_n, A2f, Dvf, dbiasf, uf, dtf,
                        Bf_ptr, s_bfb, s_bfn, s_bfl, Cf_ptr, s_cfb, s_cfn, s_cfl, uf_ptr, 0, 0, 0,
                        HAS_DF, False, HAS_DBF, SOFTPLUS, BC_ALIGN, False, ROWS, C_AFTER_B)
    if ROWS:
        A2b = _a_rows(Ab_ptr, s_abd, offs_d, mask_d, hb.shape[0])
    hb, yb = _scan_step(hb, tb, b, offs_d, mask_d, offs_n, mask_n, A2b, Dvb, dbiasb, ub, dtb,
                        Bb_ptr, s_bbb, s_bbn, s_bbl, Cb_ptr, s_cbb, s_cbn, s_cbl, ub_ptr, 0, 0, 0,
                        HAS_DB, False, HAS_DBB, SOFTPLUS, BC_ALIGN, False, ROWS, C_AFTER_B)
    return hf, yf, uf_next, dtf_next, hb, yb, ub_next, dtb_next


@triton.jit
def _combine(yf, yb, t, b, offs_d, mask_d, z_ptr, s_zb, s_zd, s_zl, out_ptr, s_ob, s_od, s_ol,
             q_ptr, s_qb, s_ql, s_qd, inv_smooth, inv_scale_ptr, zp_ptr, qmin, qmax,
             HAS_Z: tl.constexpr, Z_SILU: tl.constexpr, QUANT: tl.constexpr, STORE_OUT: tl.constexpr):
    """Token t's output from its two ungated directions (BLOCK_D,) fp32: each gated by silu(z_t)
    (computed once for both; with Z_SILU z already holds it) and rounded to out's dtype, their sum rounded,
    halved; stored and / or quantized (:func:`_emit`)."""
    dtype = out_ptr.dtype.element_ty
    if HAS_Z:
        gate = tl.load(z_ptr + (b * s_zb + t * s_zl) + offs_d * s_zd, mask=mask_d, other=0.0).to(tl.float32)
        if not Z_SILU:
            gate = _silu(gate)
        yf = yf * gate
        yb = yb * gate
    y = _round_to(_round_to(yf, dtype) + _round_to(yb, dtype), dtype) * 0.5
    _emit(y, t, b, offs_d, mask_d, out_ptr, s_ob, s_od, s_ol,
          q_ptr, s_qb, s_ql, s_qd, inv_smooth, inv_scale_ptr, zp_ptr, qmin, qmax, QUANT, STORE_OUT)


@triton.jit(do_not_specialize_on_alignment=["Af_ptr", "Ab_ptr"])  # A: module docstring
def _bidirectional_scan_kernel(
    uf_ptr, dtf_ptr, Af_ptr, Bf_ptr, Cf_ptr, Df_ptr, dbf_ptr,
    ub_ptr, dtb_ptr, Ab_ptr, Bb_ptr, Cb_ptr, Db_ptr, dbb_ptr,
    z_ptr, acc_ptr, out_ptr, q_ptr, inv_smooth_ptr, inv_scale_ptr, zp_ptr,
    Dm, N, L,
    s_ufb, s_ufd, s_ufl, s_tfb, s_tfd, s_tfl, s_afd, s_afn,
    s_bfb, s_bfn, s_bfl, s_cfb, s_cfn, s_cfl,
    s_ubb, s_ubd, s_ubl, s_tbb, s_tbd, s_tbl, s_abd, s_abn,
    s_bbb, s_bbn, s_bbl, s_cbb, s_cbn, s_cbl,
    s_zb, s_zd, s_zl,
    s_ab, s_ad, s_al,
    s_ob, s_od, s_ol,
    s_qb, s_ql, s_qd,
    qmin, qmax,
    HAS_DF: tl.constexpr, HAS_DBF: tl.constexpr, HAS_DB: tl.constexpr, HAS_DBB: tl.constexpr,
    HAS_Z: tl.constexpr, Z_SILU: tl.constexpr, SOFTPLUS: tl.constexpr, QUANT: tl.constexpr,
    HAS_SMOOTH: tl.constexpr, STORE_OUT: tl.constexpr, BC_ALIGN: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr, EVEN_N: tl.constexpr,
    ROWS: tl.constexpr = False, C_AFTER_B: tl.constexpr = False, OPAQUE: tl.constexpr = False,
):
    """Both directions in one walk: step i advances the forward scan at token i and the backward
    scan at token L-1-i (two independent recurrences per thread). Two branch-free loops: the first
    half's steps park both ungated outputs in the fp32 scratch ``acc``; the middle token (odd L) is
    peeled; the second half's steps find each output's partner parked and :func:`_combine` gates
    both with one silu(z_t) (with Z_SILU z holds silu(z): in_proj's epilogue computed it), rounds them as
    the two scans, the add and the halving of the unfused graph round them, and stores / quantizes both
    tokens. ``acc`` must not alias ``out``.

    ``ROWS`` (one channel per thread; the launch's A row-major, 16-byte aligned rows, N == BLOCK_N, 4, 8
    or 16): A is read each step as its channel's 16-byte row vectors (L1 hits) instead of held
    (2 x BLOCK_N registers), the states summed in one chain, and with ``OPAQUE`` (a GPU build) the scratch
    and the combine address their rows from the loop's channel offsets (:func:`_opaque`): at most 80
    registers at Vim-S (25 one-warp programs an SM), no spill (scripts/kernel_codegen.py).
    ``C_AFTER_B``: both directions' C rows follow their B rows (:func:`_scan_step`)."""
    b = tl.program_id(0).to(tl.int64)
    offs_d, mask_d = _lanes(tl.program_id(1), BLOCK_D, Dm, EVEN_D)
    offs_n, mask_n = _lanes(0, BLOCK_N, N, EVEN_N)
    if HAS_SMOOTH:
        inv_smooth = tl.load(inv_smooth_ptr + offs_d, mask=mask_d, other=0.0)
    else:
        inv_smooth = tl.full((BLOCK_D,), 1.0, tl.float32)
    consts_f = _branch_constants(Af_ptr, s_afd, s_afn, Df_ptr, dbf_ptr, offs_d, mask_d, offs_n, mask_n,
                                 HAS_DF, HAS_DBF, BLOCK_D)
    consts_b = _branch_constants(Ab_ptr, s_abd, s_abn, Db_ptr, dbb_ptr, offs_d, mask_d, offs_n, mask_n,
                                 HAS_DB, HAS_DBB, BLOCK_D)
    acc_base = acc_ptr + b * s_ab + offs_d * s_ad
    a_rows = (Af_ptr, s_afd, Ab_ptr, s_abd)
    fwd = (uf_ptr, s_ufb, s_ufd, s_ufl, dtf_ptr, s_tfb, s_tfd, s_tfl,
           Bf_ptr, s_bfb, s_bfn, s_bfl, Cf_ptr, s_cfb, s_cfn, s_cfl)
    bwd = (ub_ptr, s_ubb, s_ubd, s_ubl, dtb_ptr, s_tbb, s_tbd, s_tbl,
           Bb_ptr, s_bbb, s_bbn, s_bbl, Cb_ptr, s_cbb, s_cbn, s_cbl)
    hf = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    hb = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    uf, dtf = _channel_inputs(0, b, offs_d, mask_d, uf_ptr, s_ufb, s_ufd, s_ufl, dtf_ptr, s_tfb, s_tfd, s_tfl)
    ub, dtb = _channel_inputs(L - 1, b, offs_d, mask_d, ub_ptr, s_ubb, s_ubd, s_ubl, dtb_ptr, s_tbb, s_tbd, s_tbl)
    for i in range(L // 2):  # first half: park both outputs until their partners exist
        hf, yf, uf, dtf, hb, yb, ub, dtb = _both_steps(i, L, b, offs_d, mask_d, offs_n, mask_n, hf, uf, dtf, hb, ub,
                                                       dtb, consts_f, consts_b, fwd, bwd,
                                                       HAS_DF, HAS_DBF, HAS_DB, HAS_DBB, SOFTPLUS, BC_ALIGN,
                                                       a_rows, ROWS, C_AFTER_B)
        if ROWS:
            od = _opaque(offs_d, OPAQUE)
            tl.store(acc_ptr + b * s_ab + i * s_al + od * s_ad, yf, mask=mask_d)
            tl.store(acc_ptr + b * s_ab + (L - 1 - i) * s_al + od * s_ad, yb, mask=mask_d)
        else:
            tl.store(acc_base + i * s_al, yf, mask=mask_d)
            tl.store(acc_base + (L - 1 - i) * s_al, yb, mask=mask_d)
    tl.debug_barrier()  # every parked output is written
    if L % 2 == 1:  # the middle token has both its outputs at once
        hf, yf, uf, dtf, hb, yb, ub, dtb = _both_steps(L // 2, L, b, offs_d, mask_d, offs_n, mask_n, hf, uf, dtf,
                                                       hb, ub, dtb, consts_f, consts_b, fwd, bwd,
                                                       HAS_DF, HAS_DBF, HAS_DB, HAS_DBB, SOFTPLUS, BC_ALIGN,
                                                       a_rows, ROWS, C_AFTER_B)
        _combine(yf, yb, L // 2, b, offs_d, mask_d, z_ptr, s_zb, s_zd, s_zl, out_ptr, s_ob, s_od, s_ol,
                 q_ptr, s_qb, s_ql, s_qd, inv_smooth, inv_scale_ptr, zp_ptr, qmin, qmax, HAS_Z, Z_SILU, QUANT,
                 STORE_OUT)
    for i in range((L + 1) // 2, L):  # second half: token i's partner y_b[i] was parked at step L-1-i
        tb = L - 1 - i
        hf, yf, uf, dtf, hb, yb, ub, dtb = _both_steps(i, L, b, offs_d, mask_d, offs_n, mask_n, hf, uf, dtf, hb, ub,
                                                       dtb, consts_f, consts_b, fwd, bwd,
                                                       HAS_DF, HAS_DBF, HAS_DB, HAS_DBB, SOFTPLUS, BC_ALIGN,
                                                       a_rows, ROWS, C_AFTER_B)
        od = offs_d
        if ROWS:
            od = _opaque(offs_d, OPAQUE)
        _combine(yf, tl.load(acc_ptr + b * s_ab + i * s_al + od * s_ad, mask=mask_d, other=0.0), i, b, od, mask_d,
                 z_ptr, s_zb, s_zd, s_zl, out_ptr, s_ob, s_od, s_ol,
                 q_ptr, s_qb, s_ql, s_qd, inv_smooth, inv_scale_ptr, zp_ptr, qmin, qmax, HAS_Z, Z_SILU, QUANT,
                 STORE_OUT)
        _combine(tl.load(acc_ptr + b * s_ab + tb * s_al + od * s_ad, mask=mask_d, other=0.0), yb, tb, b, od, mask_d,
                 z_ptr, s_zb, s_zd, s_zl, out_ptr, s_ob, s_od, s_ol,
                 q_ptr, s_qb, s_ql, s_qd, inv_smooth, inv_scale_ptr, zp_ptr, qmin, qmax, HAS_Z, Z_SILU, QUANT,
                 STORE_OUT)


@triton.jit(do_not_specialize_on_alignment=["A_ptr"])  # A: module docstring
def _ordered_scan_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dbias_ptr, z_ptr, order_ptr, scatter_ptr, z_order_ptr, out_ptr,
    Dm, N, S,
    s_ub, s_ud, s_ul,
    s_tb, s_td, s_tl,
    s_ad, s_an,
    s_bb, s_bn, s_bl,
    s_cb, s_cn, s_cl,
    s_zb, s_zd, s_zl,
    s_ob, s_od, s_ol,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_SCATTER: tl.constexpr, ACCUMULATE: tl.constexpr, Z_ORDER: tl.constexpr, BC_ALIGN: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr, EVEN_N: tl.constexpr,
):
    """One direction of :func:`ordered_scan`: step i reads token ``order[i]`` of the natural-order inputs
    (-1: a padding token, u = delta = B = C = z = 0, loaded as masked-off zeros) and writes its output,
    rounded to out's dtype, at token ``scatter[i]`` (``order[i]`` without HAS_SCATTER; -1: dropped). With
    Z_ORDER (HAS_Z off) the output is gated by z's token ``z_order[i]`` instead (-1: z = 0). With
    ACCUMULATE the output is added to what out holds there (the earlier directions' sum, written by an
    earlier launch) and the sum rounded to out's dtype: the merge and the sum in the epilogue."""
    b = tl.program_id(0).to(tl.int64)
    offs_d, mask_d = _lanes(tl.program_id(1), BLOCK_D, Dm, EVEN_D)
    offs_n, mask_n = _lanes(0, BLOCK_N, N, EVEN_N)
    A2, Dv, dbias = _branch_constants(A_ptr, s_ad, s_an, D_ptr, dbias_ptr, offs_d, mask_d, offs_n, mask_n,
                                      HAS_D, HAS_DBIAS, BLOCK_D)
    dtype = out_ptr.dtype.element_ty
    h = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    t = tl.load(order_ptr)
    u, dt = _ordered_inputs(t, b, offs_d, mask_d, u_ptr, s_ub, s_ud, s_ul, dt_ptr, s_tb, s_td, s_tl)
    for i in range(S):
        # the next step's token and channel inputs, loaded a step ahead (the last step reloads its own)
        t_next = tl.load(order_ptr + tl.minimum(i + 1, S - 1))
        u_next, dt_next = _ordered_inputs(t_next, b, offs_d, mask_d, u_ptr, s_ub, s_ud, s_ul, dt_ptr, s_tb, s_td, s_tl)
        h, y = _scan_step(h, t, b, offs_d, mask_d, offs_n, mask_n, A2, Dv, dbias, u, dt,
                          B_ptr, s_bb, s_bn, s_bl, C_ptr, s_cb, s_cn, s_cl, z_ptr, s_zb, s_zd, s_zl,
                          HAS_D, HAS_Z, HAS_DBIAS, SOFTPLUS, BC_ALIGN, True)
        if Z_ORDER:  # as _scan_step gates, z's token from its own map
            tz = tl.load(z_order_ptr + i)
            zt = tl.load(z_ptr + b * s_zb + offs_d * s_zd + tl.maximum(tz, 0) * s_zl, mask=mask_d & (tz >= 0),
                         other=0.0).to(tl.float32)
            y = y * _silu(zt)
        if HAS_SCATTER:
            p = tl.load(scatter_ptr + i)
        else:
            p = t
        keep = mask_d & (p >= 0)
        out_at = out_ptr + b * s_ob + offs_d * s_od + tl.maximum(p, 0) * s_ol
        y = _round_to(y, dtype)
        if ACCUMULATE:
            y = _round_to(tl.load(out_at, mask=keep, other=0.0).to(tl.float32) + y, dtype)
        tl.store(out_at, y.to(dtype), mask=keep)
        t = t_next
        u, dt = u_next, dt_next


@triton.jit
def _ordered_inputs(t, b, offs_d, mask_d, u_ptr, s_ub, s_ud, s_ul, dt_ptr, s_tb, s_td, s_tl):
    """u and raw delta of token ``t`` (zeros for a padding token, t = -1): (BLOCK_D,) fp32 each."""
    mask = mask_d & (t >= 0)
    return _channel_inputs(tl.maximum(t, 0), b, offs_d, mask, u_ptr, s_ub, s_ud, s_ul, dt_ptr, s_tb, s_td, s_tl)


# --------------------------------------------------------------------------------------------
# Launch configuration
# --------------------------------------------------------------------------------------------


# Register cap per thread of the bidirectional kernel's launch (None: ptxas's choice). With one channel per
# thread it takes 80 registers uncapped reading A's rows each step (ROWS), 130 holding A; holding A it spilled
# under 128 (56 bytes at 96), and reading rows it spills under a cap of 80 (scripts/kernel_codegen.py);
# scripts/tune_kernels.py times a cap of 96 against it on a GPU.
BIDIRECTIONAL_MAXNREG = None
# One channel per thread (BLOCK_D 32 a warp): the bidirectional kernel reads A each step as row vectors
# (ROWS) instead of holding both directions' A (32 registers): 80 registers, 25 programs an SM at Vim-S,
# where holding A takes 134 (15 an SM); False: A held in registers (scripts/kernel_codegen.py has both).
BIDIRECTIONAL_A_ROWS = True


def reads_a_rows(block_d: int, num_warps: int, N: int, block_n: int) -> bool:
    """Whether the bidirectional launch reads A as row vectors each step (the kernel's ROWS): one channel a
    thread and N a whole block of 4, 8 or 16 states."""
    return BIDIRECTIONAL_A_ROWS and block_d == 32 * num_warps and N == block_n and N in (4, 8, 16)


def _aligned_rows(A: Tensor) -> Tensor:
    """(D, N) fp32 A row-major with 16-byte aligned rows (a copy unless it is so already): the bidirectional
    kernel's ROWS layout."""
    if A.stride(1) == 1 and A.stride(0) == A.shape[1] and A.data_ptr() % 16 == 0:
        return A
    return A.clone(memory_format=torch.contiguous_format)


def _c_after_b(B: Tensor, C: Tensor, N: int) -> bool:
    """Whether every (batch, token) row of C starts N elements after B's (both column slices of x_proj's
    output, C right after B) with unit stride along N: the kernels then read C at B's row + N."""
    return (B.dtype == C.dtype and B.stride() == C.stride() and B.stride(1) == 1
            and C.data_ptr() - B.data_ptr() == N * B.element_size())


def bc_row_align(element_size: int, *row_strides: int) -> int:
    """Elements per 16 bytes when every stride (B's and C's along batch and tokens, in elements of
    ``element_size`` bytes) is a multiple of it, else 1: a multiple every (batch, token) row offset is,
    the kernels' ``BC_ALIGN`` (with a 16-byte aligned pointer, Triton then loads rows as 16-byte vectors)."""
    vec = 16 // element_size
    return vec if all(stride % vec == 0 for stride in row_strides) else 1


def _scan_config(batch, Dm, N):
    """(BLOCK_D, BLOCK_N, num_warps). The sequential loop is latency bound: many narrow programs
    (>= 1536, about 12 per SM of an H100) of one warp beat wide ones. One warp owns BLOCK_D
    channels: 32 gives each thread one channel (register-only reduction over N, the module
    docstring); 16 or 8 split a channel's N states over 2 or 4 threads (one or two shuffles per
    token) for more programs at small batches. The program-count rule comes from an H100 sweep
    (scripts/tune_kernels.py) of the previous, N-major register layout; re-sweep on a GPU."""
    block_n = triton.next_power_of_2(N)
    if interpret_mode():  # the interpreter's cost is per program: the GPU's widest block
        return 32, block_n, 1
    for block_d in (32, 16, 8):
        if batch * triton.cdiv(Dm, block_d) >= 1536:
            break
    return block_d, block_n, 1


def _check_scan_args(prefix, u, delta, A, B, C, D, z, delta_bias):
    check_tensor(f"{prefix}u", u, ndim=3, dtypes=FLOAT_DTYPES)
    Bsz, Dm, L = u.shape
    check_tensor(f"{prefix}delta", delta, shape=(Bsz, Dm, L), dtypes=FLOAT_DTYPES)
    check_tensor(f"{prefix}A", A, ndim=2, dtypes=(torch.float32,))
    if A.shape[0] != Dm or A.shape[1] < 1:
        raise ValueError(f"{prefix}A must have shape (Dm={Dm}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    check_tensor(f"{prefix}B", B, shape=(Bsz, N, L), dtypes=FLOAT_DTYPES)
    check_tensor(f"{prefix}C", C, shape=(Bsz, N, L), dtypes=FLOAT_DTYPES)
    check_tensor(f"{prefix}D", D, shape=(Dm,), dtypes=(torch.float32,), allow_none=True)
    check_tensor("z", z, shape=(Bsz, Dm, L), dtypes=FLOAT_DTYPES, allow_none=True)
    check_tensor(f"{prefix}delta_bias", delta_bias, shape=(Dm,), dtypes=(torch.float32,), allow_none=True)
    return Bsz, Dm, L, N


def _check_flag(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {type(value).__name__}")  # noqa: TRY004 (API: ValueError)


def _check_z_silu(z_silu, z):
    _check_flag("z_silu", z_silu)
    if z_silu and z is None:
        raise ValueError("z_silu=True says z holds silu(z): it needs a z")


def _check_store_out(store_out, quant):
    _check_flag("store_out", store_out)
    if not (store_out or quant):
        raise ValueError("store_out=False leaves nothing to return: it needs the quantized output (inv_scale)")


def _float(A):
    """A in fp32, its strides kept (channel-major stays so); anything not a tensor passes through for
    the argument checks to name."""
    return A.float() if isinstance(A, torch.Tensor) else A


def _s3(t):
    return (t.stride(0), t.stride(1), t.stride(2)) if t is not None else (0, 0, 0)


# --------------------------------------------------------------------------------------------
# Public ops
# --------------------------------------------------------------------------------------------


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, reverse=False):
    """Selective scan forward (module docstring has the math).

    Args:
        u: (Bsz, Dm, L) fp32 / fp16 / bf16 input.
        delta: (Bsz, Dm, L) fp32 / fp16 / bf16 time steps (before bias / softplus).
        A: (Dm, N) state matrix (negative real), used in fp32; copied channel-major unless it is.
        B, C: (Bsz, N, L) fp32 / fp16 / bf16 input-dependent projections.
        D: (Dm,) skip, or None (used in fp32).
        z: (Bsz, Dm, L) gate, or None.
        delta_bias: (Dm,) or None (used in fp32).
        delta_softplus: bool. reverse: bool (anticausal scan, t = L-1 .. 0).
        Any strides are accepted for the 3-D tensors.

    Returns:
        out: (Bsz, Dm, L), dtype of ``u``, stored token-major (stride 1 along Dm).

    Batches of 1 to 8 on a GPU run the segmented kernel (``kernels/segmented_scan.py``).
    """
    from .segmented_scan import launch_segmented_scan, use_segmented  # (that module imports this one)

    A, D, delta_bias = _float(A), f32(D), f32(delta_bias)
    Bsz, Dm, L, N = _check_scan_args("", u, delta, A, B, C, D, z, delta_bias)
    _check_flag("delta_softplus", delta_softplus)
    _check_flag("reverse", reverse)
    check_devices(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
    out = token_major_empty(Bsz, Dm, L, u.dtype, u.device)
    if out.numel() == 0:
        return out
    A, D, delta_bias = channel_major(A), vec(D), vec(delta_bias)
    if use_segmented(Bsz):  # latency bound: segments of tokens side by side
        return launch_segmented_scan(out, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    block_d, block_n, num_warps = _scan_config(Bsz, Dm, N)
    grid = (Bsz, triton.cdiv(Dm, block_d))
    _selective_scan_kernel[grid](
        u, delta, A, B, C,
        D if D is not None else A, delta_bias if delta_bias is not None else A,
        z if z is not None else u, out,
        Dm, N, L,
        *_s3(u), *_s3(delta), A.stride(0), A.stride(1), *_s3(B), *_s3(C), *_s3(z), *_s3(out),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DBIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        REVERSE=reverse, BC_ALIGN=bc_row_align(B.element_size(), B.stride(0), B.stride(2), C.stride(0), C.stride(2)),
        BLOCK_D=block_d, BLOCK_N=block_n, EVEN_D=Dm % block_d == 0, EVEN_N=N == block_n,
        num_warps=num_warps, num_stages=2,
    )
    return out


def _launch_bidirectional_scan(u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f,
                               u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b,
                               z=None, delta_softplus=False,
                               inv_smooth=None, inv_scale=None, zero_point=None, bits=8, store_out=True,
                               z_silu=False):
    """Vim bidirectional SSM output ``(scan_f + scan_b) / 2`` in one launch.

    ``scan_f = selective_scan(u_f, delta_f, A_f, B_f, C_f, D_f, z, delta_bias_f, delta_softplus)`` and
    ``scan_b = selective_scan(u_b, ..., z, delta_bias_b, delta_softplus, reverse=True)``; both
    directions are gated by the same ``z``. Each program walks both directions at once (forward at
    token i, backward at token L-1-i), parking the first half's outputs in a scratch buffer and
    combining them with their partners in the second half. In fp16 / bf16 the result is rounded as
    the unfused graph rounds it: each scan's output, their sum, and the half of the sum.

    Args:
        *_f / *_b: the forward / backward branch's tensors, shapes and dtypes as in
            :func:`selective_scan` (u: (Bsz, Dm, L), A: (Dm, N), B / C: (Bsz, N, L), D and
            delta_bias: (Dm,) fp32 or None); both branches share Bsz, Dm, L, N and u's dtype.
        z: (Bsz, Dm, L) or None.
        delta_softplus: bool, applied to both branches.
        inv_smooth, inv_scale, zero_point, bits: optional fused static quantization of the
            output (``inv_scale`` given turns it on): inv_smooth (Dm,) fp32 or None,
            inv_scale (L,) fp32, zero_point (L,) int32, bits in [2, 8]; token index = t.
        store_out: with the quantization, False skips storing ``out`` (when only its codes are read);
            ``out`` is then an empty tensor.
        z_silu: True: ``z`` holds silu(z) already (in_proj's epilogue applied it), the gate multiplies by it.

    Returns:
        out (Bsz, Dm, L) in ``u_f``'s dtype stored token-major, or ``(out, xq)`` with xq (Bsz, L, Dm) int8 — the
        token-major quantization of ``out`` as stored (after rounding to its dtype).
    """
    Bsz, Dm, L, N = _check_scan_args("", u_f, delta_f, A_f, B_f, C_f, D_f, z, delta_bias_f)
    Bb, Dmb, Lb, Nb = _check_scan_args("backward ", u_b, delta_b, A_b, B_b, C_b, D_b, z, delta_bias_b)
    if (Bb, Dmb, Lb, Nb) != (Bsz, Dm, L, N):
        raise ValueError(f"backward branch has (Bsz, Dm, L, N)={(Bb, Dmb, Lb, Nb)}, "
                         f"forward branch has {(Bsz, Dm, L, N)}")
    if u_b.dtype != u_f.dtype:
        raise ValueError(f"u_b must have u_f's dtype (the output's), got {u_b.dtype} and {u_f.dtype}")
    from .segmented_scan import launch_segmented_bidirectional, use_segmented  # (that module imports this one)

    _check_flag("delta_softplus", delta_softplus)
    _check_z_silu(z_silu, z)
    quant = inv_scale is not None
    if quant:
        check_quant_params(inv_smooth, inv_scale, zero_point, bits, L, Dm)
    elif inv_smooth is not None or zero_point is not None:
        raise ValueError("inv_smooth / zero_point given without inv_scale: "
                         "pass inv_scale to quantize the output")
    _check_store_out(store_out, quant)
    check_devices(u_f=u_f, delta_f=delta_f, A_f=A_f, B_f=B_f, C_f=C_f, D_f=D_f, delta_bias_f=delta_bias_f,
                  u_b=u_b, delta_b=delta_b, A_b=A_b, B_b=B_b, C_b=C_b, D_b=D_b, delta_bias_b=delta_bias_b,
                  z=z, inv_smooth=inv_smooth, inv_scale=inv_scale, zero_point=zero_point)

    dev = u_f.device
    out = token_major_empty(Bsz, Dm, L, u_f.dtype, dev) if store_out else u_f.new_empty(0)
    xq = torch.empty((Bsz, L, Dm), dtype=torch.int8, device=dev) if quant else None
    if Bsz * Dm * L == 0:
        return (out, xq) if quant else out

    A_rows = A_f, A_b
    A_f, A_b = channel_major(A_f), channel_major(A_b)
    D_f, delta_bias_f, D_b, delta_bias_b = vec(D_f), vec(delta_bias_f), vec(D_b), vec(delta_bias_b)
    inv_smooth, inv_scale, zero_point = vec(inv_smooth), vec(inv_scale), vec(zero_point)
    qmin, qmax = qrange(bits) if quant else (0.0, 0.0)
    if use_segmented(Bsz):  # latency bound: each direction by segments, then their average
        acc = token_major_empty(Bsz, Dm, L, u_f.dtype, dev)  # the backward direction's output
        launch_segmented_bidirectional(out if store_out else acc, xq, acc,
                                       (u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f),
                                       (u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b), z, delta_softplus,
                                       inv_smooth, inv_scale, zero_point, qmin, qmax, z_silu)
        return (out, xq) if quant else out
    dummy = A_f
    acc = token_major_empty(Bsz, Dm, L, torch.float32, dev)  # the first half's parked ungated outputs
    stored = out if store_out else u_f.new_empty((1, 1, 1))  # (unwritten without store_out: its dtype rounds)
    block_d, block_n, num_warps = _scan_config(Bsz, Dm, N)
    rows = reads_a_rows(block_d, num_warps, N, block_n)
    if rows:  # A read as row vectors each step (the kernel's ROWS)
        A_f, A_b = (_aligned_rows(A) for A in A_rows)
    grid = (Bsz, triton.cdiv(Dm, block_d))
    _bidirectional_scan_kernel[grid](
        u_f, delta_f, A_f, B_f, C_f, D_f if D_f is not None else dummy,
        delta_bias_f if delta_bias_f is not None else dummy,
        u_b, delta_b, A_b, B_b, C_b, D_b if D_b is not None else dummy,
        delta_bias_b if delta_bias_b is not None else dummy,
        z if z is not None else u_f, acc, stored, xq if quant else acc,
        inv_smooth if inv_smooth is not None else dummy,
        inv_scale if quant else dummy, zero_point if quant else dummy,
        Dm, N, L,
        *_s3(u_f), *_s3(delta_f), A_f.stride(0), A_f.stride(1), *_s3(B_f), *_s3(C_f),
        *_s3(u_b), *_s3(delta_b), A_b.stride(0), A_b.stride(1), *_s3(B_b), *_s3(C_b),
        *_s3(z), *_s3(acc), *_s3(stored), *_s3(xq),
        qmin, qmax,
        HAS_DF=D_f is not None, HAS_DBF=delta_bias_f is not None,
        HAS_DB=D_b is not None, HAS_DBB=delta_bias_b is not None,
        HAS_Z=z is not None, Z_SILU=z_silu, SOFTPLUS=delta_softplus, QUANT=quant, HAS_SMOOTH=inv_smooth is not None,
        STORE_OUT=store_out, BC_ALIGN=bc_row_align(B_f.element_size(), *_s3(B_f)[::2], *_s3(C_f)[::2],
                                                   *_s3(B_b)[::2], *_s3(C_b)[::2]),
        BLOCK_D=block_d, BLOCK_N=block_n, EVEN_D=Dm % block_d == 0, EVEN_N=N == block_n,
        ROWS=rows, C_AFTER_B=N == block_n and _c_after_b(B_f, C_f, N) and _c_after_b(B_b, C_b, N),
        OPAQUE=not interpret_mode(),
        num_warps=num_warps, num_stages=2, maxnreg=BIDIRECTIONAL_MAXNREG,
    )
    return (out, xq) if quant else out


def _launch_ordered_scan(u, deltas, A, Bs, Cs, D=None, z=None, delta_bias=None, order=None, scatter=None,
                         delta_softplus=False, z_order=None):
    """:func:`ordered_scan`'s launch: one per direction, each program one sample and BLOCK_D channels
    walking that direction's order; direction k > 0 adds its output into the sum the launches before it
    wrote (ACCUMULATE). Reads every tensor in place (no gathered, flipped or transposed copies).

    Args:
        u: (Bsz, Dm, L) fp32 / fp16 / bf16, natural token order; z: the same shape, or None.
        deltas, Bs, Cs: K tensors each, (Bsz, Dm, L), (Bsz, N, L), (Bsz, N, L), natural token order.
        A: (K, Dm, N) fp32 (copied channel-major unless it is); D, delta_bias: (K, Dm) fp32 or None.
        order: (K, S) int32 / int64 token read at each step, -1 a padding token; scatter: (K, S) or None
            (= order), the token each step's output goes to, -1 dropped. The caller guarantees
            :func:`ptq4vm_fx.scan.check_order_maps` (the reference checks it).
        delta_softplus: bool.
        z_order: (K, S) int32 / int64 or None: z (Bsz, Dm, T) read through it (-1: z = 0) and an output of T
            tokens (scatter None: z_order), LocalVim's sequence-order scan.

    Returns:
        (Bsz, Dm, L or T) in u's dtype, stored token-major: the directions' outputs summed.
    """
    K = len(deltas)
    if not (isinstance(order, torch.Tensor) and order.dim() == 2 and order.shape[0] == K
            and order.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"order must be a ({K}, S) int32 / int64 tensor, got "
                         f"{getattr(order, 'dtype', type(order).__name__)} {tuple(getattr(order, 'shape', ()))}")
    if scatter is not None and (not isinstance(scatter, torch.Tensor) or scatter.shape != order.shape
                                or scatter.dtype not in (torch.int32, torch.int64)):
        raise ValueError(f"scatter must be an int32 / int64 tensor of order's shape {tuple(order.shape)}")
    if z_order is not None and (not isinstance(z_order, torch.Tensor) or z_order.shape != order.shape
                                or z_order.dtype not in (torch.int32, torch.int64) or z is None):
        raise ValueError(f"z_order must be an int32 / int64 tensor of order's shape {tuple(order.shape)} "
                         "and z a tensor")
    check_tensor("A", A, ndim=3, dtypes=(torch.float32,))
    if not (K >= 1 and len(Bs) == len(Cs) == K and A.shape[0] == K
            and all(t is None or t.dim() == 2 and t.shape[0] == K for t in (D, delta_bias))):
        raise ValueError(f"{K} deltas need {K} Bs, Cs and A / D / delta_bias rows, got {len(Bs)}, {len(Cs)}, "
                         f"{A.shape[0]}")
    _check_flag("delta_softplus", delta_softplus)
    for k in range(K):
        Bsz, Dm, L, N = _check_scan_args(f"direction {k} ", u, deltas[k], A[k], Bs[k], Cs[k],
                                         None if D is None else D[k], z if z_order is None else None,
                                         None if delta_bias is None else delta_bias[k])
    if z_order is not None:
        check_tensor("z", z, ndim=3, dtypes=FLOAT_DTYPES)
        if z.shape[:2] != (Bsz, Dm):
            raise ValueError(f"z must have shape ({Bsz}, {Dm}, T), got {tuple(z.shape)}")
        L = z.shape[2]
    check_devices(u=u, A=A, D=D, z=z, delta_bias=delta_bias, order=order, scatter=scatter, z_order=z_order,
                  **{f"{name}{k}": t[k] for name, t in (("delta", deltas), ("B", Bs), ("C", Cs)) for k in range(K)})
    out = token_major_empty(Bsz, Dm, L, u.dtype, u.device)
    if out.numel() == 0 or order.shape[1] == 0:
        return out.zero_()
    A = channel_major(A)
    order = order.to(torch.int32).contiguous()
    if z_order is not None:
        z_order = z_order.to(torch.int32).contiguous()
        scatter = z_order if scatter is None else scatter
    scatter = scatter.to(torch.int32).contiguous() if scatter is not None else None
    block_d, block_n, num_warps = _scan_config(Bsz, Dm, N)
    grid = (Bsz, triton.cdiv(Dm, block_d))
    for k in range(K):
        Dk, biask = vec(D[k]) if D is not None else None, vec(delta_bias[k]) if delta_bias is not None else None
        _ordered_scan_kernel[grid](
            u, deltas[k], A[k], Bs[k], Cs[k], Dk if Dk is not None else A, biask if biask is not None else A,
            z if z is not None else u, order[k], scatter[k] if scatter is not None else order[k],
            z_order[k] if z_order is not None else order[k], out,
            Dm, N, order.shape[1],
            *_s3(u), *_s3(deltas[k]), A.stride(1), A.stride(2), *_s3(Bs[k]), *_s3(Cs[k]), *_s3(z), *_s3(out),
            HAS_D=D is not None, HAS_Z=z is not None and z_order is None, HAS_DBIAS=delta_bias is not None,
            SOFTPLUS=delta_softplus, HAS_SCATTER=scatter is not None, ACCUMULATE=k > 0, Z_ORDER=z_order is not None,
            BC_ALIGN=bc_row_align(Bs[k].element_size(), Bs[k].stride(0), Bs[k].stride(2), Cs[k].stride(0),
                                  Cs[k].stride(2)),
            BLOCK_D=block_d, BLOCK_N=block_n, EVEN_D=Dm % block_d == 0, EVEN_N=N == block_n,
            num_warps=num_warps, num_stages=2,
        )
    return out


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       reverse=False):
    """Pure-PyTorch specification of :func:`selective_scan`."""
    A, D, delta_bias = _float(A), f32(D), f32(delta_bias)
    _check_scan_args("", u, delta, A, B, C, D, z, delta_bias)
    _check_flag("delta_softplus", delta_softplus)
    _check_flag("reverse", reverse)
    return _scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)


def _bidirectional_reference(u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f,
                             u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b,
                             z=None, delta_softplus=False,
                             inv_smooth=None, inv_scale=None, zero_point=None, bits=8, store_out=True, z_silu=False):
    """Pure-PyTorch specification of :func:`_launch_bidirectional_scan` (same arguments and result),
    on :func:`ptq4vm_fx.scan.selective_scan_ref` and :mod:`ptq4vm_fx.quant.integer`."""
    Bsz, Dm, L, _ = _check_scan_args("", u_f, delta_f, A_f, B_f, C_f, D_f, z, delta_bias_f)
    _check_scan_args("backward ", u_b, delta_b, A_b, B_b, C_b, D_b, z, delta_bias_b)
    _check_store_out(store_out, inv_scale is not None)
    _check_z_silu(z_silu, z)
    dtype = u_f.dtype
    out_f = _scan_reference(u_f, delta_f, A_f, B_f, C_f, D_f, z, delta_bias_f, delta_softplus, False, z_silu=z_silu)
    out_b = _scan_reference(u_b, delta_b, A_b, B_b, C_b, D_b, z, delta_bias_b, delta_softplus, True,
                            z_silu=z_silu).to(dtype)
    out = token_major_empty(Bsz, Dm, L, dtype, u_f.device).copy_((out_f + out_b) / 2)  # the kernel's layout
    if inv_scale is None:
        return out
    check_quant_params(inv_smooth, inv_scale, zero_point, bits, L, Dm)
    xq = integer.quantize_codes(out.transpose(1, 2), inv_smooth, inv_scale, zero_point, bits).to(torch.int8)
    return out if store_out else out.new_empty(0), xq.contiguous()


# --------------------------------------------------------------------------------------------
# The ops: bidirectional_scan, bidirectional_scan_quantize
# --------------------------------------------------------------------------------------------


def _bidirectional(launch, u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f, u_b, delta_b, A_b, B_b, C_b, D_b,
                   delta_bias_b, z, delta_softplus, z_silu, quant=None):
    """The op-level call of ``launch``; quant: None, or (inv_smooth, scale, zero_point, bits, store_out)."""
    quant_args = {}
    if quant is not None:
        inv_smooth, scale, zero_point, bits, store_out = quant
        inv_scale, zp, _ = inverse_token_params(scale, zero_point, u_f.shape[-1:], "bidirectional_scan_quantize")
        quant_args = {"inv_smooth": f32(inv_smooth), "inv_scale": inv_scale, "zero_point": zp, "bits": bits,
                      "store_out": store_out}
    return launch(u_f, delta_f, _float(A_f), B_f, C_f, f32(D_f), f32(delta_bias_f),
                  u_b, delta_b, _float(A_b), B_b, C_b, f32(D_b), f32(delta_bias_b),
                  z=z, delta_softplus=delta_softplus, z_silu=z_silu, **quant_args)


def bidirectional_scan(u_f: Tensor, delta_f: Tensor, A_f: Tensor, B_f: Tensor, C_f: Tensor, D_f: Optional[Tensor],
                       delta_bias_f: Optional[Tensor], u_b: Tensor, delta_b: Tensor, A_b: Tensor, B_b: Tensor,
                       C_b: Tensor, D_b: Optional[Tensor], delta_bias_b: Optional[Tensor], z: Optional[Tensor],
                       delta_softplus: bool, z_silu: bool = False) -> Tensor:
    """``(selective_scan(*_f, z, reverse=False) + selective_scan(*_b, z, reverse=True)) / 2`` in one kernel
    (:func:`_launch_bidirectional_scan`). u, delta, z: (batch, D, L); A: (D, N); B, C: (batch, N, L);
    D, delta_bias: (D,) or None; ``z_silu``: z holds silu(z) (the gate multiplies by it). Returns (batch, D, L)
    in ``u_f``'s dtype, stored token-major."""
    return _bidirectional(_launch_bidirectional_scan, u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f,
                          u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z, delta_softplus, z_silu)


def bidirectional_scan_ref(u_f: Tensor, delta_f: Tensor, A_f: Tensor, B_f: Tensor, C_f: Tensor,
                           D_f: Optional[Tensor], delta_bias_f: Optional[Tensor], u_b: Tensor, delta_b: Tensor,
                           A_b: Tensor, B_b: Tensor, C_b: Tensor, D_b: Optional[Tensor],
                           delta_bias_b: Optional[Tensor], z: Optional[Tensor], delta_softplus: bool,
                           z_silu: bool = False) -> Tensor:
    """Pure-PyTorch specification of :func:`bidirectional_scan`."""
    return _bidirectional(_bidirectional_reference, u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f,
                          u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z, delta_softplus, z_silu)


def bidirectional_scan_fake(u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f, u_b, delta_b, A_b, B_b, C_b, D_b,
                            delta_bias_b, z, delta_softplus, z_silu=False):
    return token_major_empty(*u_f.shape, u_f.dtype, u_f.device)


def bidirectional_scan_quantize(u_f: Tensor, delta_f: Tensor, A_f: Tensor, B_f: Tensor, C_f: Tensor,
                                D_f: Optional[Tensor], delta_bias_f: Optional[Tensor], u_b: Tensor, delta_b: Tensor,
                                A_b: Tensor, B_b: Tensor, C_b: Tensor, D_b: Optional[Tensor],
                                delta_bias_b: Optional[Tensor], z: Optional[Tensor], delta_softplus: bool,
                                inv_smooth: Optional[Tensor], scale: Tensor, zero_point: Tensor, bits: int,
                                store_out: bool = True, z_silu: bool = False) -> tuple[Tensor, Tensor]:
    """:func:`bidirectional_scan` with its output also quantized in the epilogue: returns
    (out (batch, D, L), xq (batch, L, D) int8 = quantize(out^T)); inv_smooth (D,) or None, scale /
    zero_point (L,). ``store_out`` False: out is not written and comes back empty (only xq is read)."""
    return _bidirectional(_launch_bidirectional_scan, u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f,
                          u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z, delta_softplus, z_silu,
                          (inv_smooth, scale, zero_point, bits, store_out))


def bidirectional_scan_quantize_ref(u_f: Tensor, delta_f: Tensor, A_f: Tensor, B_f: Tensor, C_f: Tensor,
                                    D_f: Optional[Tensor], delta_bias_f: Optional[Tensor], u_b: Tensor,
                                    delta_b: Tensor, A_b: Tensor, B_b: Tensor, C_b: Tensor, D_b: Optional[Tensor],
                                    delta_bias_b: Optional[Tensor], z: Optional[Tensor], delta_softplus: bool,
                                    inv_smooth: Optional[Tensor], scale: Tensor, zero_point: Tensor, bits: int,
                                    store_out: bool = True, z_silu: bool = False) -> tuple[Tensor, Tensor]:
    """Pure-PyTorch specification of :func:`bidirectional_scan_quantize`."""
    return _bidirectional(_bidirectional_reference, u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f,
                          u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z, delta_softplus, z_silu,
                          (inv_smooth, scale, zero_point, bits, store_out))


def bidirectional_scan_quantize_fake(u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f, u_b, delta_b, A_b, B_b, C_b,
                                     D_b, delta_bias_b, z, delta_softplus, inv_smooth, scale, zero_point, bits,
                                     store_out=True, z_silu=False):
    batch, d, length = u_f.shape
    out = token_major_empty(batch, d, length, u_f.dtype, u_f.device) if store_out else u_f.new_empty(0)
    return out, u_f.new_empty((batch, length, d), dtype=torch.int8)


def selective_scan_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    return token_major_empty(*u.shape, u.dtype, u.device)


# --------------------------------------------------------------------------------------------
# The op: ordered_scan (VMamba's cross scan, LocalMamba's directions)
# --------------------------------------------------------------------------------------------


def ordered_scan(u: Tensor, deltas: list[Tensor], A: Tensor, Bs: list[Tensor], Cs: list[Tensor], D: Optional[Tensor],
                 z: Optional[Tensor], delta_bias: Optional[Tensor], order: Tensor, scatter: Optional[Tensor],
                 delta_softplus: bool, z_order: Optional[Tensor] = None) -> Tensor:
    """K scans reading the tokens through their orders, summed (:func:`ptq4vm_fx.scan.ordered_scan_ref` has
    the semantics; :func:`_launch_ordered_scan` the launch). u, z: (batch, D, L); deltas[k]: (batch, D, L);
    Bs[k], Cs[k]: (batch, N, L); A: (K, D, N); D, delta_bias: (K, D) or None; order, scatter, z_order: (K, S)
    (with z_order, z is (batch, D, T)). Returns (batch, D, L or T) in u's dtype, stored token-major."""
    return _launch_ordered_scan(u, list(deltas), _float(A), list(Bs), list(Cs), f32(D), z, f32(delta_bias), order,
                                scatter, delta_softplus, z_order)


def ordered_scan_ref(u: Tensor, deltas: list[Tensor], A: Tensor, Bs: list[Tensor], Cs: list[Tensor],
                     D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor], order: Tensor,
                     scatter: Optional[Tensor], delta_softplus: bool, z_order: Optional[Tensor] = None) -> Tensor:
    """Pure-PyTorch specification of :func:`ordered_scan`."""
    return _ordered_scan_reference(u, list(deltas), _float(A), list(Bs), list(Cs), f32(D), z, f32(delta_bias),
                                   order, scatter, delta_softplus, z_order)


def ordered_scan_fake(u, deltas, A, Bs, Cs, D, z, delta_bias, order, scatter, delta_softplus, z_order=None):
    tokens = u.shape[2] if z_order is None else z.shape[2]
    return token_major_empty(u.shape[0], u.shape[1], tokens, u.dtype, u.device)
