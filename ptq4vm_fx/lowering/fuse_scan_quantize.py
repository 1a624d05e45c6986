"""Rewrite: the out_proj input quantized in the bidirectional scan's epilogue.

    y  = ptq4vm_fused::bidirectional_scan(...)                     (batch, D, L)
    xq = ptq4vm::quantize_per_token(y.transpose(1, 2), inv_smooth, scale, zero_point, bits)
 -> y, xq = ptq4vm_fused::bidirectional_scan_quantize(..., inv_smooth, scale, zero_point, bits)

The kernel stores the token-major int8 codes of the averaged output, so the transpose and the
separate quantize pass over y disappear; when nothing but this quantize reads y (Vim: only
out_proj does), the float y is not stored at all (``store_out=False``). Runs after
:mod:`.fuse_bidirectional_scan`; anchored on the quantize call.
"""

from __future__ import annotations

from torch.fx import GraphModule, Node

from .fused_ops import FUSED_OPS
from .match import bind, is_custom_op, norm_dim, only_user, strip_casts
from .quantize_site import StaticQuantize, quantize_input, quantize_nodes, static_quantize
from .rewrite import Replacement, apply_rewrite

NAME = "scan_quantize"
SCAN = FUSED_OPS.bidirectional_scan
FUSED = FUSED_OPS.bidirectional_scan_quantize


def rewrite(gm: GraphModule) -> int:
    """In place; returns the number of quantize calls moved into a scan epilogue."""
    return apply_rewrite(gm, NAME, quantize_nodes(gm), _plan)


def _plan(node: Node) -> None | str | Replacement:
    transposed = bind(strip_casts(quantize_input(node)), "transpose")
    scan = transposed and transposed["input"]
    if not is_custom_op(scan, SCAN) or {norm_dim(transposed[k], 3) for k in ("dim0", "dim1")} != {1, 2}:
        return None
    site = static_quantize(node)
    if not isinstance(site, StaticQuantize):
        return site
    store_out = not _only_feeds(scan, node)
    return Replacement(scan, FUSED.default, (*scan.args, *site.qparams, store_out), (scan if store_out else None, node))


def _only_feeds(scan: Node, node: Node) -> bool:
    """True when the scan's output reaches nothing but ``node`` (a chain of single users)."""
    user = only_user(scan)
    while user is not None and user is not node:
        user = only_user(user)
    return user is node
