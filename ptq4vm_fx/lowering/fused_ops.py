"""The fused custom ops the lowering rewrites produce: ``torch.ops.ptq4vm_fused.*``.

Each op has a reference implementation (the kernel's ``*_ref``, used on every device but CUDA), a
CUDA implementation that launches the Triton kernel, and a fake implementation so that Dynamo,
AOTAutograd and Inductor can trace it (Inductor calls it as an opaque extern kernel). Inference only:
none of them has an autograd formula.

Shared conventions (DESIGN.md section 3): activations are token-major ``(..., L, C)`` (or
``(batch, D, L)`` for the conv / scan inputs); ``scale`` (L,) float and ``zero_point`` (L,) integer
(signed range) are the per-token static quantization parameters, cast here to the fp32 / int32 the
kernels take; ``inv_smooth`` (C,) float. The kernels take ``inv_scale = 1 / scale``, computed here by
``torch.reciprocal`` exactly as ``ptq4vm::quantize_per_token`` does, so every path agrees on the codes.
Every output is a new tensor with the layout its fake implementation promises to Inductor: contiguous,
except the float (batch, D, L) outputs of the conv and the scans, stored token-major (stride 1 along
D, :func:`ptq4vm_fx.ops.token_major`) so that the scan kernel reads and writes one coalesced row per
token.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..kernels import int8_linear as _gemm
from ..kernels import quantize as _quant
from ..kernels import selective_scan as _scan
from ..scan import token_major, token_major_empty

__all__ = [
    "add_rmsnorm_quantize",
    "bidirectional_scan",
    "bidirectional_scan_quantize",
    "conv1d_silu_quantize",
    "int8_linear",
    "int8_linear_quantize",
    "quantize_per_token",
]


def _token_params(scale: Tensor, zero_point: Tensor, tokens: int, op: str) -> tuple[Tensor, Tensor]:
    """(L,) scale and zero point -> (inv_scale fp32, zero_point int32), checked against the token count."""
    if scale.dim() != 1 or scale.shape[0] != tokens or tuple(zero_point.shape) != (tokens,):
        raise ValueError(
            f"{op}: the input has {tokens} tokens but the static quantization parameters have shapes "
            f"{tuple(scale.shape)} / {tuple(zero_point.shape)}; per-token static scales only fit the image "
            "size they were calibrated at"
        )
    return torch.reciprocal(scale.float()), zero_point.to(torch.int32)


def _vec(t: Optional[Tensor]) -> Optional[Tensor]:
    """A small per-channel parameter as fp32 (no copy when it is already; None passes through)."""
    return None if t is None else t.float()


# --------------------------------------------------------------------------------------------
# int8_linear: qlinear with its dequantization, zero-point correction and bias in the GEMM epilogue
# --------------------------------------------------------------------------------------------


def _int8_linear(gemm, xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias, out_dtype, autotune, quant=None):
    """quant: None, or (q_start, q_cols, inv_smooth, scale, zero_point, bits) for the quantized columns."""
    tokens, k = xq.shape[-2], xq.shape[-1]
    if x_scale.dim() != 1 or x_scale.shape[0] != tokens or tuple(x_zero_point.shape) != (tokens,):
        raise ValueError(
            f"int8_linear: the input has {tokens} tokens but x_scale / x_zero_point have shapes "
            f"{tuple(x_scale.shape)} / {tuple(x_zero_point.shape)}"
        )
    quant_args = {}
    if quant is not None:
        q_start, q_cols, inv_smooth, scale, zero_point, bits = quant
        inv_scale, zp = _token_params(scale, zero_point, tokens, "int8_linear_quantize")
        quant_args = {"inv_smooth": inv_smooth.float(), "inv_scale": inv_scale, "zero_point": zp, "bits": bits,
                      "q_start": q_start, "q_cols": q_cols}
    out = gemm(xq.reshape(-1, k), wq, w_colsum.to(torch.int32), w_scale.float(), x_scale.float(),
               x_zero_point.to(torch.int32), _vec(bias), tokens, out_dtype, autotune=autotune, **quant_args)
    y = (out[0] if quant else out).reshape(*xq.shape[:-1], wq.shape[0]).contiguous()
    return (y, out[1].reshape(*xq.shape[:-1], out[1].shape[-1]).contiguous()) if quant else y


@torch.library.custom_op("ptq4vm_fused::int8_linear", mutates_args=())
def int8_linear(
    xq: Tensor,
    x_scale: Tensor,
    x_zero_point: Tensor,
    wq: Tensor,
    w_scale: Tensor,
    w_colsum: Tensor,
    bias: Optional[Tensor],
    out_dtype: torch.dtype,
    autotune: bool = True,
) -> Tensor:
    """``ptq4vm::qlinear`` followed by a cast to ``out_dtype``, as one GEMM with a fused epilogue.

    xq (..., L, K) int8; x_scale (L,) float; x_zero_point (L,) integer; wq (N, K) int8; w_scale (N,)
    float; w_colsum (N,) integer; bias (N,) float or None. Returns (..., L, N) ``out_dtype``.
    ``autotune``: the kernel's tiles tuned on first use (True) or fixed per shape (False).
    """
    return _int8_linear(_gemm.int8_linear_ref, xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias,
                        out_dtype, autotune)


@int8_linear.register_kernel("cuda")
def _int8_linear_cuda(xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias, out_dtype, autotune=True):
    return _int8_linear(_gemm.int8_linear, xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias, out_dtype,
                        autotune)


@int8_linear.register_fake
def _(xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias, out_dtype, autotune=True):
    return xq.new_empty((*xq.shape[:-1], wq.shape[0]), dtype=out_dtype)


@torch.library.custom_op("ptq4vm_fused::int8_linear_quantize", mutates_args=())
def int8_linear_quantize(
    xq: Tensor,
    x_scale: Tensor,
    x_zero_point: Tensor,
    wq: Tensor,
    w_scale: Tensor,
    w_colsum: Tensor,
    bias: Optional[Tensor],
    out_dtype: torch.dtype,
    q_start: int,
    q_cols: int,
    inv_smooth: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    bits: int,
    autotune: bool = True,
) -> tuple[Tensor, Tensor]:
    """:func:`int8_linear` whose epilogue also quantizes the output columns [q_start, q_start + q_cols):
    returns (y (..., L, N) ``out_dtype``, yq (..., L, q_cols) int8 = quantize(y[..., q_start:q_start + q_cols]));
    inv_smooth (q_cols,), scale / zero_point (L,)."""
    return _int8_linear(_gemm.int8_linear_ref, xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias, out_dtype,
                        autotune, (q_start, q_cols, inv_smooth, scale, zero_point, bits))


@int8_linear_quantize.register_kernel("cuda")
def _int8_linear_quantize_cuda(xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias, out_dtype, q_start, q_cols,
                               inv_smooth, scale, zero_point, bits, autotune=True):
    return _int8_linear(_gemm.int8_linear, xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias, out_dtype,
                        autotune, (q_start, q_cols, inv_smooth, scale, zero_point, bits))


@int8_linear_quantize.register_fake
def _(xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias, out_dtype, q_start, q_cols, inv_smooth, scale,
      zero_point, bits, autotune=True):
    return (xq.new_empty((*xq.shape[:-1], wq.shape[0]), dtype=out_dtype),
            xq.new_empty((*xq.shape[:-1], q_cols), dtype=torch.int8))


# --------------------------------------------------------------------------------------------
# quantize_per_token: the standalone quantizer (producers that could not absorb it)
# --------------------------------------------------------------------------------------------


def _quantize_per_token(quant, x, inv_smooth, scale, zero_point, bits):
    tokens, k = x.shape[-2], x.shape[-1]
    inv_scale, zp = _token_params(scale, zero_point, tokens, "quantize_per_token")
    return quant(x.reshape(-1, k), inv_smooth.float(), inv_scale, zp, bits, tokens).reshape(x.shape).contiguous()


@torch.library.custom_op("ptq4vm_fused::quantize_per_token", mutates_args=())
def quantize_per_token(x: Tensor, inv_smooth: Tensor, scale: Tensor, zero_point: Tensor, bits: int) -> Tensor:
    """``ptq4vm::quantize_per_token`` with static scales: x (..., L, C) float -> (..., L, C) int8."""
    return _quantize_per_token(_quant.quantize_per_token_ref, x, inv_smooth, scale, zero_point, bits)


@quantize_per_token.register_kernel("cuda")
def _quantize_per_token_cuda(x, inv_smooth, scale, zero_point, bits):
    return _quantize_per_token(_quant.quantize_per_token, x, inv_smooth, scale, zero_point, bits)


@quantize_per_token.register_fake
def _(x, inv_smooth, scale, zero_point, bits):
    return torch.empty_like(x, dtype=torch.int8, memory_format=torch.contiguous_format)


# --------------------------------------------------------------------------------------------
# add_rmsnorm_quantize: residual add + RMSNorm + quantize (the in_proj input)
# --------------------------------------------------------------------------------------------


def _add_rmsnorm_quantize(kernel, x, residual, weight, eps, inv_smooth, scale, zero_point, bits, norm_dtype):
    tokens, k = x.shape[-2], x.shape[-1]
    inv_scale, zp = _token_params(scale, zero_point, tokens, "add_rmsnorm_quantize")
    res2 = None if residual is None else residual.reshape(-1, k)
    xq, res_out = kernel(x.reshape(-1, k), res2, weight, eps, inv_smooth.float(), inv_scale, zp, bits, tokens,
                         norm_dtype)
    return xq.reshape(x.shape).contiguous(), res_out.reshape(x.shape).contiguous()


@torch.library.custom_op("ptq4vm_fused::add_rmsnorm_quantize", mutates_args=())
def add_rmsnorm_quantize(
    x: Tensor,
    residual: Optional[Tensor],
    weight: Tensor,
    eps: float,
    inv_smooth: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    bits: int,
    norm_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """x, residual (..., L, C) float (residual may be None); weight (C,) -> (xq (..., L, C) int8,
    residual_out (..., L, C) fp32), with ``residual_out = x + residual`` and
    ``xq = quantize(r * rsqrt(mean(r^2) + eps) * weight)``, r = residual_out; r and the norm's output
    rounded to ``norm_dtype`` (a norm run in fp16 / bf16; float32: not rounded)."""
    xq, res_out = _add_rmsnorm_quantize(_quant.add_rmsnorm_quantize_ref, x, residual, weight, eps, inv_smooth,
                                        scale, zero_point, bits, norm_dtype)
    # without a residual the reference's x.float() may be x itself: outputs must not alias inputs
    return xq, res_out if residual is not None else res_out.clone()


@add_rmsnorm_quantize.register_kernel("cuda")
def _add_rmsnorm_quantize_cuda(x, residual, weight, eps, inv_smooth, scale, zero_point, bits, norm_dtype):
    return _add_rmsnorm_quantize(_quant.add_rmsnorm_quantize, x, residual, weight, eps, inv_smooth, scale,
                                 zero_point, bits, norm_dtype)


@add_rmsnorm_quantize.register_fake
def _(x, residual, weight, eps, inv_smooth, scale, zero_point, bits, norm_dtype):
    return (torch.empty_like(x, dtype=torch.int8, memory_format=torch.contiguous_format),
            torch.empty_like(x, dtype=torch.float32, memory_format=torch.contiguous_format))


# --------------------------------------------------------------------------------------------
# conv1d_silu_quantize: depthwise (anti)causal conv1d + SiLU + quantize (the x_proj / x_proj_b input)
# --------------------------------------------------------------------------------------------


def _conv1d_silu_quantize(kernel, x, weight, bias, inv_smooth, scale, zero_point, bits, reverse):
    inv_scale, zp = _token_params(scale, zero_point, x.shape[-1], "conv1d_silu_quantize")
    u, xq = kernel(x, weight, bias, inv_smooth.float(), inv_scale, zp, bits, reverse)
    return token_major(u), xq.contiguous()


@torch.library.custom_op("ptq4vm_fused::conv1d_silu_quantize", mutates_args=())
def conv1d_silu_quantize(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    inv_smooth: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    bits: int,
    reverse: bool,
) -> tuple[Tensor, Tensor]:
    """x (batch, D, L) float; weight (D, 1, W); bias (D,) or None -> (u (batch, D, L) in x's dtype,
    token-major, xq (batch, L, D) int8): ``u = silu(conv)``, causal, or anticausal when ``reverse`` (the
    unflipped weight: equals ``conv1d(pad(x, (0, W-1)), weight.flip(-1))``), and ``xq = quantize(u^T)``;
    computed in fp32, the conv's and the SiLU's outputs rounded to x's dtype."""
    return _conv1d_silu_quantize(_quant.conv1d_silu_quantize_ref, x, weight, bias, inv_smooth, scale,
                                 zero_point, bits, reverse)


