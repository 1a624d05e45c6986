"""A ``ptq4vm::quantize_per_token`` call with static per-token parameters: the piece every
quantize fusion absorbs into a producer kernel."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.fx import Node

from .. import ops  # noqa: F401  (registers torch.ops.ptq4vm)
from .match import bind_custom, is_custom_op, tensor

QUANTIZE = torch.ops.ptq4vm.quantize_per_token
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class StaticQuantize:
    """``node = quantize_per_token(x, inv_smooth, scale, zero_point, bits)``: x (..., L, C) float,
    inv_smooth (C,), scale and zero_point (L,) (graph values), bits an int."""

    node: Node
    x: Node
    inv_smooth: Node
    scale: Node
    zero_point: Node
    bits: int

    @property
    def qparams(self) -> tuple:
        """(inv_smooth, scale, zero_point, bits), the trailing arguments of every fused quantize op."""
        return self.inv_smooth, self.scale, self.zero_point, self.bits


def quantize_nodes(gm: torch.fx.GraphModule) -> list[Node]:
    """The ``ptq4vm::quantize_per_token`` calls of ``gm``, in graph order."""
    return [n for n in gm.graph.nodes if is_custom_op(n, QUANTIZE)]


def quantize_input(node: Node) -> Node:
    """The ``x`` argument of a quantize call."""
    return bind_custom(node, QUANTIZE)["x"]


def static_quantize(node: Node) -> StaticQuantize | str:
    """The quantize call's operands, or why no kernel can take it (the reason, as a string)."""
    args = bind_custom(node, QUANTIZE)
    x, inv_smooth, scale, zero_point = (tensor(args[k]) for k in ("x", "inv_smooth", "scale", "zero_point"))
    if any(t is None for t in (x, inv_smooth, scale, zero_point)) or not isinstance(args["bits"], int):
        return "operands without tensor metadata"
    if scale.dim() != 1:
        return "dynamic (per-row) activation scales"
    if x.dim() < 2:
        return "an input without a token dimension"
    if scale.shape[0] != x.shape[-2] or tuple(zero_point.shape) != tuple(scale.shape):
        return f"scales for {scale.shape[0]} tokens on an input of {x.shape[-2]} tokens"
    if tuple(inv_smooth.shape) != (x.shape[-1],):
        return "smoothing factors of the wrong size"
    if x.dtype not in KERNEL_DTYPES:
        return f"input dtype {x.dtype}"
    return StaticQuantize(node, args["x"], args["inv_smooth"], args["scale"], args["zero_point"], args["bits"])
