"""Rewrite: Vim's two scan directions and their average as one ``ptq4vm_fused::bidirectional_scan``.

    y_f = ptq4vm::selective_scan(u_f, dt_f, A_f, B_f, C_f, D_f, z, db_f, softplus, False)
    y_b = ptq4vm::selective_scan(u_b, dt_b, A_b, B_b, C_b, D_b, z, db_b, softplus, True)
    y   = (y_f + y_b) / 2                                          (or * 0.5)
 -> y   = ptq4vm_fused::bidirectional_scan(u_f, ..., db_f, u_b, ..., db_b, z, softplus)

One kernel walks the sequence both ways (the backward branch is an anticausal scan, so there
are no flips) and writes the average. Anchored on the sum of two scans of opposite directions.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from .. import ops  # noqa: F401  (registers torch.ops.ptq4vm)
from .fused_ops import FUSED_OPS
from .match import bind, bind_custom, is_custom_op, only_user, tensor
from .quantize_site import KERNEL_DTYPES
from .rewrite import Replacement, apply_rewrite

NAME = "bidirectional_scan"
SCAN = torch.ops.ptq4vm.selective_scan
FUSED = FUSED_OPS.bidirectional_scan
_BRANCH = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def rewrite(gm: GraphModule) -> int:
    """In place; returns the number of scan pairs fused."""
    return apply_rewrite(gm, NAME, gm.graph.nodes, _plan)


def _plan(node: Node) -> None | str | Replacement:
    """For ``node = y_f + y_b``: the fused call replacing the average, a reason, or None."""
    added = bind(node, "add")
    if added is None or added["alpha"] != 1 or not all(is_custom_op(a, SCAN) for a in (added["input"],
                                                                                         added["other"])):
        return None
    first, second = (bind_custom(added[k], SCAN) for k in ("input", "other"))
    if {first["reverse"], second["reverse"]} != {False, True}:
        return None
    fwd, bwd = (first, second) if second["reverse"] else (second, first)
    average = only_user(node)
    halved = bind(average, "div") or {}
    scaled = bind(average, "mul") or {}
    if not (halved.get("other") == 2 and halved.get("rounding_mode") is None) and 0.5 not in (
        scaled.get("input"), scaled.get("other")
    ):
        return "the two directions are summed but not averaged"
    if fwd["z"] is not bwd["z"]:
        return "the two directions are gated by different z"
    if fwd["delta_softplus"] != bwd["delta_softplus"]:
        return "the two directions disagree on delta_softplus"
    shapes = []
    for branch in (fwd, bwd):
        for name in ("u", "delta", "B", "C", "z"):
            t = tensor(branch[name])
            if branch[name] is not None and (t is None or t.dtype not in KERNEL_DTYPES):
                return f"scan input {name} of dtype {None if t is None else t.dtype}"
        shapes.append((tensor(branch["u"]).shape, tensor(branch["A"]).shape))
    if shapes[0] != shapes[1]:
        return "the two directions have different shapes"
    if tensor(fwd["u"]).dtype != tensor(bwd["u"]).dtype:
        return "the two directions' outputs have different dtypes"
    args = (*(fwd[k] for k in _BRANCH), *(bwd[k] for k in _BRANCH), fwd["z"], fwd["delta_softplus"])
    return Replacement(average, FUSED.default, args, (average,))
