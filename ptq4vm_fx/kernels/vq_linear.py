"""Vector-quantized linear layer: the weight is decoded from a codebook inside the GEMM.

    W[n, g*d + j] = codebook[code[n, g], j]          (codebook (k, d) fp16, g < K/d, j < d)
    y[m, n]       = sum_c x[m, c] * W[n, c] + bias[n]

Codes layout: each output row's K/d codes are written as one little-endian bit stream of
``b = ceil(log2 k)`` bits per code (code g occupies stream bits [g*b, g*b + b), stream bit t is
bit t % 8 of byte t // 8), padded with zero bits to a whole byte: a row takes
``ceil(K/d * b / 8)`` bytes. For b = 8 that is one uint8 per code, for b = 4 two codes a byte,
for b = 1 eight; for b = 3, 5, 6, 7 a code may straddle two bytes (k = 64: four codes in three
bytes instead of four).

Numerics: the decoded weights are fp16 values, so every product x * W is exact in fp32 for fp16 /
bf16 activations; the products are summed in fp32 (in an order the reference does not fix), bias
(fp32) is added and the sum is rounded once to x's dtype. On a GPU the dot runs on fp16 tensor
cores for fp16 activations, as TF32 for bf16 activations (bf16 and fp16 values are exact in TF32)
and as IEEE fp32 for fp32 activations; under the interpreter always as fp32.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import FLOAT_DTYPES, _round_to, check_devices, check_tensor, interpret_mode

# tl.dot modes (constexpr DOT of the kernel)
_DOT_FP16, _DOT_TF32, _DOT_IEEE = 0, 1, 2


@triton.jit
def _vq_linear_kernel(x_ptr, codes_ptr, codebook_ptr, bias_ptr, y_ptr, M, N, K, row_bytes,
                      stride_xm, stride_xk, stride_cn, stride_ym, stride_yn,
                      D: tl.constexpr, CODE_BITS: tl.constexpr, HAS_BIAS: tl.constexpr, DOT: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One (BLOCK_M, BLOCK_N) output tile per program. Each K step loads an activation tile, gathers
    the codes of the (BLOCK_K, BLOCK_N) weight tile from the packed rows, decodes it by gathering
    from the codebook (k * d fp16 values, L1-resident) and accumulates their dot in fp32."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    # Rows / columns past the edge wrap around (their results are masked at the store).
    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M
    rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
    offs_k = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + rm.to(tl.int64)[:, None] * stride_xm
    code_rows = codes_ptr + rn.to(tl.int64)[None, :] * stride_cn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(tl.cdiv(K, BLOCK_K)):
        kk = kb * BLOCK_K + offs_k  # input channels of this step
        k_in = kk < K
        a = tl.load(x_rows + kk[None, :] * stride_xk, mask=k_in[None, :], other=0.0)
        bit = (kk // D) * CODE_BITS  # first stream bit of each channel's code
        byte = bit >> 3
        lo = tl.load(code_rows + byte[:, None], mask=k_in[:, None], other=0).to(tl.int32)
        if CODE_BITS == 8:
            code = lo
        else:  # the code may continue into the next byte (absent past the row's end: all bits are in lo)
            hi = tl.load(code_rows + (byte + 1)[:, None], mask=(k_in & (byte + 1 < row_bytes))[:, None],
                         other=0).to(tl.int32)
            code = ((lo | (hi << 8)) >> (bit & 7)[:, None]) & ((1 << CODE_BITS) - 1)
        w = tl.load(codebook_ptr + code * D + (kk % D)[:, None])  # (BLOCK_K, BLOCK_N) fp16
        w = tl.where(k_in[:, None], w, 0.0)
        if DOT == 0:
            acc = tl.dot(a, w.to(tl.float16), acc)
        elif DOT == 1:
            acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc, input_precision="tf32")
        else:
            acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    y = _round_to(acc, y_ptr.dtype.element_ty)
    tl.store(y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :] * stride_yn,
             y.to(y_ptr.dtype.element_ty), mask=(offs_m < M)[:, None] & mask_n[None, :])


# --------------------------------------------------------------------------------------------
# Launch configuration
# --------------------------------------------------------------------------------------------


def launch_config(M: int, N: int, K: int) -> dict:
    """Tiles and warps: a small fixed tile under the interpreter; on a GPU 16 rows for decode-like M
    (the weight tile's decode dominates, so one program covers few rows), else 64 or 128. Not tuned
    on a GPU yet."""
    if interpret_mode():
        return {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "num_warps": 4, "num_stages": 1}
    block_m = 16 if M <= 16 else (64 if M <= 256 else 128)
    return {"BLOCK_M": block_m, "BLOCK_N": 64 if N <= 256 else 128, "BLOCK_K": 64,
            "num_warps": 4 if block_m <= 64 else 8, "num_stages": 3}


def _dot_mode(dtype: torch.dtype) -> int:
    if interpret_mode() or dtype == torch.float32:
        return _DOT_IEEE
    return _DOT_FP16 if dtype == torch.float16 else _DOT_TF32


# --------------------------------------------------------------------------------------------
# Public op
# --------------------------------------------------------------------------------------------


def _check_args(x, codes, codebook, bias):
    """Shapes and dtypes of the 2-D problem; returns (M, N, K, d, code bits)."""
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    check_tensor("codes", codes, ndim=2, dtypes=(torch.uint8,))
    check_tensor("codebook", codebook, ndim=2, dtypes=(torch.float16,))
    M, K = x.shape
    N = codes.shape[0]
    k, d = codebook.shape
    if not 2 <= k <= 256:
        raise ValueError(f"codebook must have 2 to 256 codewords, got {k}")
    if K % d:
        raise ValueError(f"x has {K} input channels, not a multiple of the codeword length {d}")
    bits = code_bits(k)
    check_tensor("codes", codes, shape=(N, packed_row_bytes(K // d, bits)))
    check_tensor("bias", bias, shape=(N,), dtypes=(torch.float32,), allow_none=True)
    return M, N, K, d, bits


def vq_linear(x: Tensor, codes: Tensor, codebook: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``y = x @ decode(codes, codebook).T + bias`` with the weight decoded tile by tile in the GEMM
    (the CUDA implementation of ``ptq4vm::vq_linear``).

    Args:
        x: (..., K) fp32 / fp16 / bf16 activations.
        codes: (N, ceil(K/d * b / 8)) uint8, each row's K/d codes bit-packed as the module docstring
            says, b = ceil(log2 k); every code must be < k (not checked here: VQLinear checks on load).
        codebook: (k, d) fp16, 2 <= k <= 256, d divides K; contiguous.
        bias: (N,) fp32 or None.

    Returns:
        y: (..., N) in x's dtype.
    """
    y = _launch_vq_linear(x.reshape(-1, x.shape[-1]), codes, codebook, bias)
    return y.reshape(*x.shape[:-1], codes.shape[0])


def _launch_vq_linear(x, codes, codebook, bias):
    """The kernel on a 2-D problem: x (M, K) (any strides) -> y (M, N)."""
    M, N, K, d, bits = _check_args(x, codes, codebook, bias)
    check_devices(x=x, codes=codes, codebook=codebook, bias=bias)
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return y
    codes, codebook = codes.contiguous(), codebook.contiguous()
    cfg = launch_config(M, N, K)
    grid = (triton.cdiv(N, cfg["BLOCK_N"]), triton.cdiv(M, cfg["BLOCK_M"]))
    _vq_linear_kernel[grid](x, codes, codebook, bias if bias is not None else y, y, M, N, K, codes.shape[1],
                            x.stride(0), x.stride(1), codes.stride(0), y.stride(0), y.stride(1),
                            D=d, CODE_BITS=bits, HAS_BIAS=bias is not None, DOT=_dot_mode(x.dtype), **cfg)
    return y


# --------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------


def vq_linear_ref(x: Tensor, codes: Tensor, codebook: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Pure-PyTorch specification of :func:`vq_linear` (same arguments, same result up to the order
    of the fp32 summation): decode the whole weight, one fp32 matmul, bias, one rounding to x's dtype."""
    x2 = x.reshape(-1, x.shape[-1])
    M, N, K, d, bits = _check_args(x2, codes, codebook, bias)
    y = x2.float() @ decode_weight(codes, codebook, K).t()
    if bias is not None:
        y = y + bias
    return y.to(x.dtype).reshape(*x.shape[:-1], N)


def vq_linear_fake(x, codes, codebook, bias=None):
    return x.new_empty((*x.shape[:-1], codes.shape[0]))


# --------------------------------------------------------------------------------------------
# Codes layout (host side)
# --------------------------------------------------------------------------------------------


def code_bits(k: int) -> int:
    """Bits of one code of a k-entry codebook: ceil(log2 k)."""
    return max(1, math.ceil(math.log2(k)))


def packed_row_bytes(groups: int, bits: int) -> int:
    """Bytes of one packed row of ``groups`` codes of ``bits`` bits."""
    return (groups * bits + 7) // 8


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(O, G) integer codes in [0, 2^bits) -> (O, packed_row_bytes(G, bits)) uint8 bit streams."""
    rows, groups = codes.shape
    shifts = torch.arange(bits, device=codes.device)
    stream = ((codes.long()[..., None] >> shifts) & 1).reshape(rows, groups * bits).to(torch.uint8)
    stream = torch.nn.functional.pad(stream, (0, packed_row_bytes(groups, bits) * 8 - groups * bits))
    weights = (1 << torch.arange(8, device=codes.device)).to(torch.uint8)
    return (stream.reshape(rows, -1, 8) * weights).sum(-1, dtype=torch.uint8)


def unpack_codes(packed: torch.Tensor, groups: int, bits: int) -> torch.Tensor:
    """(O, R) uint8 bit streams -> (O, groups) int64 codes (inverse of :func:`pack_codes`)."""
    rows = packed.shape[0]
    stream = (packed[..., None] >> torch.arange(8, device=packed.device, dtype=torch.uint8)) & 1
    stream = stream.reshape(rows, -1)[:, : groups * bits].reshape(rows, groups, bits).long()
    return (stream << torch.arange(bits, device=packed.device)).sum(-1)


def decode_weight(codes: torch.Tensor, codebook: torch.Tensor, in_features: int) -> torch.Tensor:
    """Packed codes (O, R) uint8 and codebook (k, d) -> the fp32 weight (O, in_features)."""
    k, d = codebook.shape
    idx = unpack_codes(codes, in_features // d, code_bits(k))
    return codebook.float()[idx].reshape(codes.shape[0], in_features)