@conv1d_silu_quantize.register_kernel("cuda")
def _conv1d_silu_quantize_cuda(x, weight, bias, inv_smooth, scale, zero_point, bits, reverse):
    return _conv1d_silu_quantize(_quant.conv1d_silu_quantize, x, weight, bias, inv_smooth, scale, zero_point,
                                 bits, reverse)


@conv1d_silu_quantize.register_fake
def _(x, weight, bias, inv_smooth, scale, zero_point, bits, reverse):
    batch, d, length = x.shape
    u = token_major_empty(batch, d, length, x.dtype, x.device)
    return u, x.new_empty((batch, length, d), dtype=torch.int8)


# --------------------------------------------------------------------------------------------
# bidirectional_scan (+ quantized epilogue): Vim's two scan directions, averaged, in one kernel
# --------------------------------------------------------------------------------------------


def _bidirectional(kernel, u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f, u_b, delta_b, A_b, B_b, C_b, D_b,
                   delta_bias_b, z, delta_softplus, quant=None):
    """quant: None, or (inv_smooth, scale, zero_point, bits, store_out) for the quantized epilogue."""
    quant_args = {}
    if quant is not None:
        inv_smooth, scale, zero_point, bits, store_out = quant
        inv_scale, zp = _token_params(scale, zero_point, u_f.shape[-1], "bidirectional_scan_quantize")
        quant_args = {"inv_smooth": inv_smooth.float(), "inv_scale": inv_scale, "zero_point": zp, "bits": bits,
                      "store_out": store_out}
    out = kernel(u_f, delta_f, A_f.float(), B_f, C_f, _vec(D_f), _vec(delta_bias_f),
                 u_b, delta_b, A_b.float(), B_b, C_b, _vec(D_b), _vec(delta_bias_b),
                 z=z, delta_softplus=delta_softplus, **quant_args)
    if quant is None:
        return token_major(out)
    return (token_major(out[0]) if store_out else out[0]), out[1].contiguous()


