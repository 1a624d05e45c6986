"""The selective scan for small batches: tokens split into segments scanned side by side.

At batch 1-8 the one-program-per-(sample, channel block) scan (``selective_scan.py``) has too few
programs to fill a GPU, and each walks all L tokens one after another: its time is L sequential
steps' latency. Here a program owns one sample, BLOCK_D channels and SEGMENTS segments of
T = ceil(L / SEGMENTS) consecutive tokens (in scan order: ``reverse`` scans t = L-1 .. 0), its state an
(N, SEGMENTS, BLOCK_D) register tile (states outermost: the emitting step compiles to 213 SASS instructions
on sm_90 where (SEGMENTS, N, BLOCK_D) gave 319; scripts/kernel_codegen.py), and makes three passes:

1. each segment scans its tokens from a zero state: its end state E_s; and its decay over the
   segment, P_s = exp(A * sum of the segment's dt) (per state and channel);
2. the segments' true start states: with the combine (a1, x1), (a2, x2) -> (a1 a2, a2 x1 + x2) (two
   affine maps h -> a h + x applied in order), ``tl.associative_scan`` over the segment axis gives the
   state at each segment's end from h = 0 at the first token; segment s starts from segment s-1's
   (shifted through a small scratch buffer, SEGMENTS x N x BLOCK_D fp32 a program);
3. each segment rescans its tokens from its true start state and emits y_t.

Every token step costs the same as the one-pass scan's (loads, softplus, one exp2 per state); passes 1
and 3 make it twice, in L / SEGMENTS sequential steps instead of L. The math per token is the reference
recurrence (``ptq4vm_fx.scan``); a segment's start state differs from the sequential scan's by fp32
rounding only (exp of a sum for the product of exps, a tree of products for their chain). Padding steps
past the last token have dt = 0 (decay 1, no input): they change no state.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import _round_to, _silu, _softplus, interpret_mode
from .selective_scan import _branch_constants, _emit, _lanes, _s3

# the largest batch the op's CUDA implementation hands to this kernel (selective_scan.selective_scan)
MAX_BATCH = 8


@triton.jit
def _combine(a1, x1, a2, x2):
    """Two affine state maps h -> a1 h + x1, then h -> a2 h + x2, as one."""
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _segment_inputs(i, L, b, offs_d, mask_d, offs_n, mask_n, dbias,
                    u_ptr, s_ub, s_ud, s_ul, dt_ptr, s_tb, s_td, s_tl, B_ptr, s_bb, s_bn, s_bl,
                    HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr):
    """Step ``i`` (SEGMENTS,) of each segment, in scan order: (token (SEGMENTS,), in-range mask, u and dt
    (SEGMENTS, BLOCK_D) fp32, dt after bias and softplus and 0 past the last token, B (BLOCK_N, SEGMENTS) fp32)."""
    valid = i < L
    if REVERSE:
        tok = L - 1 - i
    else:
        tok = i
    tok = tl.where(valid, tok, 0)
    m = valid[:, None] & mask_d[None, :]
    u = tl.load(u_ptr + b * s_ub + offs_d[None, :] * s_ud + tok[:, None] * s_ul, mask=m, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + b * s_tb + offs_d[None, :] * s_td + tok[:, None] * s_tl, mask=m, other=0.0).to(tl.float32)
    if HAS_DBIAS:
        dt = dt + dbias[None, :]
    if SOFTPLUS:
        dt = _softplus(dt)
    dt = tl.where(m, dt, 0.0)
    Bt = tl.load(B_ptr + b * s_bb + offs_n[:, None] * s_bn + tok[None, :] * s_bl,
                 mask=mask_n[:, None] & valid[None, :], other=0.0).to(tl.float32)
    return tok, valid, u, dt, Bt


@triton.jit(do_not_specialize_on_alignment=["A_ptr"])  # A: selective_scan's module docstring
def _segmented_scan_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dbias_ptr, z_ptr, out_ptr, carry_ptr,
    Dm, N, L, T,
    s_ub, s_ud, s_ul,
    s_tb, s_td, s_tl,
    s_ad, s_an,
    s_bb, s_bn, s_bl,
    s_cb, s_cn, s_cl,
    s_zb, s_zd, s_zl,
    s_ob, s_od, s_ol,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr, SEGMENTS: tl.constexpr, Z_SILU: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr, EVEN_N: tl.constexpr,
):
    """The three passes of the module docstring for sample program_id(0), channel block program_id(1).
    The state tile is (BLOCK_N, SEGMENTS, BLOCK_D); ``carry``: (programs, BLOCK_N, SEGMENTS, BLOCK_D) fp32 scratch.
    With Z_SILU z holds silu(z) (in_proj's epilogue applied it): the gate multiplies by it."""
    b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d, mask_d = _lanes(pid_d, BLOCK_D, Dm, EVEN_D)
    offs_n, mask_n = _lanes(0, BLOCK_N, N, EVEN_N)
    A2, Dv, dbias = _branch_constants(A_ptr, s_ad, s_an, D_ptr, dbias_ptr, offs_d, mask_d, offs_n, mask_n,
                                      HAS_D, HAS_DBIAS, BLOCK_D)
    seg = tl.arange(0, SEGMENTS)
    # 1. each segment from a zero state: its end state and the sum of its dt
    h = tl.zeros((BLOCK_N, SEGMENTS, BLOCK_D), tl.float32)
    dt_sum = tl.zeros((SEGMENTS, BLOCK_D), tl.float32)
    for t in range(T):
        _, _, u, dt, Bt = _segment_inputs(seg * T + t, L, b, offs_d, mask_d, offs_n, mask_n, dbias,
                                          u_ptr, s_ub, s_ud, s_ul, dt_ptr, s_tb, s_td, s_tl, B_ptr, s_bb, s_bn, s_bl,
                                          HAS_DBIAS, SOFTPLUS, REVERSE)
        h = tl.exp2(dt[None, :, :] * A2[:, None, :]) * h + Bt[:, :, None] * (dt * u)[None, :, :]
        dt_sum += dt
    # 2. the state at each segment's end from a zero state at the first token; segment s starts from s - 1's
    decay = tl.exp2(dt_sum[None, :, :] * A2[:, None, :])
    _, h = tl.associative_scan((decay, h), 1, _combine)
    carry = (carry_ptr + (b * tl.num_programs(1) + pid_d) * (BLOCK_N * SEGMENTS * BLOCK_D)
             + offs_n[:, None, None] * (SEGMENTS * BLOCK_D) + tl.arange(0, BLOCK_D)[None, None, :])
    tl.store(carry + seg[None, :, None] * BLOCK_D, h)
    tl.debug_barrier()
    h = tl.load(carry + (seg[None, :, None] - 1) * BLOCK_D, mask=(seg > 0)[None, :, None], other=0.0)
    # 3. each segment again, from its start state, emitting y
    dtype = out_ptr.dtype.element_ty
    for t in range(T):
        tok, valid, u, dt, Bt = _segment_inputs(seg * T + t, L, b, offs_d, mask_d, offs_n, mask_n, dbias,
                                                u_ptr, s_ub, s_ud, s_ul, dt_ptr, s_tb, s_td, s_tl,
                                                B_ptr, s_bb, s_bn, s_bl, HAS_DBIAS, SOFTPLUS, REVERSE)
        Ct = tl.load(C_ptr + b * s_cb + offs_n[:, None] * s_cn + tok[None, :] * s_cl,
                     mask=mask_n[:, None] & valid[None, :], other=0.0).to(tl.float32)
        h = tl.exp2(dt[None, :, :] * A2[:, None, :]) * h + Bt[:, :, None] * (dt * u)[None, :, :]
        y = tl.sum(h * Ct[:, :, None], axis=0)
        m = valid[:, None] & mask_d[None, :]
        if HAS_D:
            y = y + Dv[None, :] * u
        if HAS_Z:
            gate = tl.load(z_ptr + b * s_zb + offs_d[None, :] * s_zd + tok[:, None] * s_zl, mask=m,
                           other=0.0).to(tl.float32)
            if not Z_SILU:
                gate = _silu(gate)
            y = y * gate
        tl.store(out_ptr + b * s_ob + offs_d[None, :] * s_od + tok[:, None] * s_ol,
                 _round_to(y, dtype).to(dtype), mask=m)


@triton.jit
def _average_kernel(yf_ptr, yb_ptr, out_ptr, q_ptr, inv_smooth_ptr, inv_scale_ptr, zp_ptr, Dm, L,
                    s_fb, s_fd, s_fl, s_bb, s_bd, s_bl, s_ob, s_od, s_ol, s_qb, s_ql, s_qd, qmin, qmax,
                    QUANT: tl.constexpr, HAS_SMOOTH: tl.constexpr, STORE_OUT: tl.constexpr,
                    BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr):
    """Token program_id(0) = b * L + t, channel block program_id(1): (y_f + y_b) / 2 of the two directions'
    outputs (each already rounded to out's dtype), rounded as the bidirectional kernel rounds its sum and
    half, stored and / or quantized as its epilogue does (selective_scan._emit)."""
    row = tl.program_id(0)
    b = (row // L).to(tl.int64)
    t = row % L
    offs_d, mask_d = _lanes(tl.program_id(1), BLOCK_D, Dm, EVEN_D)
    if HAS_SMOOTH:
        inv_smooth = tl.load(inv_smooth_ptr + offs_d, mask=mask_d, other=0.0)
    else:
        inv_smooth = tl.full((BLOCK_D,), 1.0, tl.float32)
    yf = tl.load(yf_ptr + b * s_fb + offs_d * s_fd + t * s_fl, mask=mask_d, other=0.0).to(tl.float32)
    yb = tl.load(yb_ptr + b * s_bb + offs_d * s_bd + t * s_bl, mask=mask_d, other=0.0).to(tl.float32)
    _emit(_round_to(yb + yf, out_ptr.dtype.element_ty) * 0.5, t, b, offs_d, mask_d, out_ptr, s_ob, s_od, s_ol,
          q_ptr, s_qb, s_ql, s_qd, inv_smooth, inv_scale_ptr, zp_ptr, qmin, qmax, QUANT, STORE_OUT)


# --------------------------------------------------------------------------------------------
# Launch configuration
# --------------------------------------------------------------------------------------------


def use_segmented(batch: int) -> bool:
    """Whether the scan op's CUDA implementation runs this kernel: batches up to :data:`MAX_BATCH` on a GPU.
    Under the Triton interpreter (whose cost is per program, not latency) the one-pass kernel stays; tests
    patch this function to run the segmented one."""
    return batch <= MAX_BATCH and not interpret_mode()


def segment_config(batch: int, Dm: int, N: int, L: int) -> tuple[int, int, int, int]:
    """(BLOCK_D, SEGMENTS, BLOCK_N, num_warps): 16 segments of 8 channels (Vim-S at batch 1: 96 programs of
    4 warps, 13 tokens a segment at L = 197); the interpreter: 4 segments of the 32-channel block. A first
    guess, to be swept on a GPU (benchmarks/test_kernels.py times it)."""
    block_n = triton.next_power_of_2(N)
    if interpret_mode():
        return 32, 4, block_n, 1
    return 8, 16, block_n, 4


# --------------------------------------------------------------------------------------------
# The launch (the op's CUDA implementation, selective_scan.selective_scan, calls it at small batches)
# --------------------------------------------------------------------------------------------


def launch_segmented_scan(out, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, z_silu=False):
    """Fill ``out`` with :func:`ptq4vm_fx.kernels.selective_scan.selective_scan`'s result by segments (module
    docstring); returns it. Called by that function, which has checked the arguments and prepared them as its
    own kernel takes them: ``out`` (Bsz, Dm, L) token-major in u's dtype, not empty; A (Dm, N) fp32
    channel-major; D, delta_bias (Dm,) contiguous fp32 or None; u, delta, z, B, C any strides; ``z_silu``: z holds
    silu(z)."""
    (Bsz, Dm, L), N = u.shape, A.shape[1]
    block_d, segments, block_n, num_warps = segment_config(Bsz, Dm, N, L)
    grid = (Bsz, triton.cdiv(Dm, block_d))
    carry = torch.empty((grid[0] * grid[1], block_n, segments, block_d), dtype=torch.float32, device=u.device)
    _segmented_scan_kernel[grid](
        u, delta, A, B, C,
        D if D is not None else A, delta_bias if delta_bias is not None else A,
        z if z is not None else u, out, carry,
        Dm, N, L, triton.cdiv(L, segments),
        *_s3(u), *_s3(delta), A.stride(0), A.stride(1), *_s3(B), *_s3(C), *_s3(z), *_s3(out),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DBIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        REVERSE=reverse, SEGMENTS=segments, Z_SILU=z_silu,
        BLOCK_D=block_d, BLOCK_N=block_n, EVEN_D=Dm % block_d == 0, EVEN_N=N == block_n,
        num_warps=num_warps, num_stages=1,
    )
    return out


def launch_segmented_bidirectional(out, xq, acc, forward, backward, z, delta_softplus, inv_smooth, inv_scale,
                                   zero_point, qmin, qmax, z_silu=False):
    """:func:`ptq4vm_fx.kernels.selective_scan._launch_bidirectional_scan`'s result at small batches: each
    direction by segments (``acc`` takes the backward one's output, a new buffer the forward one's), then
    one program per token averages, stores ``out`` (unless it is ``acc``: store_out off) and quantizes into
    ``xq`` (``inv_scale`` None: no quantization). Called by that function with its prepared arguments:
    forward / backward = (u, delta, A channel-major fp32, B, C, D, delta_bias); out, acc (Bsz, Dm, L)
    token-major in u's dtype; xq (Bsz, L, Dm) int8 or None; ``z_silu``: z holds silu(z)."""
    y_f = torch.empty_like(acc)
    u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f = forward
    u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b = backward
    launch_segmented_scan(y_f, u_f, delta_f, A_f, B_f, C_f, D_f, z, delta_bias_f, delta_softplus, False, z_silu)
    launch_segmented_scan(acc, u_b, delta_b, A_b, B_b, C_b, D_b, z, delta_bias_b, delta_softplus, True, z_silu)
    (Bsz, Dm, L), quant = acc.shape, inv_scale is not None
    block_d = min(triton.next_power_of_2(Dm), 256)
    _average_kernel[(Bsz * L, triton.cdiv(Dm, block_d))](
        y_f, acc, out, xq if quant else acc, inv_smooth if inv_smooth is not None else y_f,
        inv_scale if quant else y_f, zero_point if quant else y_f, Dm, L,
        *_s3(y_f), *_s3(acc), *_s3(out), *(xq.stride() if quant else (0, 0, 0)), qmin, qmax,
        QUANT=quant, HAS_SMOOTH=inv_smooth is not None, STORE_OUT=out is not acc,
        BLOCK_D=block_d, EVEN_D=Dm % block_d == 0, num_warps=4,
    )
