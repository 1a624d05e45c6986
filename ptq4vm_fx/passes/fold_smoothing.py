"""Pass: fold a quantized linear's 1/m into its producer where that is exact (docs/design.md section 4).

* producer is one of the family's ``fold_norms`` (Vim's RMSNorm, LayerNorm) used only by this linear,
  possibly through a ``.to(...)`` cast and a gate product ``norm(s) * z`` (``(LN(s) z) / m =
  (LN(s) / m) z``; each node on the way used only on it): divide the norm's weight (and bias, if it
  has one) by m (in_proj; VMamba's and LocalVSSM's out_proj after out_norm);
* producer is a column slice ``y[..., a:b]`` of another linear used only by this linear: divide
  rows a:b of that linear (weight, bias and, if quantized, weight step size; recorded in its
  ``row_fold``) by m (dt_proj).
Elsewhere (x_proj after conv+SiLU, out_proj after the scan) the quantizer keeps the explicit 1/m,
which the lowering fuses into the producing kernel.
"""

from __future__ import annotations

import operator

import torch
import torch.fx
from torch import nn

from ..capture import blocks
from ..models.family import family_named
from ..quant.linear import FakeQuantLinear


def column_slice(node: torch.fx.Node) -> tuple[torch.fx.Node, slice] | None:
    """(source, slice) when ``node`` is ``source[..., a:b]``."""
    if node.op != "call_function" or node.target is not operator.getitem:
        return None
    source, index = node.args
    if (
        isinstance(source, torch.fx.Node)
        and isinstance(index, tuple)
        and len(index) == 2
        and index[0] is Ellipsis
        and isinstance(index[1], slice)
        and index[1].step is None
    ):
        return source, index[1]
    return None


def feeding_norm(block: torch.fx.GraphModule, node: torch.fx.Node, norms: tuple[type[nn.Module], ...],
                 gated: bool = True) -> torch.fx.Node | None:
    """The ``norms`` call whose output reaches a linear as ``node``: ``node`` itself, a ``.to(...)`` cast of
    one, or (``gated``) the product of one of those with another tensor; None otherwise. The caller
    checks ``node``'s own users; every node behind it on the way must have one user."""
    if node.op == "call_module" and isinstance(block.get_submodule(node.target), norms):
        return node
    inner = None
    if node.op == "call_method" and node.target == "to":
        inner = [node.args[0]]
    elif gated and node.op == "call_function" and node.target in (operator.mul, torch.mul) and len(node.args) == 2:
        a, b = node.args
        inner = [f for f in (a, b) if isinstance(f, torch.fx.Node)] if a is not b else []
    for factor in inner or []:
        if isinstance(factor, torch.fx.Node) and len(factor.users) == 1:
            found = feeding_norm(block, factor, norms, gated=gated and node.target == "to")
            if found is not None:
                return found
    return None


@torch.no_grad()
def _fold_into_rows(producer: nn.Module, rows: slice, m: torch.Tensor) -> None:
    if isinstance(producer, FakeQuantLinear):
        producer.weight[rows] /= m[:, None]
        producer.log_w_scale[rows] -= torch.log(m)
        producer.row_fold[rows] /= m
    else:
        producer.weight[rows] /= m[:, None].to(producer.weight.dtype)
    if producer.bias is not None:
        producer.bias[rows] /= m.to(producer.bias.dtype)


@torch.no_grad()
def fold_smoothing(gm: torch.fx.GraphModule) -> int:
    """In place; returns how many smoothing scales were folded into a producer."""
    norms = family_named(gm.meta["family"]).fold_norms
    count = 0
    for _, block in blocks(gm):
        for node in block.graph.nodes:
            if node.op != "call_module":
                continue
            linear = block.get_submodule(node.target)
            if not isinstance(linear, FakeQuantLinear) or bool(linear.input_folded):
                continue
            source = node.args[0]
            m = linear.smooth.detach()
            if len(source.users) != 1:
                continue
            if (norm_node := feeding_norm(block, source, norms)) is not None:
                norm = block.get_submodule(norm_node.target)
                norm.weight /= m.to(norm.weight.dtype)
                if getattr(norm, "bias", None) is not None:
                    norm.bias /= m.to(norm.bias.dtype)
            elif (sliced := column_slice(source)) is not None and sliced[0].op == "call_module":
                producer = block.get_submodule(sliced[0].target)
                if not isinstance(producer, (nn.Linear, FakeQuantLinear)):
                    continue
                _fold_into_rows(producer, sliced[1], m)
            else:
                continue
            linear.input_folded.fill_(True)
            count += 1
    return count
