"""The two forms of a quantized linear: fake-quant (simulation, JLSS) and integer (int8 buffers).

Both expose the same facts, so reports and serialization read them without asking which form
they hold: :meth:`init_args` (plain constructor arguments; ``cls.empty(**args)`` rebuilds an
instance to load a state dict into), ``in_features``, ``out_features``, ``w_bits``, ``a_bits``,
``dynamic``, ``tokens``,
``smooth`` (C,) the smoothing scale m, ``inv_smooth`` (C,) what the quantizer multiplies its input by
(1/m, or ones once a producer absorbed it), ``row_fold`` (O,) the factor a fold multiplied each output
row by (a consumer's 1/m on x_proj's dt rows, else 1), :meth:`static_act_qparams` and
:meth:`dequantized_weight`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops  # noqa: F401  (registers torch.ops.ptq4vm)
from ..errors import InputError
from . import integer
from .fake_quant import dynamic_act_qparams, fake_quant_act, fake_quant_weight, weight_codes


class KeepsBufferDtypes(nn.Module):
    """A module whose buffers keep their dtypes under a model's dtype cast (``.half()``,
    ``.to(torch.bfloat16)``, ``.float()``) while device moves apply to all of them: rounding fp32
    scales to half precision would change the quantization (a weight scale of 1e-5 is subnormal in
    fp16), and an fp16 codebook is exact as it is. The output takes the input's dtype."""

    def _apply(self, fn, recurse=True):
        kept = {name: b for name, b in self._buffers.items() if b is not None}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = self._buffers[name]
            if new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self


