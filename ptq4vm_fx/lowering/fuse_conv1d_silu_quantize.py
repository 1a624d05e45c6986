"""Rewrite: the x_proj / x_proj_b input quantized by the depthwise conv1d + SiLU kernel.

    v  = a causal or anticausal depthwise conv1d, as :mod:`.fuse_conv1d_silu` matches it
    u  = silu(v)                                                   (batch, D, L), also the scan's input
    xq = ptq4vm::quantize_per_token(u.transpose(1, 2), inv_smooth, scale, zero_point, bits)
 -> u, xq = ptq4vm_fused::conv1d_silu_quantize(x, w, b, inv_smooth, scale, zero_point, bits, reverse)

``inv_smooth`` (x_proj's 1/m, which no producer weight can absorb) is applied in the kernel. The
kernel computes in fp32; in a model run in fp16 / bf16 it rounds v and u to that dtype, as the
conv and the SiLU do. Anchored on the quantize call.
"""

from __future__ import annotations

from torch.fx import GraphModule, Node

from .fuse_conv1d_silu import match_conv
from .fused_ops import FUSED_OPS
from .match import bind, norm_dim, strip_casts
from .quantize_site import StaticQuantize, quantize_input, quantize_nodes, static_quantize
from .rewrite import Replacement, apply_rewrite

NAME = "conv1d_silu_quantize"
FUSED = FUSED_OPS.conv1d_silu_quantize


def rewrite(gm: GraphModule) -> int:
    """In place; returns the number of conv1d + SiLU + quantize chains fused."""
    return apply_rewrite(gm, NAME, quantize_nodes(gm), _plan)


def _plan(node: Node) -> None | str | Replacement:
    transposed = bind(strip_casts(quantize_input(node)), "transpose")
    silu = transposed and bind(transposed["input"], "silu")
    if not silu or silu["inplace"] or {norm_dim(transposed[k], 3) for k in ("dim0", "dim1")} != {1, 2}:
        return None
    conv = match_conv(silu["input"])
    if conv is None or isinstance(conv, str):
        return conv
    site = static_quantize(node)
    if not isinstance(site, StaticQuantize):
        return site
    x, weight, bias, reverse = conv
    u_node = transposed["input"]  # outputs (u, xq)
    return Replacement(u_node, FUSED.default, (x, weight, bias, *site.qparams, reverse), (u_node, node))
