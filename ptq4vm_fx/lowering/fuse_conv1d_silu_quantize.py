"""Rewrite: the x_proj / x_proj_b input quantized by the depthwise conv1d + SiLU kernel.

    v  = a causal or anticausal depthwise conv1d, as :mod:`.fuse_conv1d_silu` matches it
    u  = silu(v)                                                   (batch, D, L), also the scan's input
    xq = ptq4vm::quantize_per_token(u.transpose(1, 2), inv_smooth, scale, zero_point, bits)
 -> u, xq = ptq4vm_fused::conv1d_silu_quantize(x, w, b, inv_smooth, scale, zero_point, bits, reverse)

and LocalVim's ``u = ptq4vm::ordered_conv1d_silu(x, w, b, order, reverse)`` (batch, D, S) quantized the same
way -> ``conv1d_silu_quantize(..., reverse, order)``.

``inv_smooth`` (x_proj's 1/m, which no producer weight can absorb) is applied in the kernel. The
kernel computes in fp32; in a model run in fp16 / bf16 it rounds v and u to that dtype, as the
conv and the SiLU do. Anchored on the quantize call.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from .fuse_conv1d_silu import match_silu_conv
from .fused_ops import FUSED_OPS
from .match import bind, bind_custom, is_custom_op, norm_dim, strip_casts
from .quantize_site import StaticQuantize, quantize_input, quantize_nodes, static_quantize
from .rewrite import Replacement, apply_rewrite

NAME = "conv1d_silu_quantize"
FUSED = FUSED_OPS.conv1d_silu_quantize


def rewrite(gm: GraphModule) -> int:
    """In place; returns the number of conv1d + SiLU + quantize chains fused."""
    return apply_rewrite(gm, NAME, quantize_nodes(gm), _plan)


def _plan(node: Node) -> None | str | Replacement:
    transposed = bind(strip_casts(quantize_input(node)), "transpose")
    if not transposed or {norm_dim(transposed[k], 3) for k in ("dim0", "dim1")} != {1, 2}:
        return None
    u_node = transposed["input"]  # outputs (u, xq)
    if is_custom_op(u_node, torch.ops.ptq4vm.ordered_conv1d_silu):
        ordered = bind_custom(u_node, torch.ops.ptq4vm.ordered_conv1d_silu)
        conv = (ordered["x"], ordered["weight"], ordered["bias"], ordered["reverse"], ordered["order"])
    else:
        conv = match_silu_conv(u_node)
        if conv is None or isinstance(conv, str):
            return conv
    site = static_quantize(node)
    if not isinstance(site, StaticQuantize):
        return site
    x, weight, bias, reverse, *order = conv
    return Replacement(u_node, FUSED.default, (x, weight, bias, *site.qparams, reverse, *order), (u_node, node))