class FakeQuantLinear(nn.Module):
    """Simulated W{w_bits}A{a_bits} linear with learnable smoothing and step sizes (log-parametrised).

    x (…, L, C) -> (…, L, O). ``weight`` (O, C) is the unsmoothed float weight; the effective weight
    is ``weight * m`` with ``m = exp(log_smooth)`` (C,). The input is divided by ``m`` here unless
    ``input_folded`` says a producer (norm weight, preceding linear rows) already did it.
    Activation scale and signed zero point are per token (L,) unless ``dynamic``.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, tokens: int, w_bits: int, a_bits: int, dynamic: bool):
        super().__init__()
        out_features, in_features = weight.shape
        self.in_features, self.out_features = in_features, out_features
        self.w_bits, self.a_bits, self.dynamic = w_bits, a_bits, dynamic
        self.register_buffer("weight", weight.detach().float().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.log_smooth = nn.Parameter(torch.zeros(in_features))
        self.log_w_scale = nn.Parameter(torch.zeros(out_features))
        self.log_act_scale = nn.Parameter(torch.zeros(tokens))
        self.register_buffer("act_zero_point", torch.zeros(tokens))
        self.register_buffer("input_folded", torch.tensor(False))
        self.register_buffer("row_fold", torch.ones(out_features))
        self.to(weight.device)
        self.quant_enabled = True  # False: the exact float smoothing identity, for checks and reports

    @property
    def smooth(self) -> Tensor:
        return torch.exp(self.log_smooth)

    @property
    def tokens(self) -> int:
        return self.log_act_scale.shape[0]

    INIT_ARGS = {"in_features": int, "out_features": int, "tokens": int, "w_bits": int, "a_bits": int,
                 "dynamic": bool, "has_bias": bool}  # init_args()'s schema (a file's module record)

    def init_args(self) -> dict:
        return init_args(self)

    @classmethod
    def empty(cls, in_features: int, out_features: int, tokens: int, w_bits: int, a_bits: int, dynamic: bool,
              has_bias: bool) -> FakeQuantLinear:
        """An instance of these sizes with zero tensors, to load a state dict into."""
        bias = torch.zeros(out_features) if has_bias else None
        return cls(torch.zeros(out_features, in_features), bias, tokens, w_bits, a_bits, dynamic)

    @property
    def inv_smooth(self) -> Tensor:
        """(C,) the factor the quantizer applies to its input: 1/m, or ones once folded upstream."""
        if bool(self.input_folded):
            return torch.ones_like(self.log_smooth)
        return torch.reciprocal(self.smooth)

    def effective_weight(self) -> Tensor:
        return self.weight * self.smooth

    def static_act_qparams(self) -> tuple[Tensor, Tensor]:
        """(scale, signed zero point), (L,) fp32 each."""
        return torch.exp(self.log_act_scale), self.act_zero_point

    def dequantized_weight(self) -> Tensor:
        """(O, C) fp32: the weight the layer multiplies by."""
        return fake_quant_weight(self.effective_weight(), torch.exp(self.log_w_scale), self.w_bits)

    def act_qparams(self, x: Tensor, inv_smooth: Tensor) -> tuple[Tensor, Tensor]:
        if self.dynamic:
            return dynamic_act_qparams(x, inv_smooth, self.a_bits)
        if x.shape[-2] != self.log_act_scale.shape[0]:
            raise InputError(
                f"input has {x.shape[-2]} tokens but the per-token scales were calibrated for "
                f"{self.log_act_scale.shape[0]}: use the image size the model was calibrated at"
            )
        return torch.exp(self.log_act_scale), self.act_zero_point

    def forward(self, x: Tensor) -> Tensor:
        inv = self.inv_smooth
        if not self.quant_enabled:
            return F.linear(x.float() * inv, self.effective_weight(), self.bias).to(x.dtype)
        scale, zero_point = self.act_qparams(x, inv)
        xq = fake_quant_act(x, inv, scale, zero_point, self.a_bits)
        wq = fake_quant_weight(self.effective_weight(), torch.exp(self.log_w_scale), self.w_bits)
        return F.linear(xq, wq, self.bias).to(x.dtype)

    @torch.no_grad()
    def to_quantized(self) -> QuantizedLinear:
        """Pack into the integer form: the same integer codes, int8 weights and int32 column sums."""
        w_scale = torch.exp(self.log_w_scale)
        wq = weight_codes(self.effective_weight(), w_scale, self.w_bits).to(torch.int8)
        q = QuantizedLinear(self.in_features, self.out_features, self.log_act_scale.shape[0],
                            self.w_bits, self.a_bits, self.dynamic, self.bias is not None).to(wq.device)
        q.wq.copy_(wq)
        q.w_scale.copy_(w_scale)
        q.w_colsum.copy_(integer.column_sums(wq))
        q.inv_smooth.copy_(self.inv_smooth)
        q.row_fold.copy_(self.row_fold)
        q.smooth.copy_(self.smooth)
        q.act_scale.copy_(torch.exp(self.log_act_scale))
        q.act_zero_point.copy_(self.act_zero_point.to(torch.int32))
        if self.bias is not None:
            q.bias.copy_(self.bias)
        return q

    def extra_repr(self) -> str:
        mode = "dynamic" if self.dynamic else f"tokens={self.tokens}"
        return f"{self.in_features}->{self.out_features}, W{self.w_bits}A{self.a_bits}, {mode}"


class QuantizedLinear(KeepsBufferDtypes):
    """Integer linear: ``ptq4vm::quantize_per_token`` then ``ptq4vm::int8_linear`` (docs/design.md section 3).

    Buffers: wq int8 (O, C); w_scale fp32 (O,); w_colsum int32 (O,); bias fp32 (O,) or None;
    inv_smooth fp32 (C,); act_scale fp32 (L,); act_zero_point int32 (L,), signed; smooth fp32 (C,),
    the smoothing scale m, kept for reports (``inv_smooth`` is 1/m, or ones where 1/m is folded);
    row_fold fp32 (O,) (module docstring).
    They stay fp32 when the model is cast (``.half()``): the output takes the input's dtype.
    """

    def __init__(self, in_features: int, out_features: int, tokens: int, w_bits: int, a_bits: int,
                 dynamic: bool, has_bias: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.w_bits, self.a_bits, self.dynamic = w_bits, a_bits, dynamic
        self.register_buffer("wq", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("w_scale", torch.ones(out_features))
        self.register_buffer("w_colsum", torch.zeros(out_features, dtype=torch.int32))
        self.register_buffer("bias", torch.zeros(out_features) if has_bias else None)
        self.register_buffer("inv_smooth", torch.ones(in_features))
        self.register_buffer("act_scale", torch.ones(tokens))
        self.register_buffer("act_zero_point", torch.zeros(tokens, dtype=torch.int32))
        self.register_buffer("smooth", torch.ones(in_features))
        self.register_buffer("row_fold", torch.ones(out_features))

    INIT_ARGS = FakeQuantLinear.INIT_ARGS

    @property
    def tokens(self) -> int:
        return self.act_scale.shape[0]

    def init_args(self) -> dict:
        return init_args(self)

    @classmethod
    def empty(cls, **args) -> QuantizedLinear:
        """An instance of these sizes, to load a state dict into."""
        return cls(**args)

    def static_act_qparams(self) -> tuple[Tensor, Tensor]:
        """(scale, signed zero point), (L,) fp32 each."""
        return self.act_scale, self.act_zero_point.float()

    def dequantized_weight(self) -> Tensor:
        """(O, C) fp32: the weight the layer multiplies by."""
        return self.wq.float() * self.w_scale[:, None]

    def forward(self, x: Tensor) -> Tensor:
        if self.dynamic:
            scale, zero_point = dynamic_act_qparams(x, self.inv_smooth, self.a_bits)
        else:
            scale, zero_point = self.act_scale, self.act_zero_point
        xq = torch.ops.ptq4vm.quantize_per_token(x, self.inv_smooth, scale, zero_point, self.a_bits)
        return torch.ops.ptq4vm.int8_linear(xq, scale, zero_point, self.wq, self.w_scale, self.w_colsum, self.bias,
                                            x.dtype)

    def extra_repr(self) -> str:
        mode = "dynamic" if self.dynamic else f"tokens={self.tokens}"
        return f"{self.in_features}->{self.out_features}, int W{self.w_bits}A{self.a_bits}, {mode}"


def init_args(module: FakeQuantLinear | QuantizedLinear) -> dict:
    """The constructor arguments of either form, as plain values (QuantizedLinear's signature)."""
    return {"in_features": module.in_features, "out_features": module.out_features, "tokens": module.tokens,
            "w_bits": module.w_bits, "a_bits": module.a_bits, "dynamic": bool(module.dynamic),
            "has_bias": module.bias is not None}


# both forms, for code that finds the quantized linears of a model without caring which form they are in
QUANTIZED_LINEARS = (FakeQuantLinear, QuantizedLinear)