@torch.library.custom_op("ptq4vm_fused::bidirectional_scan", mutates_args=())
def bidirectional_scan(
    u_f: Tensor, delta_f: Tensor, A_f: Tensor, B_f: Tensor, C_f: Tensor, D_f: Optional[Tensor],
    delta_bias_f: Optional[Tensor],
    u_b: Tensor, delta_b: Tensor, A_b: Tensor, B_b: Tensor, C_b: Tensor, D_b: Optional[Tensor],
    delta_bias_b: Optional[Tensor],
    z: Optional[Tensor], delta_softplus: bool,
) -> Tensor:
    """``(selective_scan(*_f, z, reverse=False) + selective_scan(*_b, z, reverse=True)) / 2``.

    u, delta, z: (batch, D, L); A: (D, N) fp32; B, C: (batch, N, L); D, delta_bias: (D,) or None.
    Returns (batch, D, L) in ``u_f``'s dtype, stored token-major."""
    return _bidirectional(_scan.bidirectional_scan_combine_ref, u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f,
                          u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z, delta_softplus)


@bidirectional_scan.register_kernel("cuda")
def _bidirectional_scan_cuda(u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f, u_b, delta_b, A_b, B_b, C_b, D_b,
                             delta_bias_b, z, delta_softplus):
    return _bidirectional(_scan.bidirectional_scan_combine, u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f,
                          u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z, delta_softplus)


