"""Rewrite: the quantize calls no producer absorbed, as the standalone quantize kernel.

    xq = ptq4vm::quantize_per_token(x, inv_smooth, scale, zero_point, bits)     static scales
 -> xq = ptq4vm_fused::quantize_per_token(x, inv_smooth, scale, zero_point, bits)

In Vim these are the dt_proj / dt_proj_b inputs (a column slice of x_proj's output, read in place
through its strides). Runs last, after the producer fusions took theirs.
"""

from __future__ import annotations

from torch.fx import GraphModule, Node

from .fused_ops import FUSED_OPS
from .quantize_site import StaticQuantize, quantize_nodes, static_quantize
from .rewrite import Replacement, apply_rewrite

NAME = "quantize_per_token"
FUSED = FUSED_OPS.quantize_per_token


def lower_quantize_per_token(gm: GraphModule) -> int:
    """In place; returns the number of quantize calls lowered."""
    return apply_rewrite(gm, NAME, quantize_nodes(gm), _plan)


def _plan(node: Node) -> str | Replacement:
    site = static_quantize(node)
    if not isinstance(site, StaticQuantize):
        return site
    return Replacement(node, FUSED.default, (site.x, *site.qparams), (node,))
