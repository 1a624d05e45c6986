"""Rewrite: the out_proj input quantized in the bidirectional scan's epilogue.

    y  = ptq4vm_fused::bidirectional_scan(...)                     (batch, D, L)
    xq = ptq4vm::quantize_per_token(y.transpose(1, 2), inv_smooth, scale, zero_point, bits)
 -> y, xq = ptq4vm_fused::bidirectional_scan_quantize(..., inv_smooth, scale, zero_point, bits)

The kernel stores the token-major int8 codes of the averaged output next to the output itself,
so the transpose and the separate quantize pass over y disappear. Runs after
:mod:`.fuse_bidirectional_scan`; anchored on the quantize call.
"""

from __future__ import annotations

from torch.fx import GraphModule

from . import report
from .fused_ops import FUSED_OPS
from .match import bind, is_custom_op, norm_dim, strip_casts
from .quantize_site import StaticQuantize, quantize_input, quantize_nodes, static_quantize
from .rewrite import insert_call, placement_problem, unpack

NAME = "scan_quantize"
SCAN = FUSED_OPS.bidirectional_scan
FUSED = FUSED_OPS.bidirectional_scan_quantize


def fuse_scan_quantize(gm: GraphModule) -> int:
    """In place; returns the number of quantize calls moved into a scan epilogue."""
    count = 0
    for node in quantize_nodes(gm):
        transposed = bind(strip_casts(quantize_input(node)), "transpose")
        scan = transposed and transposed["input"]
        if not is_custom_op(scan, SCAN) or {norm_dim(transposed[k], 3) for k in ("dim0", "dim1")} != {1, 2}:
            continue
        site = static_quantize(node)
        if not isinstance(site, StaticQuantize):
            report.skipped(NAME, site, node)
            continue
        args = (*scan.args, *site.qparams)
        problem = placement_problem(args, scan)
        if problem is not None:
            report.skipped(NAME, problem, node)
            continue
        out, xq = unpack(insert_call(scan, FUSED.default, args), 2)
        scan.replace_all_uses_with(out)
        node.replace_all_uses_with(xq)
        report.applied(NAME)
        count += 1
    gm.graph.eliminate_dead_code()
    return count