@bidirectional_scan.register_fake
def _(u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z,
      delta_softplus):
    return token_major_empty(*u_f.shape, u_f.dtype, u_f.device)


@torch.library.custom_op("ptq4vm_fused::bidirectional_scan_quantize", mutates_args=())
def bidirectional_scan_quantize(
    u_f: Tensor, delta_f: Tensor, A_f: Tensor, B_f: Tensor, C_f: Tensor, D_f: Optional[Tensor],
    delta_bias_f: Optional[Tensor],
    u_b: Tensor, delta_b: Tensor, A_b: Tensor, B_b: Tensor, C_b: Tensor, D_b: Optional[Tensor],
    delta_bias_b: Optional[Tensor],
    z: Optional[Tensor], delta_softplus: bool,
    inv_smooth: Tensor, scale: Tensor, zero_point: Tensor, bits: int, store_out: bool = True,
) -> tuple[Tensor, Tensor]:
    """:func:`bidirectional_scan` with its output also quantized in the epilogue: returns
    (out (batch, D, L), xq (batch, L, D) int8 = quantize(out^T)); inv_smooth (D,), scale / zero_point (L,).
    ``store_out`` False: out is not written and comes back empty (only xq is read)."""
    return _bidirectional(_scan.bidirectional_scan_combine_ref, u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f,
                          u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z, delta_softplus,
                          (inv_smooth, scale, zero_point, bits, store_out))


