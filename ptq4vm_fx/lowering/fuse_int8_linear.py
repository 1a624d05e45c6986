"""Rewrite: ``ptq4vm::qlinear`` as the INT8 GEMM with dequantization in its epilogue.

    y = ptq4vm::qlinear(xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias)   (..., L, N) fp32
    y = y.to(dtype)                                                                (optional)
 -> y = ptq4vm_fused::int8_linear(xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias, dtype)

The epilogue applies, per output tile, ``(acc - zp[t] * colsum[n]) * x_scale[t] * w_scale[n] + bias[n]``
with t = row % L, and casts to the dtype of a cast that is the result's only use (fp16 / bf16
models) so the fp32 result is never stored. Static per-token scales only: the kernel indexes them
by token position.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from .. import ops  # noqa: F401  (registers torch.ops.ptq4vm)
from .fused_ops import FUSED_OPS
from .match import bind_custom, is_custom_op, only_user, tensor
from .quantize_site import KERNEL_DTYPES
from .rewrite import Replacement, apply_rewrite

NAME = "int8_linear"
QLINEAR = torch.ops.ptq4vm.qlinear
FUSED = FUSED_OPS.int8_linear
_ARGS = ("xq", "x_scale", "x_zero_point", "wq", "w_scale", "w_colsum", "bias")
_CASTS = frozenset({"to", "float", "half", "bfloat16", "type"})


def fuse_int8_linear(gm: GraphModule) -> int:
    """In place; returns the number of qlinear calls lowered."""
    return apply_rewrite(gm, NAME, [n for n in gm.graph.nodes if is_custom_op(n, QLINEAR)], _plan)


def _plan(node: Node) -> str | Replacement:
    args = bind_custom(node, QLINEAR)
    xq, x_scale, wq = (tensor(args[k]) for k in ("xq", "x_scale", "wq"))
    if xq is None or x_scale is None or wq is None:
        return "operands without tensor metadata"
    if x_scale.dim() != 1 or xq.dim() < 2 or x_scale.shape[0] != xq.shape[-2]:
        return "dynamic (per-row) activation scales"
    cast = only_user(node)
    out = tensor(cast)
    if not (cast is not None and cast.op == "call_method" and cast.target in _CASTS
            and out is not None and out.dtype in KERNEL_DTYPES
            and out.shape == tensor(node).shape and out.device == tensor(node).device):
        cast, out = node, tensor(node)
    return Replacement(node, FUSED.default, (*(args[k] for k in _ARGS), out.dtype), (cast,))
