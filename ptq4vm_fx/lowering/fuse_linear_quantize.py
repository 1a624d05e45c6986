"""Rewrite: a column slice of an INT8 linear's output quantized in that GEMM's epilogue.

    y  = ptq4vm::int8_linear(xq, ..., dtype)                                    (..., L, N)
    xq = ptq4vm::quantize_per_token(y[..., a:b], inv_smooth, scale, zero_point, bits)
 -> y, xq = ptq4vm_fused::int8_linear_quantize(xq, ..., dtype, a, b - a, inv_smooth, scale, zero_point, bits)

In Vim this is dt_proj's input, the first dt_rank columns of x_proj's output: the codes are
written by the GEMM that computes the columns, and the separate quantize pass over them goes.
Anchored on the quantize call.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from .. import ops  # noqa: F401  (registers torch.ops.ptq4vm)
from .fused_ops import FUSED_OPS
from .match import column_slice, is_custom_op, strip_casts
from .quantize_site import StaticQuantize, quantize_input, quantize_nodes, static_quantize
from .rewrite import Replacement, apply_rewrite

NAME = "linear_quantize"
LINEAR = torch.ops.ptq4vm.int8_linear
FUSED = FUSED_OPS.int8_linear_quantize


def rewrite(gm: GraphModule) -> int:
    """In place; returns the number of quantize calls moved into a GEMM epilogue."""
    return apply_rewrite(gm, NAME, quantize_nodes(gm), _plan)


def _plan(node: Node) -> None | str | Replacement:
    sliced = strip_casts(quantize_input(node))
    columns = _column_range(sliced)
    if columns is None:
        return None
    site = static_quantize(node)
    if not isinstance(site, StaticQuantize):
        return site
    linear = sliced.args[0]
    start, stop = columns
    args = (*linear.args, start, stop - start, *site.qparams)
    return Replacement(linear, FUSED.default, args, (linear, node))


def _column_range(sliced: object) -> tuple[int, int] | None:
    """(start, stop) when ``sliced`` is ``y[..., start:stop]`` (or ``y[:, :, start:stop]``), a
    non-empty step-1 slice of the last dim of an ``int8_linear`` output ``y``; else None."""
    found = column_slice(sliced)
    if found is None or not is_custom_op(found[0], LINEAR):
        return None
    _, start, stop = found
    return (start, stop) if stop > start else None
