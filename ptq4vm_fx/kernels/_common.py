"""Shared pieces of the Triton kernels: the rounding / quantization device helpers and
host-side argument validation.

Numerics contract shared by every kernel that quantizes activations (see ``quantize.py``):

    q = clamp(round((x[c] * inv_smooth[c]) * inv_scale[t]) + zp[t], -2^(b-1), 2^(b-1) - 1)

evaluated in fp32 in exactly that order, with round = round half to even (``torch.round``).

Float intermediates of a model run in fp16 / bf16 are rounded where PyTorch's ops round them
(:func:`_round_to`): the kernels compute in fp32 and round to the model's dtype at the same points.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..errors import InputError
from ..quant import integer

# --------------------------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------------------------


@triton.jit
def _round_half_even(v):
    """Round an fp32 tensor to the nearest integer, ties to even, without libdevice.

    ``v`` is first clamped to [-2^22, 2^22]; adding then subtracting 1.5 * 2^23 forces the
    fp32 adder to round at the units place with the hardware's round-to-nearest-even mode.
    The clamp also keeps the add from being contracted into an FMA with the product that
    produced ``v``. Every caller saturates to at most 8 bits afterwards, so the clamp never
    changes a result.
    """
    v = tl.minimum(tl.maximum(v, -4194304.0), 4194304.0)
    return (v + 12582912.0) - 12582912.0


@triton.jit
def _round_to(x, dtype: tl.constexpr):
    """An fp32 tensor rounded to ``dtype`` (tl.float32 / float16 / bfloat16), to nearest even, and
    returned as fp32 (exactly representable in ``dtype``, so a later cast to it is exact).

    bf16 is rounded on the bits (add half an ulp minus one, plus the kept lsb, then truncate):
    the Triton interpreter converts fp32 -> bf16 by truncation, a GPU to nearest even; this
    gives the GPU's result on both (NaN stays NaN)."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        return tl.where(x != x, x, bits.to(tl.float32, bitcast=True))
    elif dtype == tl.float16:
        return x.to(tl.float16).to(tl.float32)
    else:
        return x


@triton.jit
def _log1p_unit(a):
    """log(1 + a) fp32 for a in [0, 1]: 2 atanh(s) with s = a / (2 + a) <= 1/3, its odd series up to
    s^13 (truncation below 2e-8 relative; a dozen instructions where tl.log's accurate log is ~35)."""
    s = a / (2.0 + a)
    s2 = s * s
    p = s2 * (1.0 / 13.0) + (1.0 / 11.0)
    p = p * s2 + (1.0 / 9.0)
    p = p * s2 + (1.0 / 7.0)
    p = p * s2 + (1.0 / 5.0)
    p = p * s2 + (1.0 / 3.0)
    p = p * s2 + 1.0
    return (2.0 * s) * p


@triton.jit
def _softplus(x):
    """log(1 + exp(x)) fp32 as max(x, 0) + log1p(exp(-|x|)); equals x in fp32 above 20, where the
    reference switches to x. exp is exp2 of x log2(e), as tl.exp computes it, but with subnormal
    results flushed (tl.exp keeps them at three more instructions): they change nothing here."""
    return tl.maximum(x, 0.0) + _log1p_unit(tl.exp2(tl.abs(x) * -1.4426950408889634))


@triton.jit
def _silu(z):
    """z / (1 + exp(-z)) fp32, exp as in :func:`_softplus`."""
    return z / (1.0 + tl.exp2(z * -1.4426950408889634))


@triton.jit
def _quantize_values(x, inv_smooth, inv_scale, zp, qmin, qmax):
    """Quantize an fp32 tile with the contract above; all operands broadcast against ``x``.

    ``inv_smooth`` / ``inv_scale``: fp32, ``zp``: int32, ``qmin`` / ``qmax``: fp32 scalars (the
    host passes them as Python floats so that no value gets specialized). Returns int8.
    """
    p = x * inv_smooth
    v = p * inv_scale
    q = _round_half_even(v) + zp.to(tl.float32)
    q = tl.minimum(tl.maximum(q, qmin), qmax)
    return q.to(tl.int8)


