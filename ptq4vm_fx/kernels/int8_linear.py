"""INT8 x INT8 -> INT32 GEMM with the static per-token / per-channel dequantization epilogue.

    acc[m, n] = sum_k xq[m, k] * wq[n, k]                                   (int32, exact)
    y[m, n]   = float32(acc[m, n] - zp[t] * w_colsum[n]) * x_scale[t] * w_scale[n] + bias[n]

with t = m % tokens (rows of the activation matrix are (sample, token) pairs, token-minor).
The zero-point correction is done in int32 before the conversion; the float part is evaluated
in fp32 in the order written (the kernel is compiled without FMA contraction, so on a GPU the
result is the same fp32 value as the reference's) and cast to ``out_dtype`` at the store.

Optionally the epilogue also quantizes a range of output columns [q_start, q_start + q_cols) as
stored (after the cast) with static per-token parameters (``_common``'s contract): the input of
the next quantized linear when it reads a column slice of this output (Vim's dt_proj reads the
first dt_rank columns of x_proj's), so no separate pass re-reads them.

Or the epilogue applies the scan's delta activation to the value as rounded to ``out_dtype``,
``softplus(y + delta_bias)`` (the scan's own :func:`~._common._softplus`), and stores that: dt_proj's
output as the scan reads it with ``delta_softplus=False`` (``int8_linear_softplus``).

Or the epilogue applies the scan's gate activation to the columns [silu_start, N) as rounded to
``out_dtype``, ``silu(y)`` (the scan's own :func:`~._common._silu`), and stores that: in_proj's z columns
as the bidirectional scan gates with them, read with ``z_silu=True`` (``int8_linear_silu``).

The autotuner also tries persistent launches (a program per SM walks the output tiles in one
flattened, software-pipelined loop, so a tile's epilogue overlaps the next tile's loads): at Vim's
K a tile has only 2 to 12 K steps, and its epilogue is a large share of its time.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from ..errors import InputError
from ..quant import integer
from ._common import (
    _quantize_values,
    _round_to,
    _silu,
    _softplus,
    check_devices,
    check_int,
    check_quant_params,
    check_tensor,
    f32,
    interpret_mode,
    inverse_token_params,
    qrange,
    token_params,
    vec,
)


@triton.jit
def _tile_coords(tile, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of output tile ``tile`` in grouped ("super-row") order: consecutive tiles reuse
    the same W panels in L2."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (tile // num_pid_in_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((tile % num_pid_in_group) % group_size_m)
    pid_n = (tile % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _tile_accumulate(tile, xq_ptr, wq_ptr, M, N, K, stride_xm, stride_xk, stride_wn, stride_wk,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """The int32 accumulator (BLOCK_M, BLOCK_N) of output tile ``tile``: sum over K of xq x wq^T."""
    pid_m, pid_n = _tile_coords(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_k = tl.arange(0, BLOCK_K)
    # Rows / columns past the edge wrap around (their results are masked at the store), so the
    # main-loop loads only need the K mask.
    rm = tl.max_contiguous(tl.multiple_of((pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M, BLOCK_M), BLOCK_M)
    rn = tl.max_contiguous(tl.multiple_of((pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N, BLOCK_N), BLOCK_N)
    x_ptrs = xq_ptr + rm.to(tl.int64)[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = wq_ptr + rn.to(tl.int64)[None, :] * stride_wn + offs_k[:, None] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for kb in range(tl.cdiv(K, BLOCK_K)):
        k_left = K - kb * BLOCK_K
        a = tl.load(x_ptrs, mask=offs_k[None, :] < k_left, other=0)
        b = tl.load(w_ptrs, mask=offs_k[:, None] < k_left, other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    return acc


@triton.jit
def _tile_epilogue(acc, tile, colsum_ptr, w_scale_ptr, x_scale_ptr, zp_ptr, bias_ptr, dbias_ptr, y_ptr,
                   q_ptr, inv_smooth_ptr, inv_scale_ptr, qzp_ptr, M, N, L, q_start, q_cols, silu_start,
                   stride_ym, stride_yn, stride_qm, qmin, qmax,
                   HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_DBIAS: tl.constexpr, SILU: tl.constexpr,
                   QUANT: tl.constexpr, HAS_SMOOTH: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Dequantize output tile ``tile``'s accumulator (int32 zero-point correction, then fp32 scales
    and bias), with SOFTPLUS take softplus(y + delta_bias) of the value rounded to y's dtype, with SILU
    silu of that value in the columns [silu_start, N), store it in y's dtype and, with QUANT, quantize its
    columns in [q_start, q_start + q_cols)."""
    pid_m, pid_n = _tile_coords(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    tok = offs_m % L
    zp = tl.load(zp_ptr + tok, mask=mask_m, other=0)
    xs = tl.load(x_scale_ptr + tok, mask=mask_m, other=0.0)
    colsum = tl.load(colsum_ptr + offs_n, mask=mask_n, other=0)
    ws = tl.load(w_scale_ptr + offs_n, mask=mask_n, other=0.0)
    acc = acc - zp[:, None] * colsum[None, :]
    y = acc.to(tl.float32) * xs[:, None]
    y = y * ws[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0)
        y = y + bias[None, :]

    rows = offs_m.to(tl.int64)[:, None]
    y_out = _round_to(y, y_ptr.dtype.element_ty)  # fp32 holding the stored value
    if SOFTPLUS:  # the scan's delta as it computes it from this output (kernels/selective_scan.py)
        if HAS_DBIAS:
            y_out = y_out + tl.load(dbias_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
        y_out = _round_to(_softplus(y_out), y_ptr.dtype.element_ty)
    if SILU:  # the scan's gate as it computes it from this output's z columns (kernels/selective_scan.py)
        y_out = tl.where((offs_n >= silu_start)[None, :], _round_to(_silu(y_out), y_ptr.dtype.element_ty), y_out)
    tl.store(y_ptr + rows * stride_ym + offs_n[None, :] * stride_yn, y_out.to(y_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])
    if QUANT:  # the columns [q_start, q_start + q_cols) of y as stored, quantized per token
        q_col = offs_n - q_start
        mask_q = (q_col >= 0) & (q_col < q_cols)
        if HAS_SMOOTH:
            inv_smooth = tl.load(inv_smooth_ptr + q_col, mask=mask_q, other=0.0)
        else:
            inv_smooth = tl.full((BLOCK_N,), 1.0, tl.float32)
        inv_scale = tl.load(inv_scale_ptr + tok, mask=mask_m, other=0.0)
        qzp = tl.load(qzp_ptr + tok, mask=mask_m, other=0)
        q = _quantize_values(y_out, inv_smooth[None, :], inv_scale[:, None], qzp[:, None], qmin, qmax)
        tl.store(q_ptr + rows * stride_qm + q_col[None, :], q, mask=mask_m[:, None] & mask_q[None, :])


@triton.jit
def _int8_linear_kernel(
    xq_ptr, wq_ptr, colsum_ptr, w_scale_ptr, x_scale_ptr, zp_ptr, bias_ptr, dbias_ptr, y_ptr,
    q_ptr, inv_smooth_ptr, inv_scale_ptr, qzp_ptr,
    M, N, K, L, q_start, q_cols, silu_start, M_BUCKET, NUM_PROGRAMS,
    stride_xm, stride_xk,
    stride_wn, stride_wk,
    stride_ym, stride_yn,
    stride_qm,
    qmin, qmax,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_DBIAS: tl.constexpr, SILU: tl.constexpr,
    QUANT: tl.constexpr, HAS_SMOOTH: tl.constexpr, PERSISTENT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """One output tile per program, or with PERSISTENT, program p walks tiles p, p + NUM_PROGRAMS, ...
    in one flattened loop, so the software pipeline loads the next tile's operands during this
    tile's epilogue. The epilogue's tile is counted apart from the main loop's (the pipeliner
    must not carry one value from the prologue to the epilogue)."""
    if PERSISTENT:
        tile_out = tl.program_id(0) - NUM_PROGRAMS
        for tile in tl.range(tl.program_id(0), tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N), NUM_PROGRAMS,
                             flatten=True):
            acc = _tile_accumulate(tile, xq_ptr, wq_ptr, M, N, K, stride_xm, stride_xk, stride_wn, stride_wk,
                                   BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
            tile_out += NUM_PROGRAMS
            _tile_epilogue(acc, tile_out, colsum_ptr, w_scale_ptr, x_scale_ptr, zp_ptr, bias_ptr, dbias_ptr, y_ptr,
                           q_ptr, inv_smooth_ptr, inv_scale_ptr, qzp_ptr, M, N, L, q_start, q_cols,
                           silu_start, stride_ym, stride_yn, stride_qm, qmin, qmax,
                           HAS_BIAS, SOFTPLUS, HAS_DBIAS, SILU, QUANT, HAS_SMOOTH, BLOCK_M, BLOCK_N, GROUP_M)
    else:
        acc = _tile_accumulate(tl.program_id(0), xq_ptr, wq_ptr, M, N, K, stride_xm, stride_xk, stride_wn,
                               stride_wk, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
        _tile_epilogue(acc, tl.program_id(0), colsum_ptr, w_scale_ptr, x_scale_ptr, zp_ptr, bias_ptr, dbias_ptr,
                       y_ptr, q_ptr, inv_smooth_ptr, inv_scale_ptr, qzp_ptr, M, N, L, q_start, q_cols,
                       silu_start, stride_ym, stride_yn, stride_qm, qmin, qmax,
                       HAS_BIAS, SOFTPLUS, HAS_DBIAS, SILU, QUANT, HAS_SMOOTH, BLOCK_M, BLOCK_N, GROUP_M)


# --------------------------------------------------------------------------------------------
# Launch configuration
# --------------------------------------------------------------------------------------------


def _tiles(block_m, block_n, block_k, stages, warps, persistent=False, group_m=8) -> triton.Config:
    """A launch configuration of :func:`_int8_linear_kernel`."""
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": group_m,
                          "PERSISTENT": persistent}, num_stages=stages, num_warps=warps)


_GPU_CONFIGS = [
    _tiles(128, 256, 128, 3, 8), _tiles(256, 128, 128, 3, 8), _tiles(128, 128, 32, 2, 4), _tiles(64, 128, 128, 4, 4),
    _tiles(128, 128, 64, 4, 8), _tiles(128, 128, 128, 3, 8), _tiles(128, 64, 64, 4, 4), _tiles(64, 128, 64, 4, 4),
    _tiles(64, 64, 128, 3, 4), _tiles(64, 64, 64, 4, 4),
    # persistent: a program per SM walks tiles; the next tile's loads overlap this tile's epilogue,
    # which at Vim's K (192..1536: 2 to 12 K steps a tile) is a large share of each tile's time
    _tiles(128, 256, 128, 3, 8, True), _tiles(128, 128, 128, 3, 8, True), _tiles(128, 128, 64, 4, 8, True),
    _tiles(64, 128, 64, 4, 4, True),
]

# One small fixed configuration for the CPU interpreter (autotuning there would only cost time).
_INTERPRET_CONFIG = _tiles(16, 16, 32, 1, 4, group_m=4)

# Tuned once per (M_BUCKET, N, K): rows bucketed by powers of two, so a new batch size reuses the
# tiles of its bucket instead of benchmarking every configuration again (M_BUCKET is the kernel's
# otherwise unused tuning key).
_int8_linear_kernel_tuned = triton.autotune(configs=_GPU_CONFIGS, key=["M_BUCKET", "N", "K"])(_int8_linear_kernel)


def fixed_config(M: int, N: int, K: int) -> triton.Config:
    """Tiles without tuning, for Vim's shapes: the autotuner's picks on an H100 over Vim-T/S/B's
    linears at batch 32 and 128 (benchmarks/results/tune-nvidia-h100-80gb-hbm3-2026-11-23.json)."""
    if K <= 64:  # dt_proj (K = dt_rank, 12..48)
        block_n, warps = (128, 8) if N < 1536 else (64, 4)
        return _tiles(128, block_n, 64, 4, warps)
    if N <= 128:  # x_proj (N = dt_rank + 2 * d_state)
        return _tiles(64, 64, 128, 3, 4)
    if M * N >= 1 << 24 and K >= 768:  # Vim-B's in_proj / out_proj at large batches
        return _tiles(128, 256, 128, 3, 8)
    return _tiles(64, 128, 64, 4, 4)


def persistent_programs(device: torch.device) -> int:
    """Programs of a persistent launch: one per SM of ``device``'s GPU; 3 under the interpreter, so
    that small problems give each program several tiles."""
    if interpret_mode() or device.type != "cuda":
        return 3
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------------------------
# Public op
# --------------------------------------------------------------------------------------------


def _check_args(xq, wq, w_colsum, w_scale, x_scale, x_zero_point, bias, tokens, out_dtype):
    check_tensor("xq", xq, ndim=2, dtypes=(torch.int8,))
    check_tensor("wq", wq, ndim=2, dtypes=(torch.int8,))
    M, K = xq.shape
    N, Kw = wq.shape
    if Kw != K:
        raise ValueError(f"wq must have shape (N, {K}) to match xq (M, K)={tuple(xq.shape)}, "
                         f"got {tuple(wq.shape)}")
    check_int("tokens", tokens, 1)
    check_tensor("w_colsum", w_colsum, shape=(N,), dtypes=(torch.int32,))
    check_tensor("w_scale", w_scale, shape=(N,), dtypes=(torch.float32,))
    check_tensor("x_scale", x_scale, shape=(tokens,), dtypes=(torch.float32,))
    check_tensor("x_zero_point", x_zero_point, shape=(tokens,), dtypes=(torch.int32,))
    check_tensor("bias", bias, shape=(N,), dtypes=(torch.float32,), allow_none=True)
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of float32, float16, bfloat16, got {out_dtype}")
    return M, N, K


def _check_quant_columns(q_start, q_cols, N, inv_smooth, inv_scale, zero_point, bits, tokens):
    """Validate the optional output quantization; returns q_cols (all columns from q_start when None)."""
    check_int("q_start", q_start, 0, N - 1)
    q_cols = N - q_start if q_cols is None else q_cols
    check_int("q_cols", q_cols, 1, N - q_start)
    check_quant_params(inv_smooth, inv_scale, zero_point, bits, tokens, q_cols)
    return q_cols


def _check_activation(softplus, delta_bias, silu_start, quant, N):
    """Validate the optional activation epilogues: softplus (all columns) or SiLU (columns from silu_start),
    neither combined with the other or with the output quantization."""
    if not isinstance(softplus, bool):
        raise ValueError(f"softplus must be a bool, got {type(softplus).__name__}")  # noqa: TRY004 (API: ValueError)
    if delta_bias is not None and not softplus:
        raise ValueError("delta_bias is added before the softplus: pass softplus=True with it")
    if silu_start is not None:
        check_int("silu_start", silu_start, 0, N - 1)
    if sum((softplus, silu_start is not None, quant)) > 1:
        raise ValueError("the softplus epilogue, the SiLU epilogue and the output quantization are not combined")
    check_tensor("delta_bias", delta_bias, shape=(N,), dtypes=(torch.float32,), allow_none=True)


def _launch_int8_linear(xq, wq, w_colsum, w_scale, x_scale, x_zero_point, bias, tokens, out_dtype=torch.float32, *,
                        inv_smooth=None, inv_scale=None, zero_point=None, bits=8, q_start=0, q_cols=None,
                        softplus=False, delta_bias=None, silu_start=None, autotune=True):
    """Quantized linear layer ``y = dequant(xq) @ dequant(wq).T + bias`` on integer tensor cores.

    Args:
        xq: (M, K) int8 activation codes, M = batch * tokens, row m belongs to token m % tokens.
        wq: (N, K) int8 weight codes, one row per output channel (symmetric, per-channel).
        w_colsum: (N,) int32, ``wq.sum(1)`` (used to fold the activation zero point).
        w_scale: (N,) fp32 per-output-channel weight scale.
        x_scale: (tokens,) fp32 per-token activation scale.
        x_zero_point: (tokens,) int32 per-token activation zero point (signed range).
        bias: (N,) fp32 or None.
        tokens: int, number of tokens per sample (L).
        out_dtype: torch.float32 / float16 / bfloat16 (math is fp32, cast at the store).
        inv_smooth, inv_scale, zero_point, bits, q_start, q_cols: optional fused static quantization
            of the output columns [q_start, q_start + q_cols) (``inv_scale`` given turns it on;
            q_cols None: up to N): inv_smooth (q_cols,) fp32 or None, inv_scale (tokens,) fp32,
            zero_point (tokens,) int32, bits in [2, 8].
        softplus, delta_bias: the epilogue stores ``softplus(y + delta_bias)`` (y as rounded to
            ``out_dtype``, then the result rounded to it; delta_bias (N,) fp32 or None), with the
            scan kernels' softplus; not with the output quantization.
        silu_start: int or None: the epilogue stores ``silu(y)`` in the columns [silu_start, N) (y as rounded
            to ``out_dtype``, then the result rounded to it), with the scan kernels' SiLU; not with the
            softplus or the output quantization.
        autotune: True: on a GPU the tiles (and whether a program per SM walks them) are tuned on
            the first call for each (M bucket, N, K) (a one-time cost of benchmarking every
            configuration); False: :func:`fixed_config`'s tiles, also under the interpreter (where
            True means a small fixed tile).

    Returns:
        y: (M, N) tensor of ``out_dtype`` on the inputs' device, or ``(y, yq)`` with yq (M, q_cols)
        int8, the quantization of ``y[:, q_start:q_start + q_cols]`` as stored.
    """
    M, N, K = _check_args(xq, wq, w_colsum, w_scale, x_scale, x_zero_point, bias, tokens, out_dtype)
    if not isinstance(autotune, bool):
        raise ValueError(f"autotune must be a bool, got {type(autotune).__name__}")  # noqa: TRY004 (API: ValueError)
    quant = inv_scale is not None
    if quant:
        q_cols = _check_quant_columns(q_start, q_cols, N, inv_smooth, inv_scale, zero_point, bits, tokens)
    elif inv_smooth is not None or zero_point is not None:
        raise ValueError("inv_smooth / zero_point given without inv_scale: pass inv_scale to quantize the output")
    _check_activation(softplus, delta_bias, silu_start, quant, N)
    check_devices(xq=xq, wq=wq, w_colsum=w_colsum, w_scale=w_scale, x_scale=x_scale,
                  x_zero_point=x_zero_point, bias=bias, inv_smooth=inv_smooth, inv_scale=inv_scale,
                  zero_point=zero_point, delta_bias=delta_bias)
    if K == 0:  # no tile to accumulate: y is the bias
        return _reference_2d(xq, wq, w_colsum, w_scale, x_scale, x_zero_point, bias, tokens, out_dtype,
                             (q_start, q_cols, inv_smooth, inv_scale, zero_point, bits) if quant else None,
                             softplus, delta_bias, silu_start)
    y = torch.empty((M, N), dtype=out_dtype, device=xq.device)
    yq = torch.empty((M, q_cols), dtype=torch.int8, device=xq.device) if quant else None
    if M == 0 or N == 0:
        return (y, yq) if quant else y

    w_colsum, w_scale = w_colsum.contiguous(), w_scale.contiguous()
    x_scale, x_zero_point = x_scale.contiguous(), x_zero_point.contiguous()
    dummy = w_scale  # pointer for absent tensors, never read
    bias, inv_smooth, inv_scale, zero_point = vec(bias), vec(inv_smooth), vec(inv_scale), vec(zero_point)
    delta_bias = vec(delta_bias)
    qmin, qmax = qrange(bits) if quant else (0.0, 0.0)
    programs = persistent_programs(xq.device)
    args = (xq, wq, w_colsum, w_scale, x_scale, x_zero_point, bias if bias is not None else dummy,
            delta_bias if delta_bias is not None else dummy, y,
            yq if quant else y, inv_smooth if inv_smooth is not None else dummy,
            inv_scale if quant else dummy, zero_point if quant else dummy,
            M, N, K, tokens, q_start if quant else 0, q_cols if quant else 0, silu_start or 0,
            triton.next_power_of_2(M), programs,
            xq.stride(0), xq.stride(1), wq.stride(0), wq.stride(1), y.stride(0), y.stride(1),
            yq.stride(0) if quant else 0, qmin, qmax)
    flags = {"HAS_BIAS": bias is not None, "SOFTPLUS": softplus, "HAS_DBIAS": delta_bias is not None,
             "SILU": silu_start is not None, "QUANT": quant, "HAS_SMOOTH": inv_smooth is not None}

    def grid(meta):
        tiles = triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"])
        return (min(tiles, programs),) if meta["PERSISTENT"] else (tiles,)

    if autotune and not interpret_mode():
        _int8_linear_kernel_tuned[grid](*args, **flags, enable_fp_fusion=False)
    else:  # fixed tiles
        cfg = fixed_config(M, N, K) if not autotune else _INTERPRET_CONFIG
        _int8_linear_kernel[grid](*args, **flags, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                                  enable_fp_fusion=False)
    return (y, yq) if quant else y


# --------------------------------------------------------------------------------------------
# The ops: int8_linear, int8_linear_softplus, int8_linear_silu, int8_linear_quantize
# --------------------------------------------------------------------------------------------


def _int8_linear(launch, xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias, out_dtype, autotune, quant=None,
                 softplus=None, silu_start=None):
    """The op-level call of ``launch`` (the kernel's launcher or :func:`_reference_2d`'s adapter): xq (..., L, K)
    -> y (..., L, N), or (y, yq (..., L, q_cols)) with quant = (q_start, q_cols, inv_smooth, scale, zero_point,
    bits); softplus = (delta_bias,): y = softplus(y + delta_bias); silu_start: y[..., silu_start:] = silu of it."""
    if xq.dim() < 2:
        raise InputError(f"int8_linear: xq must be (..., tokens, K), got shape {tuple(xq.shape)}")
    x_scale, x_zp, tokens = token_params(x_scale, x_zero_point, xq.shape[:-1], "int8_linear")
    quant_args = {}
    if quant is not None:
        q_start, q_cols, inv_smooth, scale, zero_point, bits = quant
        inv_scale, zp, q_tokens = inverse_token_params(scale, zero_point, xq.shape[-2:-1], "int8_linear_quantize")
        quant_args = {"inv_smooth": f32(inv_smooth), "inv_scale": inv_scale, "zero_point": zp, "bits": bits,
                      "q_start": q_start, "q_cols": q_cols}
        if q_tokens != tokens:
            raise InputError(f"int8_linear_quantize: the output quantizer has {q_tokens} tokens, the input {tokens}")
    if softplus is not None:
        quant_args = {"softplus": True, "delta_bias": f32(softplus[0])}
    if silu_start is not None:
        quant_args = {"silu_start": silu_start}
    out = launch(xq.reshape(-1, xq.shape[-1]), wq, w_colsum.to(torch.int32), f32(w_scale), x_scale, x_zp, f32(bias),
                 tokens, out_dtype, autotune=autotune, **quant_args)
    if quant is None:
        return out.reshape(*xq.shape[:-1], wq.shape[0])
    return out[0].reshape(*xq.shape[:-1], wq.shape[0]), out[1].reshape(*xq.shape[:-1], out[1].shape[-1])


def _launch_reference(xq, wq, w_colsum, w_scale, x_scale, x_zero_point, bias, tokens, out_dtype, *, inv_smooth=None,
                      inv_scale=None, zero_point=None, bits=8, q_start=0, q_cols=None, softplus=False, delta_bias=None,
                      silu_start=None, autotune=True):
    """:func:`_reference_2d` called as :func:`_launch_int8_linear` is (``autotune`` picks tiles: none here)."""
    M, N, _ = _check_args(xq, wq, w_colsum, w_scale, x_scale, x_zero_point, bias, tokens, out_dtype)
    quant = None
    if inv_scale is not None:
        q_cols = _check_quant_columns(q_start, q_cols, N, inv_smooth, inv_scale, zero_point, bits, tokens)
        quant = (q_start, q_cols, inv_smooth, inv_scale, zero_point, bits)
    _check_activation(softplus, delta_bias, silu_start, quant is not None, N)
    return _reference_2d(xq, wq, w_colsum, w_scale, x_scale, x_zero_point, bias, tokens, out_dtype, quant,
                         softplus, delta_bias, silu_start)


def _reference_2d(xq, wq, w_colsum, w_scale, x_scale, x_zero_point, bias, tokens, out_dtype, quant, softplus=False,
                  delta_bias=None, silu_start=None):
    """The launcher's result in pure PyTorch (:mod:`ptq4vm_fx.quant.integer`'s GEMM and quantizer; the softplus
    and SiLU as :func:`ptq4vm_fx.scan.selective_scan_ref` applies them to delta and z): quant None or (q_start,
    q_cols, inv_smooth, inv_scale, zero_point, bits)."""
    tok = torch.arange(xq.shape[0], device=xq.device) % tokens
    y = integer.dequantize_accumulator(integer.int_matmul(xq, wq), x_scale[tok], x_zero_point[tok], w_scale,
                                       w_colsum, bias).to(out_dtype)
    if softplus:
        y = F.softplus(y.float() if delta_bias is None else y.float() + delta_bias).to(out_dtype)
    if silu_start is not None:
        y = torch.cat([y[:, :silu_start], F.silu(y[:, silu_start:].float()).to(out_dtype)], dim=1)
    if quant is None:
        return y
    q_start, q_cols, inv_smooth, inv_scale, zero_point, bits = quant
    yq = integer.quantize_codes(y[:, q_start:q_start + q_cols], inv_smooth, inv_scale[tok], zero_point[tok], bits)
    return y, yq.to(torch.int8)


def int8_linear(xq: Tensor, x_scale: Tensor, x_zero_point: Tensor, wq: Tensor, w_scale: Tensor, w_colsum: Tensor,
                bias: Optional[Tensor], out_dtype: torch.dtype, autotune: bool = True) -> Tensor:
    """Integer linear (module docstring): xq (..., L, K) int8; x_scale, x_zero_point (L,) per-token static or
    xq.shape[:-1] per row; wq (N, K) int8; w_scale (N,) float; w_colsum (N,) integer = wq.sum(1); bias (N,)
    float or None. Returns (..., L, N) ``out_dtype``. ``autotune``: the kernel's tiles tuned on first use (True)
    or fixed per shape (False)."""
    return _int8_linear(_launch_int8_linear, xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias, out_dtype,
                        autotune)


def int8_linear_ref(xq: Tensor, x_scale: Tensor, x_zero_point: Tensor, wq: Tensor, w_scale: Tensor,
                    w_colsum: Tensor, bias: Optional[Tensor], out_dtype: torch.dtype, autotune: bool = True) -> Tensor:
    """Pure-PyTorch specification of :func:`int8_linear` (the accumulator exact through float64)."""
    return _int8_linear(_launch_reference, xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias, out_dtype,
                        autotune)


def int8_linear_fake(xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias, out_dtype, autotune=True):
    return xq.new_empty((*xq.shape[:-1], wq.shape[0]), dtype=out_dtype)


def int8_linear_softplus(xq: Tensor, x_scale: Tensor, x_zero_point: Tensor, wq: Tensor, w_scale: Tensor,
                         w_colsum: Tensor, bias: Optional[Tensor], delta_bias: Optional[Tensor], out_dtype: torch.dtype,
                         autotune: bool = True) -> Tensor:
    """:func:`int8_linear` whose epilogue stores ``softplus(y + delta_bias)`` (y as rounded to ``out_dtype``;
    delta_bias (N,) float or None): dt_proj's output as the scan computes its delta from it
    (``delta_softplus=True``), with the scan kernels' softplus. Returns (..., L, N) ``out_dtype``."""
    return _int8_linear(_launch_int8_linear, xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias, out_dtype,
                        autotune, softplus=(delta_bias,))


def int8_linear_softplus_ref(xq: Tensor, x_scale: Tensor, x_zero_point: Tensor, wq: Tensor, w_scale: Tensor,
                             w_colsum: Tensor, bias: Optional[Tensor], delta_bias: Optional[Tensor],
                             out_dtype: torch.dtype, autotune: bool = True) -> Tensor:
    """Pure-PyTorch specification of :func:`int8_linear_softplus` (torch's softplus, as the scan reference)."""
    return _int8_linear(_launch_reference, xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias, out_dtype,
                        autotune, softplus=(delta_bias,))


def int8_linear_softplus_fake(xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias, delta_bias, out_dtype,
                              autotune=True):
    return xq.new_empty((*xq.shape[:-1], wq.shape[0]), dtype=out_dtype)


def int8_linear_silu(xq: Tensor, x_scale: Tensor, x_zero_point: Tensor, wq: Tensor, w_scale: Tensor,
                     w_colsum: Tensor, bias: Optional[Tensor], silu_start: int, out_dtype: torch.dtype,
                     autotune: bool = True) -> Tensor:
    """:func:`int8_linear` whose epilogue stores ``silu(y)`` in the output columns [silu_start, N) (y as rounded to
    ``out_dtype``): in_proj's output with its z columns as the scan gates with them (``z_silu=True``), with the
    scan kernels' SiLU. Returns (..., L, N) ``out_dtype``."""
    return _int8_linear(_launch_int8_linear, xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias, out_dtype,
                        autotune, silu_start=silu_start)


def int8_linear_silu_ref(xq: Tensor, x_scale: Tensor, x_zero_point: Tensor, wq: Tensor, w_scale: Tensor,
                         w_colsum: Tensor, bias: Optional[Tensor], silu_start: int, out_dtype: torch.dtype,
                         autotune: bool = True) -> Tensor:
    """Pure-PyTorch specification of :func:`int8_linear_silu` (torch's SiLU, as the scan reference)."""
    return _int8_linear(_launch_reference, xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias, out_dtype,
                        autotune, silu_start=silu_start)


def int8_linear_silu_fake(xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias, silu_start, out_dtype,
                          autotune=True):
    return xq.new_empty((*xq.shape[:-1], wq.shape[0]), dtype=out_dtype)


def int8_linear_quantize(xq: Tensor, x_scale: Tensor, x_zero_point: Tensor, wq: Tensor, w_scale: Tensor,
                         w_colsum: Tensor, bias: Optional[Tensor], out_dtype: torch.dtype, q_start: int, q_cols: int,
                         inv_smooth: Optional[Tensor], scale: Tensor, zero_point: Tensor, bits: int,
                         autotune: bool = True) -> tuple[Tensor, Tensor]:
    """:func:`int8_linear` whose epilogue also quantizes the output columns [q_start, q_start + q_cols) as
    stored: returns (y (..., L, N) ``out_dtype``, yq (..., L, q_cols) int8); inv_smooth (q_cols,) or None,
    scale / zero_point (L,) per-token static."""
    return _int8_linear(_launch_int8_linear, xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias, out_dtype,
                        autotune, (q_start, q_cols, inv_smooth, scale, zero_point, bits))


def int8_linear_quantize_ref(xq: Tensor, x_scale: Tensor, x_zero_point: Tensor, wq: Tensor, w_scale: Tensor,
                             w_colsum: Tensor, bias: Optional[Tensor], out_dtype: torch.dtype, q_start: int,
                             q_cols: int, inv_smooth: Optional[Tensor], scale: Tensor, zero_point: Tensor, bits: int,
                             autotune: bool = True) -> tuple[Tensor, Tensor]:
    """Pure-PyTorch specification of :func:`int8_linear_quantize`."""
    return _int8_linear(_launch_reference, xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias, out_dtype,
                        autotune, (q_start, q_cols, inv_smooth, scale, zero_point, bits))


def int8_linear_quantize_fake(xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias, out_dtype, q_start, q_cols,
                              inv_smooth, scale, zero_point, bits, autotune=True):
    return (xq.new_empty((*xq.shape[:-1], wq.shape[0]), dtype=out_dtype),
            xq.new_empty((*xq.shape[:-1], q_cols), dtype=torch.int8))
