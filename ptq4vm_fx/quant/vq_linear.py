"""The runtime vector-quantized linear: packed codes + an fp16 codebook, run by ``ptq4vm::vq_linear``.

``ptq4vm::vq_linear(x, codes, codebook, bias)``: x (…, C) float, codes (O, R) uint8 (each row's C/d
codes bit-packed, ``kernels/vq_linear.py`` gives the layout), codebook (k, d) fp16, bias (O,) fp32 or
None -> (…, O) in x's dtype. On CUDA it runs the Triton VQ GEMM, elsewhere its reference (decode,
one fp32 matmul, one rounding): the two agree up to the order of the fp32 summation.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..kernels.vq_linear import (
    code_bits,
    decode_weight,
    pack_codes,
    packed_row_bytes,
    unpack_codes,
    vq_linear,
    vq_linear_ref,
)


@torch.library.custom_op("ptq4vm::vq_linear", mutates_args=())
def vq_linear_op(x: Tensor, codes: Tensor, codebook: Tensor, bias: Optional[Tensor]) -> Tensor:
    """See the module docstring; the reference implementation (every device but CUDA)."""
    y = vq_linear_ref(x.reshape(-1, x.shape[-1]), codes, codebook, bias)
    return y.reshape(*x.shape[:-1], codes.shape[0])


@vq_linear_op.register_kernel("cuda")
def _(x, codes, codebook, bias):
    y = vq_linear(x.reshape(-1, x.shape[-1]), codes, codebook, bias)
    return y.reshape(*x.shape[:-1], codes.shape[0])


@vq_linear_op.register_fake
def _(x, codes, codebook, bias):
    return x.new_empty((*x.shape[:-1], codes.shape[0]))


class VQLinear(nn.Module):
    """x (…, in_features) float -> (…, out_features) in x's dtype, the weight vector-quantized.

    One codebook per layer. Buffers: ``codes`` (out_features, ceil(in_features/d * b / 8)) uint8,
    the bit-packed code rows (b = ceil(log2 k)); ``codebook`` (k, d) fp16; ``bias`` (out_features,)
    fp32 or None. A model's dtype cast (``.half()``, ``.float()``) leaves them as they are; device
    moves apply. Loading a state dict checks the codes' dtype and shape and that every code is < k.
    """

    def __init__(self, in_features: int, out_features: int, k: int, d: int, has_bias: bool):
        super().__init__()
        if not 2 <= k <= 256:
            raise InputError(f"VQLinear: k must be in [2, 256], got {k}")
        if d < 1 or in_features % d:
            raise InputError(f"VQLinear: in_features {in_features} is not a multiple of the codeword length {d}")
        self.in_features, self.out_features, self.k, self.d = in_features, out_features, k, d
        self.bits = code_bits(k)
        self.register_buffer("codes", torch.zeros(out_features, packed_row_bytes(in_features // d, self.bits),
                                                  dtype=torch.uint8))
        self.register_buffer("codebook", torch.zeros(k, d, dtype=torch.float16))
        self.register_buffer("bias", torch.zeros(out_features) if has_bias else None)

    def init_args(self) -> dict:
        """The constructor arguments, as plain values (for a file's module record)."""
        return {"in_features": self.in_features, "out_features": self.out_features, "k": self.k, "d": self.d,
                "has_bias": self.bias is not None}

    @classmethod
    def empty(cls, **args) -> VQLinear:
        """An instance of these sizes, to load a state dict into."""
        return cls(**args)

    @classmethod
    def from_codes(cls, codes: Tensor, codebook: Tensor, bias: Tensor | None) -> VQLinear:
        """codes (O, C/d) integer in [0, k), codebook (k, d) float (rounded to fp16), bias (O,) or None."""
        k, d = codebook.shape
        if codes.numel() and (codes.min() < 0 or codes.max() >= k):
            raise InputError(f"VQLinear: codes must be in [0, {k}), got [{int(codes.min())}, {int(codes.max())}]")
        module = cls(codes.shape[1] * d, codes.shape[0], k, d, bias is not None).to(codebook.device)
        module.codes.copy_(pack_codes(codes, module.bits))
        module.codebook.copy_(codebook)
        if bias is not None:
            module.bias.copy_(bias)
        return module

    def code_indices(self) -> Tensor:
        """(out_features, in_features / d) int64, the unpacked codes."""
        return unpack_codes(self.codes, self.in_features // self.d, self.bits)

    def weight(self) -> Tensor:
        """(out_features, in_features) fp32, the decoded weight."""
        return decode_weight(self.codes, self.codebook, self.in_features)

    @property
    def nominal_bits(self) -> float:
        """log2(k) / d bits per weight."""
        return math.log2(self.k) / self.d

    @property
    def storage_bits(self) -> float:
        """Bits per weight as stored: packed codes (row padding included) + the fp16 codebook (bias apart)."""
        return (self.codes.numel() * 8 + self.codebook.numel() * 16) / (self.in_features * self.out_features)

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.ptq4vm.vq_linear(x, self.codes, self.codebook, self.bias)

    def _apply(self, fn, recurse=True):
        """Device moves apply to every buffer; dtype casts leave the fp16 codebook and fp32 bias as they are."""
        kept = {name: b for name, b in self._buffers.items() if b is not None}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = self._buffers[name]
            if new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        codes = state_dict.get(prefix + "codes")
        if codes is not None:
            where = f"VQLinear {prefix[:-1] or '(root)'}"
            if codes.dtype != torch.uint8 or codes.shape != self.codes.shape:
                raise InputError(f"{where}: codes must be uint8 of shape {tuple(self.codes.shape)}, got "
                                 f"{str(codes.dtype).replace('torch.', '')} {tuple(codes.shape)} (a corrupt file?)")
            top = int(unpack_codes(codes, self.in_features // self.d, self.bits).max()) if codes.numel() else 0
            if top >= self.k:
                raise InputError(f"{where}: code {top} is out of range for a {self.k}-entry codebook (a corrupt file?)")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return (f"{self.in_features}->{self.out_features}, k={self.k}, d={self.d}, "
                f"{self.nominal_bits:.3g} bits/weight ({self.storage_bits:.3g} stored), bias={self.bias is not None}")