# --------------------------------------------------------------------------------------------
# Host helpers
# --------------------------------------------------------------------------------------------

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# the Triton dtype of each float dtype (kernel constexprs naming a rounding dtype)
TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def interpret_mode() -> bool:
    """True when Triton runs kernels through its CPU interpreter (read at call time)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def check_tensor(name, t, *, ndim=None, shape=None, dtypes=None, allow_none=False):
    """Validate one argument, raising ``ValueError`` that names the offending argument."""
    if t is None:
        if allow_none:
            return
        raise ValueError(f"{name} must be a tensor, got None")
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")  # noqa: TRY004 (API: ValueError)
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{name} must have dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")


def check_devices(**tensors) -> torch.device:
    """All given (non-None) tensors must share one device, usable by Triton."""
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {v.device for v in present.values()}
    if len(devices) != 1:
        desc = ", ".join(f"{k}={v.device}" for k, v in present.items())
        raise ValueError(f"all tensors must be on the same device, got {desc}")
    device = devices.pop()
    if device.type == "cpu" and not interpret_mode():
        raise ValueError("tensors are on the CPU: Triton kernels need a GPU device, or TRITON_INTERPRET=1 "
                         "set before triton is imported")
    return device


def check_int(name, value, lo, hi=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")  # noqa: TRY004 (API: ValueError)
    if value < lo or (hi is not None and value > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be in {rng}, got {value}")


def check_quant_params(inv_smooth, inv_scale, zero_point, bits, tokens, channels):
    """Validate the static per-token quantization parameters.

    inv_smooth: (channels,) fp32 or None; inv_scale: (tokens,) fp32; zero_point: (tokens,) int32;
    bits: int in [2, 8]; tokens: int >= 1.
    """
    check_int("tokens", tokens, 1)
    check_int("bits", bits, 2, 8)
    check_tensor("inv_smooth", inv_smooth, shape=(channels,), dtypes=(torch.float32,), allow_none=True)
    check_tensor("inv_scale", inv_scale, shape=(tokens,), dtypes=(torch.float32,))
    check_tensor("zero_point", zero_point, shape=(tokens,), dtypes=(torch.int32,))


def qrange(bits: int) -> tuple[float, float]:
    """:func:`ptq4vm_fx.quant.integer.act_range` as floats (kernel arguments)."""
    lo, hi = integer.act_range(bits)
    return float(lo), float(hi)


def vec(t):
    """A contiguous view of a small 1-D parameter (None passes through)."""
    return None if t is None else t.contiguous()


def f32(t):
    """A small float parameter as contiguous fp32 (no copy when it is already; None, or anything not a
    tensor, passes through for the argument checks to name)."""
    return t.float().contiguous() if isinstance(t, torch.Tensor) else t


def token_params(scale, zero_point, leading, op: str):
    """The quantization parameters of an op's activations as the launchers take them.

    ``scale`` / ``zero_point`` (signed) are per-token static, (L,) with L = ``leading[-1]``, or per
    row, of shape ``leading`` (the activations' leading shape, dynamic quantization). Returns
    (scale (T,) fp32, zero_point (T,) int32, T): row m of the flattened activations takes entry m % T.
    """
    leading = tuple(leading)
    check_tensor("scale", scale)
    check_tensor("zero_point", zero_point)
    if tuple(scale.shape) != tuple(zero_point.shape):
        raise InputError(f"{op}: scale {tuple(scale.shape)} and zero_point {tuple(zero_point.shape)} differ in shape")
    if tuple(scale.shape) == leading and len(leading) > 1:
        scale, zero_point = scale.reshape(-1), zero_point.reshape(-1)
    elif not (scale.dim() == 1 and len(leading) >= 1 and scale.shape[0] == leading[-1]):
        raise InputError(
            f"{op}: the input has {leading[-1] if leading else 1} tokens but the quantization parameters were "
            f"calibrated for {scale.shape[0] if scale.dim() == 1 else tuple(scale.shape)} tokens; per-token static "
            f"scales only fit the image size they were calibrated at (input leading shape {leading})"
        )
    return scale.float().contiguous(), zero_point.to(torch.int32).contiguous(), scale.shape[0]


def inverse_token_params(scale, zero_point, leading, op: str):
    """:func:`token_params` with the scale inverted as every quantizer takes it:
    (inv_scale (T,) fp32 = :func:`ptq4vm_fx.quant.integer.reciprocal_scale`, zero_point (T,) int32, T)."""
    scale, zero_point, tokens = token_params(scale, zero_point, leading, op)
    return integer.reciprocal_scale(scale), zero_point, tokens

