"""The runtime vector-quantized linears: packed codes + an fp16 codebook, run by ``ptq4vm::vq_linear``.

``ptq4vm::vq_linear(x, codes, codebook, bias)`` (defined in :mod:`ptq4vm_fx.ops`): x (…, C) float,
codes (O, R) uint8 (each row's C/d codes bit-packed, ``kernels/vq_linear.py`` gives the layout),
codebook (k, d) fp16, bias (O,) fp32 or None -> (…, O) in x's dtype. On CUDA it runs the Triton VQ
GEMM, elsewhere its reference (decode, one fp32 matmul, one rounding): the two agree up to the order
of the fp32 summation.

Both forms expose the facts the report and serialization read from QuantizedLinear
(``quant/linear.py``): :meth:`init_args` / ``empty``, ``in_features``, ``out_features``, ``a_bits``
(None: float activations), ``dynamic``, ``smooth``, ``inv_smooth``, ``row_fold``,
:meth:`dequantized_weight`, and for :class:`VQActLinear` ``tokens`` and :meth:`static_act_qparams`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import ops  # noqa: F401  (registers torch.ops.ptq4vm)
from ..errors import InputError
from ..kernels.vq_linear import code_bits, decode_weight, pack_codes, packed_row_bytes, unpack_codes
from .linear import KeepsBufferDtypes


class VQLinear(KeepsBufferDtypes):
    """x (…, in_features) float -> (…, out_features) in x's dtype, the weight vector-quantized.

    One codebook per layer. Buffers: ``codes`` (out_features, ceil(in_features/d * b / 8)) uint8,
    the bit-packed code rows (b = ceil(log2 k)); ``codebook`` (k, d) fp16; ``bias`` (out_features,)
    fp32 or None; ``smooth``, ``inv_smooth`` (in_features,) and ``row_fold`` (out_features,) ones, not
    saved (no smoothing, no fold). A model's dtype cast (``.half()``, ``.float()``) leaves them as they are; device
    moves apply. Loading a state dict checks the codes' dtype and shape and that every code is < k.
    """

    a_bits = None  # activations stay floating point
    dynamic = False
    INIT_ARGS = {"in_features": int, "out_features": int, "k": int, "d": int, "has_bias": bool}  # init_args()'s

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
        # the facts QuantizedLinear records, constant here (not saved): no smoothing, no row fold
        self.register_buffer("smooth", torch.ones(in_features), persistent=False)
        self.register_buffer("inv_smooth", torch.ones(in_features), persistent=False)
        self.register_buffer("row_fold", torch.ones(out_features), persistent=False)

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

    def dequantized_weight(self) -> Tensor:
        """(out_features, in_features) fp32: the weight the layer multiplies by (the decoded one)."""
        return self.weight()

    def code_counts(self) -> Tensor:
        """(k,) int64: how many sub-vectors use each codeword."""
        return torch.bincount(self.code_indices().reshape(-1), minlength=self.k)

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


class VQActLinear(VQLinear):
    """A VQ weight behind per-token static activation quantization (the ``vimvq`` ``w2a8`` preset):
    x (…, L, in_features) -> (…, L, out_features) in x's dtype.

    ``ptq4vm::quantize_per_token`` gives the codes of ``x * inv_smooth`` (section 3.1's formula), they
    are dequantized in fp32 (``(q - z) * s``) and ``ptq4vm::vq_linear`` multiplies them by the decoded
    weight, whose codebook is fitted to the smoothed weight ``W * m``: a VQ GEMM on fake-quantized
    activations (no integer GEMM). Extra buffers: ``inv_smooth`` and ``smooth`` (in_features,) fp32,
    ``act_scale`` (L,) fp32, ``act_zero_point`` (L,) int32, signed.
    """

    INIT_ARGS = {**VQLinear.INIT_ARGS, "tokens": int, "a_bits": int}

    def __init__(self, in_features: int, out_features: int, k: int, d: int, has_bias: bool, tokens: int,
                 a_bits: int):
        super().__init__(in_features, out_features, k, d, has_bias)
        if not 2 <= a_bits <= 8:
            raise InputError(f"VQActLinear: a_bits must be in [2, 8], got {a_bits}")
        self.a_bits = a_bits
        self.register_buffer("inv_smooth", torch.ones(in_features))  # saved here
        self.register_buffer("smooth", torch.ones(in_features))
        self.register_buffer("act_scale", torch.ones(tokens))
        self.register_buffer("act_zero_point", torch.zeros(tokens, dtype=torch.int32))

    @property
    def tokens(self) -> int:
        return self.act_scale.shape[0]

    def init_args(self) -> dict:
        return {**super().init_args(), "tokens": self.tokens, "a_bits": self.a_bits}

    @classmethod
    def from_parts(cls, weight: VQLinear, smooth: Tensor, act_scale: Tensor, act_zero_point: Tensor,
                   a_bits: int) -> VQActLinear:
        """``weight`` (its codebook fitted to W * smooth) with the activation quantizer: smooth (C,),
        act_scale (L,) and signed act_zero_point (L,) of x / smooth."""
        module = cls(weight.in_features, weight.out_features, weight.k, weight.d, weight.bias is not None,
                     act_scale.shape[0], a_bits).to(weight.codes.device)
        module.load_state_dict({**weight.state_dict(), "smooth": smooth.float(),
                                "inv_smooth": torch.reciprocal(smooth.float()), "act_scale": act_scale.float(),
                                "act_zero_point": act_zero_point.to(torch.int32)})
        return module

    def static_act_qparams(self) -> tuple[Tensor, Tensor]:
        """(scale, signed zero point), (L,) fp32 each."""
        return self.act_scale, self.act_zero_point.float()

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2] != self.tokens:
            raise InputError(f"input has {x.shape[-2]} tokens but the per-token scales were calibrated for "
                             f"{self.tokens}: use the image size the model was calibrated at")
        q = torch.ops.ptq4vm.quantize_per_token(x, self.inv_smooth, self.act_scale, self.act_zero_point, self.a_bits)
        xd = (q.float() - self.act_zero_point[:, None]) * self.act_scale[:, None]
        return torch.ops.ptq4vm.vq_linear(xd, self.codes, self.codebook, self.bias).to(x.dtype)


# both forms, for code that finds the vector-quantized linears of a model
VQ_LINEARS = (VQLinear, VQActLinear)
