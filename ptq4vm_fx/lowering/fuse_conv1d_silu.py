"""Rewrite: a float model's depthwise conv1d + SiLU as one ``ptq4vm_fused::conv1d_silu`` kernel.

Causal (forward branch), either spelling:
    v = conv1d(x, w, b, padding=W-1, groups=D)[..., :-(W-1)]     or  conv1d(pad(x, (W-1, 0)), w, b, groups=D)
Anticausal (backward branch, no flips of the activations):
    v = conv1d(pad(x, (0, W-1)), w.flip(-1), b, groups=D)
then
    u = silu(v)                                                    (batch, D, L)
 -> u = ptq4vm_fused::conv1d_silu(x, w, b, reverse)                stored token-major

The kernel computes in fp32; in a model run in fp16 / bf16 it rounds v and u to that dtype, as the
conv and the SiLU do. Anchored on the SiLU. It runs after ``conv1d_silu_quantize`` (options.REWRITES),
so where a quantize follows (x_proj quantized) that fusion has already taken the chain; this one
takes the rest: a float model's convs, or those feeding a float x_proj.
"""

from __future__ import annotations

from typing import Any

from torch.fx import GraphModule, Node

from .fused_ops import FUSED_OPS
from .match import bind, flip_dims, is_op, tensor
from .quantize_site import KERNEL_DTYPES
from .rewrite import Replacement, apply_rewrite

NAME = "conv1d_silu"
FUSED = FUSED_OPS.conv1d_silu


def rewrite(gm: GraphModule) -> int:
    """In place; returns the number of conv1d + SiLU pairs fused."""
    return apply_rewrite(gm, NAME, [n for n in gm.graph.nodes if is_op(n, "silu")], _plan)


def _plan(node: Node) -> None | str | Replacement:
    conv = match_silu_conv(node)
    if conv is None or isinstance(conv, str):
        return conv
    return Replacement(node, FUSED.default, conv, (node,))


def match_silu_conv(node: Any) -> None | str | tuple[Node, Node, Any, bool]:
    """For ``node`` an out-of-place SiLU of a conv :func:`match_conv` takes: its (x, w, b, reverse), a reason,
    or None."""
    silu = bind(node, "silu")
    if not silu or silu["inplace"]:
        return None
    return match_conv(silu["input"])


def match_conv(v: Any) -> None | str | tuple[Node, Node, Any, bool]:
    """For ``v`` a causal / anticausal depthwise conv1d (module docstring): (x, w, b, reverse) with
    w the unflipped (D, 1, W) weight, a reason the kernel cannot take it, or None."""
    form = _conv_form(v)
    if form is None:
        return None
    conv, x, weight, reverse = form
    xt, wt, vt = tensor(x), tensor(weight), tensor(v)
    if xt is None or wt is None or vt is None or xt.dim() != 3 or wt.dim() != 3:
        return None
    d = xt.shape[1]
    if tuple(wt.shape[:2]) != (d, 1) or conv["groups"] != d or conv["dilation"] not in (1, (1,), [1]):
        return "not a depthwise conv1d"
    if conv["stride"] not in (1, (1,), [1]):
        return "a strided conv1d"
    if xt.dtype not in KERNEL_DTYPES or vt.dtype != xt.dtype:
        return f"conv1d of a {xt.dtype} input computed in {vt.dtype}"
    return x, weight, conv["bias"], reverse


def _conv_form(v: Any) -> tuple[dict, Node, Node, bool] | None:
    """(conv1d arguments, x, unflipped weight, reverse) when ``v`` has one of the three forms."""
    sliced = bind(v, "getitem")
    if sliced is not None:  # conv1d(x, w, padding=W-1)[..., :-(W-1)]
        conv = bind(sliced["input"], "conv1d")
        width = _width(conv)
        if width is None or width < 2 or _single(conv["padding"]) != width - 1:
            return None
        if not _drops_last(sliced["index"], width - 1):
            return None
        return conv, conv["input"], conv["weight"], False
    conv = bind(v, "conv1d")
    width = _width(conv)
    padded = conv and bind(conv["input"], "pad")
    if width is None or not padded or _single(conv["padding"]) != 0:
        return None
    if padded["mode"] != "constant" or padded["value"] not in (None, 0, 0.0):
        return None
    pad = tuple(padded["pad"]) if isinstance(padded["pad"], (tuple, list)) else None
    if pad == (width - 1, 0):  # causal, explicit left padding
        return conv, padded["input"], conv["weight"], False
    if pad == (0, width - 1) and flip_dims(conv["weight"]) in ((-1,), (2,)):  # anticausal
        return conv, padded["input"], conv["weight"].args[0], True
    return None


def _width(conv: dict | None) -> int | None:
    w = tensor(conv["weight"]) if conv else None
    return int(w.shape[-1]) if w is not None and w.dim() == 3 else None


def _single(v: Any) -> Any:
    return v[0] if isinstance(v, (tuple, list)) and len(v) == 1 else v


def _drops_last(index: Any, n: int) -> bool:
    """``index`` is ``[..., :-n]`` (or ``[:, :, :-n]``) on a 3-D tensor."""
    if not isinstance(index, tuple) or not index:
        return False
    last, lead = index[-1], index[:-1]
    full = slice(None, None, None)
    if lead not in ((Ellipsis,), (full, full)):
        return False
    return isinstance(last, slice) and last.start in (None, 0) and last.stop == -n and last.step in (None, 1)