@bidirectional_scan_quantize.register_kernel("cuda")
def _bidirectional_scan_quantize_cuda(u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f, u_b, delta_b, A_b, B_b,
                                      C_b, D_b, delta_bias_b, z, delta_softplus, inv_smooth, scale, zero_point,
                                      bits, store_out=True):
    return _bidirectional(_scan.bidirectional_scan_combine, u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f,
                          u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z, delta_softplus,
                          (inv_smooth, scale, zero_point, bits, store_out))


@bidirectional_scan_quantize.register_fake
def _(u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z,
      delta_softplus, inv_smooth, scale, zero_point, bits, store_out=True):
    batch, d, length = u_f.shape
    out = token_major_empty(batch, d, length, u_f.dtype, u_f.device) if store_out else u_f.new_empty(0)
    return out, u_f.new_empty((batch, length, d), dtype=torch.int8)


# The ops as the graph calls them (torch.ops.ptq4vm_fused.<name>.default), for the rewrites.
FUSED_OPS = torch.ops.ptq4vm_fused

# The CUDA implementations by op: tests run them on the CPU through the Triton interpreter.
CUDA_IMPLS = {
    int8_linear: _int8_linear_cuda,
    int8_linear_quantize: _int8_linear_quantize_cuda,
    quantize_per_token: _quantize_per_token_cuda,
    add_rmsnorm_quantize: _add_rmsnorm_quantize_cuda,
    conv1d_silu_quantize: _conv1d_silu_quantize_cuda,
    bidirectional_scan: _bidirectional_scan_cuda,
    bidirectional_scan_quantize: _bidirectional_scan_quantize_cuda,
}
