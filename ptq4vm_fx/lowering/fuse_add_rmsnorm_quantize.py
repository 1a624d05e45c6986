"""Rewrite: the in_proj input quantized by the residual add + RMSNorm kernel.

    r  = hidden + residual                                          (fp32; optional)
    xf = r, or r.to(dtype).float()                                  (dtype fp16 / bf16: a norm in half)
    y  = (xf * rsqrt(mean(xf ** 2, -1, keepdim=True) + eps)) * weight
    xq = ptq4vm::quantize_per_token(y, or y.to(dtype), inv_smooth, scale, zero_point, bits)
 -> xq, r = ptq4vm_fused::add_rmsnorm_quantize(hidden, residual, weight, eps, inv_smooth, scale, ..., dtype)

Value-preserving casts are looked through. A norm in half (Vim's block in fp16 / bf16 with its
residual in fp32) rounds its input and its output to the same dtype; the kernel rounds at both
points (``norm_dtype``; float32 when neither is rounded). After convert the smoothing is folded
into ``weight`` and ``inv_smooth`` is ones (an exact multiply). The normalised activations never
reach memory in float. When the norm's input is not an fp32 add of two same-shaped tensors, the
kernel normalises that input without the add. Anchored on the quantize call.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import GraphModule, Node

from .fused_ops import FUSED_OPS
from .match import bind, norm_dim, rounding, strip_casts, tensor, widened
from .quantize_site import KERNEL_DTYPES, StaticQuantize, quantize_input, quantize_nodes, static_quantize
from .rewrite import Replacement, apply_rewrite

NAME = "add_rmsnorm_quantize"
FUSED = FUSED_OPS.add_rmsnorm_quantize


def rewrite(gm: GraphModule) -> int:
    """In place; returns the number of norm + quantize pairs fused."""
    return apply_rewrite(gm, NAME, quantize_nodes(gm), _plan)


def _plan(node: Node) -> None | str | Replacement:
    normed, out_dtype = rounding(strip_casts(quantize_input(node)))
    norm = _match_rmsnorm(strip_casts(normed))
    if norm is None or isinstance(norm, str):
        return norm
    source, weight, eps, in_dtype = norm
    if in_dtype != out_dtype:
        return f"the norm rounds its input to {in_dtype} but its output to {out_dtype}"
    site = static_quantize(node)
    if not isinstance(site, StaticQuantize):
        return site
    added = _fp32_add(source)
    if added is None:  # outputs (xq, residual_out): the residual output replaces nothing
        return Replacement(node, FUSED.default, (source, None, weight, eps, *site.qparams, out_dtype), (node, None))
    args = (added["other"], added["input"], weight, eps, *site.qparams, out_dtype)
    return Replacement(source.next, FUSED.default, args, (node, source))


def _match_rmsnorm(normed: Node) -> None | str | tuple[Node, Node, float, torch.dtype]:
    """For ``normed = (xf * rsqrt(mean(xf**2, -1, keepdim) + eps)) * weight``: (the source of xf,
    weight, eps, the dtype xf was rounded to on the way (float32: none)), a reason when it is an
    RMSNorm the kernel cannot compute, or None."""
    scaled = bind(normed, "mul")
    if scaled is None:
        return None
    for prod, weight in ((scaled["input"], scaled["other"]), (scaled["other"], scaled["input"])):  # noqa: B007
        parts = _normalised(prod)
        if parts is not None:
            xf, eps = parts
            break
    else:
        return None
    weight = strip_casts(weight)
    weight = strip_casts(widened(weight) or weight)  # the kernel reads a half weight in fp32 itself
    w, x, y = tensor(weight), tensor(xf), tensor(normed)
    if w is None or x is None or tuple(w.shape) != (x.shape[-1],):
        return "the norm weight is not a vector over the channels"
    if x.dtype != torch.float32 or y.dtype != torch.float32:
        return f"the norm is computed in {x.dtype} (the kernel computes in float32)"
    source, dtype = _norm_input(xf)
    return source, weight, eps, dtype


def _norm_input(xf: Node) -> tuple[Node, torch.dtype]:
    """The value the fp32 ``xf`` holds and the dtype it was rounded to on the way: (r, dtype) for
    ``xf = r.to(dtype).float()``, (h, h's dtype) for ``xf = h.float()`` with h already in fp16 /
    bf16, (xf's source, float32) otherwise."""
    half = widened(xf)
    if half is None:
        return strip_casts(xf), torch.float32
    source, dtype = rounding(strip_casts(half))
    if dtype == torch.float32:  # values that already are fp16 / bf16: rounding them changes nothing
        return half, tensor(half).dtype
    return strip_casts(source), dtype


def _normalised(prod: Any) -> tuple[Node, float] | None:
    """For ``prod = xf * rsqrt(mean(xf ** 2, -1, keepdim=True) + eps)``: (xf, eps), else None."""
    mul = bind(prod, "mul")
    if mul is None:
        return None
    for xf, rstd in ((mul["input"], mul["other"]), (mul["other"], mul["input"])):
        root = bind(rstd, "rsqrt")
        shifted = root and bind(root["input"], "add")
        if not shifted or shifted["alpha"] != 1:
            continue
        for mean_node, eps in ((shifted["input"], shifted["other"]), (shifted["other"], shifted["input"])):
            mean = bind(mean_node, "mean")
            if mean is None or not isinstance(eps, (int, float)) or isinstance(eps, bool):
                continue
            square = bind(mean["input"], "pow")
            x = tensor(xf)
            if (
                square is not None
                and square["exponent"] == 2
                and strip_casts(square["input"]) is strip_casts(xf)
                and x is not None
                and mean["keepdim"] is True
                and mean["dtype"] is None
                and _last_dim(mean["dim"], x.dim())
            ):
                return xf, float(eps)
    return None


def _last_dim(dim: Any, ndim: int) -> bool:
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    return len(dims) == 1 and isinstance(dims[0], int) and norm_dim(dims[0], ndim) == ndim - 1


def _fp32_add(source: Node) -> dict[str, Any] | None:
    """The arguments of ``source = a + b`` when the kernel's fp32 add reproduces it exactly."""
    added = bind(source, "add")
    if added is None or added["alpha"] != 1:
        return None
    out, a, b = tensor(source), tensor(added["input"]), tensor(added["other"])
    if out is None or a is None or b is None or out.dtype != torch.float32:
        return None
    if a.shape != out.shape or b.shape != out.shape or not {a.dtype, b.dtype} <= set(KERNEL_DTYPES):
        return None
    return added
