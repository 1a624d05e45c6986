"""Static per-token activation quantization, alone and fused into its producers.

Contract (every kernel here follows it bit for bit): :func:`ptq4vm_fx.quant.integer.quantize_codes`,
a value x of channel c belonging to token position t quantized to ``bits`` bits as

    q = clamp(round((float32(x) * inv_smooth[c]) * inv_scale[t]) + zp[t], -2^(bits-1), 2^(bits-1)-1)

in fp32, in that order, round = round half to even; stored as int8. ``inv_smooth`` (channels,)
(None = no smoothing), ``inv_scale`` = 1 / scale computed on the host, ``zero_point`` signed.

Each op here is, in this order: the Triton kernel, its launcher (``_launch_*``: 2-D activations,
checks, launch), the public function with the op's signature (the CUDA implementation of the
custom op, :mod:`ptq4vm_fx.ops`), its ``*_ref`` with the same signature (the CPU implementation)
and its ``*_fake`` (the shapes, for tracing):
    * ``quantize_per_token``  - (..., L, C) activations, per-token static or per-row parameters.
    * ``add_rmsnorm_quantize`` - residual add + RMSNorm + quantization (Vim's fused_add_norm).
    * ``conv1d_silu_quantize`` - Vim's depthwise causal (or anticausal) conv1d + SiLU, writing the
      result and its token-major quantization.
    * ``conv1d_silu`` - the same kernel without the quantization (a float model's conv).
    * ``ordered_conv1d_silu`` - the same kernel reading its sequence through an order map (LocalVim).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from ..errors import InputError
from ..quant import integer
from ..scan import token_major, token_major_empty
from ._common import (
    FLOAT_DTYPES,
    TL_DTYPES,
    _quantize_values,
    _round_to,
    check_devices,
    check_quant_params,
    check_tensor,
    f32,
    interpret_mode,
    inverse_token_params,
    qrange,
    vec,
)

# ============================================================================================
# quantize_per_token
# ============================================================================================


@triton.jit
def _quantize_per_token_kernel(
    x_ptr, q_ptr, inv_smooth_ptr, inv_scale_ptr, zp_ptr,
    M, K, L,
    stride_xm, stride_xk, stride_qm, stride_qk,
    qmin, qmax,
    HAS_SMOOTH: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_k = offs_k < K
    mask = mask_m[:, None] & mask_k[None, :]
    rows = offs_m.to(tl.int64)

    x = tl.load(x_ptr + rows[:, None] * stride_xm + offs_k[None, :] * stride_xk, mask=mask, other=0.0)
    x = x.to(tl.float32)
    tok = offs_m % L
    inv_scale = tl.load(inv_scale_ptr + tok, mask=mask_m, other=0.0)
    zp = tl.load(zp_ptr + tok, mask=mask_m, other=0)
    if HAS_SMOOTH:
        inv_smooth = tl.load(inv_smooth_ptr + offs_k, mask=mask_k, other=0.0)
    else:
        inv_smooth = tl.full((BLOCK_K,), 1.0, tl.float32)
    q = _quantize_values(x, inv_smooth[None, :], inv_scale[:, None], zp[:, None], qmin, qmax)
    tl.store(q_ptr + rows[:, None] * stride_qm + offs_k[None, :] * stride_qk, q, mask=mask)


def _quantize_per_token_config(M, K):
    """Tile sizes / warps for the elementwise quantizer (memory bound: ~4K elements a program)."""
    if interpret_mode():
        return {"BLOCK_M": 8, "BLOCK_K": 32}, 1
    block_k = min(triton.next_power_of_2(K), 512)
    block_m = max(1, min(4096 // block_k, triton.next_power_of_2(M)))
    return {"BLOCK_M": block_m, "BLOCK_K": block_k}, 4


def _launch_quantize_per_token(x, inv_smooth, inv_scale, zero_point, bits, tokens):
    """x (M, K) float, row m of token m % tokens; inv_smooth (K,) fp32 or None; inv_scale (tokens,)
    fp32; zero_point (tokens,) int32 -> (M, K) int8."""
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    M, K = x.shape
    check_quant_params(inv_smooth, inv_scale, zero_point, bits, tokens, K)
    check_devices(x=x, inv_smooth=inv_smooth, inv_scale=inv_scale, zero_point=zero_point)
    q = torch.empty((M, K), dtype=torch.int8, device=x.device)
    if M == 0 or K == 0:
        return q
    qmin, qmax = qrange(bits)
    cfg, num_warps = _quantize_per_token_config(M, K)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]), triton.cdiv(K, cfg["BLOCK_K"]))
    _quantize_per_token_kernel[grid](
        x, q, inv_smooth if inv_smooth is not None else inv_scale, inv_scale, zero_point,
        M, K, tokens,
        x.stride(0), x.stride(1), q.stride(0), q.stride(1),
        qmin, qmax,
        HAS_SMOOTH=inv_smooth is not None, **cfg, num_warps=num_warps, enable_fp_fusion=False,
    )
    return q


def _rows(x: Tensor) -> Tensor:
    """x (..., K) as a (M, K) matrix (a view where the strides allow)."""
    if x.dim() < 2:
        raise InputError(f"expected activations of shape (..., tokens, channels), got {tuple(x.shape)}")
    return x.reshape(-1, x.shape[-1])


def quantize_per_token(x: Tensor, inv_smooth: Optional[Tensor], scale: Tensor, zero_point: Tensor,
                       bits: int) -> Tensor:
    """Per-token quantization: x (..., L, C) float -> (..., L, C) int8 codes (module docstring).

    inv_smooth (C,) float or None; scale / zero_point (signed, integer valued) (L,) per-token static,
    or x.shape[:-1] per row (dynamic)."""
    inv_scale, zp, tokens = inverse_token_params(scale, zero_point, x.shape[:-1], "quantize_per_token")
    q = _launch_quantize_per_token(_rows(x), f32(inv_smooth), inv_scale, zp, bits, tokens)
    return q.reshape(x.shape)


def quantize_per_token_ref(x: Tensor, inv_smooth: Optional[Tensor], scale: Tensor, zero_point: Tensor,
                           bits: int) -> Tensor:
    """Pure-PyTorch specification of :func:`quantize_per_token` (:mod:`ptq4vm_fx.quant.integer`'s rule)."""
    inv_scale, zp, tokens = inverse_token_params(scale, zero_point, x.shape[:-1], "quantize_per_token")
    x2 = _rows(x)
    check_quant_params(f32(inv_smooth), inv_scale, zp, bits, tokens, x2.shape[1])
    tok = torch.arange(x2.shape[0], device=x.device) % tokens
    return integer.quantize_codes(x2, inv_smooth, inv_scale[tok], zp[tok], bits).to(torch.int8).reshape(x.shape)


def quantize_per_token_fake(x, inv_smooth, scale, zero_point, bits):
    return torch.empty(x.shape, dtype=torch.int8, device=x.device)


# ============================================================================================
# add_rmsnorm_quantize
# ============================================================================================


@triton.jit
def _add_rmsnorm_quantize_kernel(
    x_ptr, res_ptr, w_ptr, res_out_ptr, q_ptr, inv_smooth_ptr, inv_scale_ptr, zp_ptr,
    M, K, L, eps,
    stride_xm, stride_rm, stride_om, stride_qm,
    qmin, qmax,
    HAS_RESIDUAL: tl.constexpr, HAS_SMOOTH: tl.constexpr, NORM_DTYPE: tl.constexpr,
    BLOCK_K: tl.constexpr, ROWS: tl.constexpr,
):
    offs_k = tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    w = tl.load(w_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    if HAS_SMOOTH:
        inv_smooth = tl.load(inv_smooth_ptr + offs_k, mask=mask_k, other=0.0)
    else:
        inv_smooth = tl.full((BLOCK_K,), 1.0, tl.float32)

    for i in tl.static_range(ROWS):
        row = tl.program_id(0) * ROWS + i
        if row < M:
            row64 = row.to(tl.int64)
            r = tl.load(x_ptr + row64 * stride_xm + offs_k, mask=mask_k, other=0.0).to(tl.float32)
            if HAS_RESIDUAL:
                r = r + tl.load(res_ptr + row64 * stride_rm + offs_k, mask=mask_k, other=0.0).to(tl.float32)
            tl.store(res_out_ptr + row64 * stride_om + offs_k, r, mask=mask_k)

            r = _round_to(r, NORM_DTYPE)
            mean_sq = tl.sum(r * r, axis=0) / K
            # IEEE sqrt and division: 1 / sqrt(.) rounded like torch.rsqrt on the CPU (no libdevice)
            rstd = tl.div_rn(1.0, tl.sqrt_rn(mean_sq + eps))
            normed = _round_to((r * rstd) * w, NORM_DTYPE)

            tok = row % L
            inv_scale = tl.load(inv_scale_ptr + tok)
            zp = tl.load(zp_ptr + tok)
            q = _quantize_values(normed, inv_smooth, inv_scale, zp, qmin, qmax)
            tl.store(q_ptr + row64 * stride_qm + offs_k, q, mask=mask_k)


def _add_rmsnorm_config(M, K):
    """(BLOCK_K, ROWS per program, num_warps): whole rows in registers, ~8 fp32 a thread."""
    block_k = triton.next_power_of_2(K)
    if interpret_mode():
        return block_k, 2, 1
    num_warps = min(max(block_k // 256, 1), 8)
    rows = 4 if block_k <= 512 else (2 if block_k <= 1024 else 1)
    return block_k, rows, num_warps


def _check_rmsnorm_args(x, residual, weight, eps, inv_smooth, inv_scale, zero_point, bits, tokens, norm_dtype):
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    M, K = x.shape
    check_tensor("residual", residual, shape=(M, K), dtypes=FLOAT_DTYPES, allow_none=True)
    check_tensor("weight", weight, shape=(K,), dtypes=FLOAT_DTYPES)
    if not isinstance(eps, (float, int)) or isinstance(eps, bool) or eps < 0:
        raise ValueError(f"eps must be a non-negative float, got {eps!r}")
    if norm_dtype not in FLOAT_DTYPES:
        raise ValueError(f"norm_dtype must be one of float32, float16, bfloat16, got {norm_dtype}")
    check_quant_params(inv_smooth, inv_scale, zero_point, bits, tokens, K)
    return M, K


def _launch_add_rmsnorm_quantize(x, residual, weight, eps, inv_smooth, inv_scale, zero_point, bits, tokens,
                                 norm_dtype):
    """Fused residual add + RMSNorm + static per-token quantization (one row per step).

        residual_out = float32(x) + float32(residual)            (= float32(x) if residual is None)
        r            = round(residual_out)
        normed       = round(r * rsqrt(mean(r^2, over K) + eps) * weight)
        xq           = quantize(normed)                           (contract in the module docstring)

    computed in fp32, with round = rounding to ``norm_dtype`` (none for float32): a norm run in
    fp16 / bf16 on the fp32 residual (``RMSNorm(residual.to(dtype))`` returning ``dtype``).

    Args:
        x: (M, K) fp32 / fp16 / bf16 block output; row m is token m % tokens.
        residual: (M, K) fp32 / fp16 / bf16 running residual, or None.
        weight: (K,) RMSNorm weight (any float dtype, used in fp32).
        eps: float.
        inv_smooth: (K,) fp32 or None; inv_scale: (tokens,) fp32; zero_point: (tokens,) int32.
        bits: int in [2, 8]; tokens: int.
        norm_dtype: torch.float32 / float16 / bfloat16.

    Returns:
        (xq (M, K) int8, residual_out (M, K) fp32).
    """
    M, K = _check_rmsnorm_args(x, residual, weight, eps, inv_smooth, inv_scale, zero_point, bits, tokens,
                               norm_dtype)
    check_devices(x=x, residual=residual, weight=weight, inv_smooth=inv_smooth, inv_scale=inv_scale,
                  zero_point=zero_point)
    q = torch.empty((M, K), dtype=torch.int8, device=x.device)
    res_out = torch.empty((M, K), dtype=torch.float32, device=x.device)
    if M == 0 or K == 0:
        return q, res_out
    # Rows must be unit-stride along K (row stride is free).
    x = x if x.stride(1) == 1 else x.contiguous()
    if residual is not None and residual.stride(1) != 1:
        residual = residual.contiguous()
    weight = vec(weight)
    qmin, qmax = qrange(bits)
    block_k, rows, num_warps = _add_rmsnorm_config(M, K)
    grid = (triton.cdiv(M, rows),)
    _add_rmsnorm_quantize_kernel[grid](
        x, residual if residual is not None else x, weight, res_out, q,
        inv_smooth if inv_smooth is not None else inv_scale, inv_scale, zero_point,
        M, K, tokens, float(eps),
        x.stride(0), residual.stride(0) if residual is not None else 0, res_out.stride(0), q.stride(0),
        qmin, qmax,
        HAS_RESIDUAL=residual is not None, HAS_SMOOTH=inv_smooth is not None, NORM_DTYPE=TL_DTYPES[norm_dtype],
        BLOCK_K=block_k, ROWS=rows, num_warps=num_warps, enable_fp_fusion=False,
    )
    return q, res_out


def add_rmsnorm_quantize(x: Tensor, residual: Optional[Tensor], weight: Tensor, eps: float,
                         inv_smooth: Optional[Tensor], scale: Tensor, zero_point: Tensor, bits: int,
                         norm_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """x, residual (..., L, C) float (residual may be None); weight (C,) -> (xq (..., L, C) int8,
    residual_out (..., L, C) fp32), with ``residual_out = x + residual`` and
    ``xq = quantize(r * rsqrt(mean(r^2) + eps) * weight)``, r = residual_out; r and the norm's output
    rounded to ``norm_dtype`` (a norm run in fp16 / bf16; float32: not rounded). scale / zero_point (L,)."""
    inv_scale, zp, tokens = inverse_token_params(scale, zero_point, x.shape[-2:-1], "add_rmsnorm_quantize")
    check_tensor("residual", residual, shape=x.shape, allow_none=True)  # not only as many rows
    res2 = None if residual is None else _rows(residual)
    xq, res_out = _launch_add_rmsnorm_quantize(_rows(x), res2, weight, eps, f32(inv_smooth), inv_scale, zp, bits,
                                               tokens, norm_dtype)
    return xq.reshape(x.shape), res_out.reshape(x.shape)


def add_rmsnorm_quantize_ref(x: Tensor, residual: Optional[Tensor], weight: Tensor, eps: float,
                             inv_smooth: Optional[Tensor], scale: Tensor, zero_point: Tensor, bits: int,
                             norm_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Pure-PyTorch specification of :func:`add_rmsnorm_quantize`."""
    inv_scale, zp, tokens = inverse_token_params(scale, zero_point, x.shape[-2:-1], "add_rmsnorm_quantize")
    check_tensor("residual", residual, shape=x.shape, allow_none=True)
    res2 = None if residual is None else _rows(residual)
    _check_rmsnorm_args(_rows(x), res2, weight, eps, f32(inv_smooth), inv_scale, zp, bits, tokens, norm_dtype)
    res_out = x.float() if residual is None else x.float() + residual.float()
    if res_out is x:  # an output must not alias an input
        res_out = res_out.clone()
    r = res_out.to(norm_dtype).float()
    rstd = torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + eps)
    normed = ((r * rstd) * weight.float()).to(norm_dtype)
    return quantize_per_token_ref(normed, inv_smooth, scale, zero_point, bits), res_out.contiguous()


def add_rmsnorm_quantize_fake(x, residual, weight, eps, inv_smooth, scale, zero_point, bits, norm_dtype):
    return (torch.empty_like(x, dtype=torch.int8, memory_format=torch.contiguous_format),
            torch.empty_like(x, dtype=torch.float32, memory_format=torch.contiguous_format))


# ============================================================================================
# conv1d_silu_quantize
# ============================================================================================


@triton.jit
def _conv1d_silu_quantize_kernel(
    x_ptr, w_ptr, bias_ptr, u_ptr, q_ptr, inv_smooth_ptr, inv_scale_ptr, zp_ptr, order_ptr,
    D, L,
    stride_xb, stride_xd, stride_xl,
    stride_wd, stride_ww,
    stride_ub, stride_ud, stride_ul,
    stride_qb, stride_ql, stride_qd,
    qmin, qmax,
    WIDTH: tl.constexpr, REVERSE: tl.constexpr, HAS_BIAS: tl.constexpr, QUANT: tl.constexpr,
    HAS_SMOOTH: tl.constexpr, ORDERED: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_l = offs_l < L
    mask_d = offs_d < D

    if HAS_BIAS:
        acc = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None] \
            + tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)

    x_base = x_ptr + b * stride_xb + offs_d[:, None] * stride_xd
    for j in tl.static_range(WIDTH):
        # causal: tap j reads t - (W-1) + j; anticausal (reverse): t + (W-1) - j
        if REVERSE:
            src = offs_l + (WIDTH - 1 - j)
        else:
            src = offs_l - (WIDTH - 1 - j)
        inside = (src >= 0) & (src < L)
        if ORDERED:  # sequence step src reads token order[src] of x (-1: a zero-padded token)
            src = tl.load(order_ptr + src, mask=inside, other=-1)
            inside = src >= 0
        m = mask_d[:, None] & inside[None, :]
        xv = tl.load(x_base + src[None, :] * stride_xl, mask=m, other=0.0).to(tl.float32)
        wj = tl.load(w_ptr + offs_d * stride_wd + j * stride_ww, mask=mask_d, other=0.0).to(tl.float32)
        acc += wj[:, None] * xv

    # the conv's and the SiLU's outputs rounded to u's dtype (x's), as the unfused ops round them
    v = _round_to(acc, u_ptr.dtype.element_ty)
    u = _round_to(v / (1.0 + tl.exp(-v)), u_ptr.dtype.element_ty)
    mask = mask_d[:, None] & mask_l[None, :]
    tl.store(u_ptr + b * stride_ub + offs_d[:, None] * stride_ud + offs_l[None, :] * stride_ul,
             u.to(u_ptr.dtype.element_ty), mask=mask)

    if QUANT:
        inv_scale = tl.load(inv_scale_ptr + offs_l, mask=mask_l, other=0.0)
        zp = tl.load(zp_ptr + offs_l, mask=mask_l, other=0)
        if HAS_SMOOTH:
            inv_smooth = tl.load(inv_smooth_ptr + offs_d, mask=mask_d, other=0.0)
        else:
            inv_smooth = tl.full((BLOCK_D,), 1.0, tl.float32)
        q = _quantize_values(u, inv_smooth[:, None], inv_scale[None, :], zp[None, :], qmin, qmax)
        tl.store(q_ptr + b * stride_qb + offs_l[None, :] * stride_ql + offs_d[:, None] * stride_qd, q, mask=mask)


def _conv1d_config(D, L):
    if interpret_mode():
        return {"BLOCK_D": 16, "BLOCK_L": 16}, 1
    return {"BLOCK_D": 32, "BLOCK_L": 64}, 4


def _check_conv_args(x, weight, bias, inv_smooth, inv_scale, zero_point, bits, reverse):
    """(batch, D, L, weight as (D, W)); the quantization parameters are checked unless inv_scale is None."""
    check_tensor("x", x, ndim=3, dtypes=FLOAT_DTYPES)
    Bsz, D, L = x.shape
    check_tensor("weight", weight, dtypes=FLOAT_DTYPES)
    if weight.dim() == 3 and weight.shape[1] == 1:
        weight = weight[:, 0, :]
    if weight.dim() != 2 or weight.shape[0] != D or weight.shape[1] < 1:
        raise ValueError(f"weight must have shape (D={D}, W) or (D, 1, W), got {tuple(weight.shape)}")
    check_tensor("bias", bias, shape=(D,), dtypes=FLOAT_DTYPES, allow_none=True)
    if inv_scale is not None:
        check_quant_params(inv_smooth, inv_scale, zero_point, bits, L, D)
    if not isinstance(reverse, bool):
        raise ValueError(f"reverse must be a bool, got {type(reverse).__name__}")  # noqa: TRY004 (API: ValueError)
    return Bsz, D, L, weight


def _check_order(order, tokens: int, check_values: bool):
    """``order`` (S,) int32 / int64 with entries in [-1, tokens) (the values checked when ``check_values``:
    the reference's check; a kernel launch trusts them) -> S."""
    if not (isinstance(order, torch.Tensor) and order.dim() == 1 and order.dtype in (torch.int32, torch.int64)):
        got = f"{getattr(order, 'dtype', type(order).__name__)} of shape {tuple(getattr(order, 'shape', ()))}"
        raise ValueError(f"order must be an (S,) int32 / int64 tensor, got {got}")
    if check_values and order.numel() and (int(order.min()) < -1 or int(order.max()) >= tokens):
        raise ValueError(f"order entries must lie in [-1, {tokens}), got [{int(order.min())}, {int(order.max())}]")
    return order.shape[0]


def _launch_conv1d_silu_quantize(x, weight, bias, inv_smooth, inv_scale, zero_point, bits, reverse, order=None):
    """Depthwise conv1d (kernel width W, zero padded) + SiLU + token-major quantization (none when
    ``inv_scale`` is None: a float model's conv), over x or, with ``order``, over the sequence x read through it.

        forward (reverse=False), causal:   v[b,d,t] = bias[d] + sum_j weight[d,j] * x[b,d,t-(W-1)+j]
        reverse=True, anticausal:          v[b,d,t] = bias[d] + sum_j weight[d,j] * x[b,d,t+(W-1)-j]
        u = v / (1 + exp(-v));  xq[b,t,d] = quantize(u[b,d,t]) with channel d, token t.

    Computed in fp32; for fp16 / bf16 ``x``, v and u are rounded to x's dtype (as ``F.conv1d`` and
    ``F.silu`` in that dtype round their outputs), u is stored in it and xq quantizes it as stored.

    reverse=True equals ``flip(conv(flip(x)))``: the input path of Vim's backward branch,
    without the flip copies. With ``order`` (S,), t runs over the S sequence steps and x[b,d,t'] reads
    token order[t'] of x (0 for -1 and outside [0, S)): LocalVim's conv over a direction's sequence,
    without the gathered copy.

    Args:
        x: (B, D, L) fp32 / fp16 / bf16.
        weight: (D, W) or (D, 1, W) depthwise kernel (any float dtype, used in fp32).
        bias: (D,) or None.
        inv_smooth: (D,) fp32 or None; inv_scale: (L,) fp32, or None (no quantization); zero_point: (L,)
            int32; bits in [2, 8].
        reverse: bool.
        order: (S,) int32 / int64 or None; the caller guarantees its entries lie in [-1, L).

    Returns:
        (u (B, D, S) in x's dtype stored token-major (stride 1 along D), xq (B, S, D) int8 or None), S = L
        without ``order``.
    """
    Bsz, D, L, weight = _check_conv_args(x, weight, bias, None, None, None, bits, reverse)
    if order is not None:
        L = _check_order(order, L, check_values=False)
        order = order.to(torch.int32).contiguous()
    if inv_scale is not None:
        check_quant_params(inv_smooth, inv_scale, zero_point, bits, L, D)
    check_devices(x=x, weight=weight, bias=bias, inv_smooth=inv_smooth, inv_scale=inv_scale,
                  zero_point=zero_point, order=order)
    quant = inv_scale is not None
    u = token_major_empty(Bsz, D, L, x.dtype, x.device)
    q = torch.empty((Bsz, L, D), dtype=torch.int8, device=x.device) if quant else None
    if u.numel() == 0:
        return u, q
    bias = vec(bias)
    qmin, qmax = qrange(bits)
    dummy = u  # the pointers a launch without quantization (or bias, or smoothing) never reads
    cfg, num_warps = _conv1d_config(D, L)
    grid = (triton.cdiv(L, cfg["BLOCK_L"]), triton.cdiv(D, cfg["BLOCK_D"]), Bsz)
    _conv1d_silu_quantize_kernel[grid](
        x, weight, bias if bias is not None else dummy, u, q if quant else dummy,
        inv_smooth if inv_smooth is not None else dummy, inv_scale if quant else dummy,
        zero_point if quant else dummy, order if order is not None else dummy,
        D, L,
        x.stride(0), x.stride(1), x.stride(2),
        weight.stride(0), weight.stride(1),
        u.stride(0), u.stride(1), u.stride(2),
        *(q.stride() if quant else (0, 0, 0)),
        qmin, qmax,
        WIDTH=weight.shape[1], REVERSE=reverse, HAS_BIAS=bias is not None, QUANT=quant,
        HAS_SMOOTH=inv_smooth is not None, ORDERED=order is not None, **cfg, num_warps=num_warps,
        enable_fp_fusion=False,
    )
    return u, q


def conv1d_silu_quantize(x: Tensor, weight: Tensor, bias: Optional[Tensor], inv_smooth: Optional[Tensor],
                         scale: Tensor, zero_point: Tensor, bits: int, reverse: bool,
                         order: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """x (batch, D, L) float; weight (D, 1, W) or (D, W); bias (D,) or None; scale / zero_point (L,) ->
    (u (batch, D, L) in x's dtype, token-major, xq (batch, L, D) int8): ``u = silu(conv)``, causal, or
    anticausal when ``reverse`` (the unflipped weight: equals ``conv1d(pad(x, (0, W-1)), weight.flip(-1))``),
    and ``xq = quantize(u^T)``; computed in fp32, the conv's and the SiLU's outputs rounded to x's dtype.
    With ``order`` (S,): over the sequence x read through it (:func:`ordered_conv1d_silu`), L -> S."""
    tokens = x.shape[-1:] if order is None else order.shape
    inv_scale, zp, _ = inverse_token_params(scale, zero_point, tokens, "conv1d_silu_quantize")
    return _launch_conv1d_silu_quantize(x, weight, bias, f32(inv_smooth), inv_scale, zp, bits, reverse, order)


def conv1d_silu_quantize_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor], inv_smooth: Optional[Tensor],
                             scale: Tensor, zero_point: Tensor, bits: int, reverse: bool,
                             order: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Pure-PyTorch specification of :func:`conv1d_silu_quantize` (F.conv1d based)."""
    u = conv1d_silu_ref(x, weight, bias, reverse) if order is None else ordered_conv1d_silu_ref(x, weight, bias,
                                                                                                 order, reverse)
    inv_scale, zp, _ = inverse_token_params(scale, zero_point, u.shape[-1:], "conv1d_silu_quantize")
    _check_conv_args(u, weight, bias, f32(inv_smooth), inv_scale, zp, bits, reverse)
    return u, quantize_per_token_ref(u.transpose(1, 2), inv_smooth, scale, zero_point, bits).contiguous()


def conv1d_silu_quantize_fake(x, weight, bias, inv_smooth, scale, zero_point, bits, reverse, order=None):
    batch, d, length = x.shape if order is None else (*x.shape[:2], order.shape[0])
    return token_major_empty(batch, d, length, x.dtype, x.device), x.new_empty((batch, length, d), dtype=torch.int8)


# ============================================================================================
# conv1d_silu (the float model's conv: the kernel above without its quantization)
# ============================================================================================


def conv1d_silu(x: Tensor, weight: Tensor, bias: Optional[Tensor], reverse: bool) -> Tensor:
    """x (batch, D, L) float; weight (D, 1, W) or (D, W); bias (D,) or None -> u (batch, D, L) in x's dtype,
    token-major: :func:`conv1d_silu_quantize`'s u (causal, or anticausal when ``reverse``), no codes."""
    return _launch_conv1d_silu_quantize(x, weight, bias, None, None, None, 8, reverse)[0]


def conv1d_silu_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor], reverse: bool) -> Tensor:
    """Pure-PyTorch specification of :func:`conv1d_silu` (F.conv1d in fp32, v and u rounded to x's dtype)."""
    _, D, _, weight = _check_conv_args(x, weight, bias, None, None, None, 8, reverse)
    W = weight.shape[1]
    w = weight.float()[:, None, :]
    b = bias.float() if bias is not None else None
    xf = x.float()
    if reverse:
        # anticausal: pad on the right and flip the taps
        v = F.conv1d(F.pad(xf, (0, W - 1)), w.flip(-1), b, groups=D)
    else:
        v = F.conv1d(F.pad(xf, (W - 1, 0)), w, b, groups=D)
    v = v.to(x.dtype).float()
    return token_major((v / (1.0 + torch.exp(-v))).to(x.dtype))


def conv1d_silu_fake(x, weight, bias, reverse):
    return token_major_empty(*x.shape, x.dtype, x.device)


# ============================================================================================
# ordered_conv1d_silu (LocalVim's conv over a direction's sequence read through its order map)
# ============================================================================================


def ordered_conv1d_silu(x: Tensor, weight: Tensor, bias: Optional[Tensor], order: Tensor, reverse: bool) -> Tensor:
    """x (batch, D, T) float, tokens in natural order; weight (D, 1, W) or (D, W); bias (D,) or None; order (S,)
    int32: the token sequence step s reads (-1: a zero-padded token) -> u (batch, D, S) in x's dtype,
    token-major: :func:`conv1d_silu` over the sequence ``x[..., order]`` (zeros at -1), causal or anticausal
    when ``reverse``, the sequence never materialized."""
    return _launch_conv1d_silu_quantize(x, weight, bias, None, None, None, 8, reverse, order)[0]


def ordered_conv1d_silu_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor], order: Tensor,
                            reverse: bool) -> Tensor:
    """Pure-PyTorch specification of :func:`ordered_conv1d_silu`: the gathered sequence, :func:`conv1d_silu_ref`;
    differentiable."""
    check_tensor("x", x, ndim=3, dtypes=FLOAT_DTYPES)
    _check_order(order, x.shape[-1], check_values=torch._guards.detect_fake_mode(order) is None)  # traced: no values
    index = order.clamp(min=0).long()
    return conv1d_silu_ref(torch.where(order >= 0, x.index_select(-1, index), 0), weight, bias, reverse)


def ordered_conv1d_silu_fake(x, weight, bias, order, reverse):
    return token_major_empty(x.shape[0], x.shape[1], order.shape[0], x.dtype, x.device)
