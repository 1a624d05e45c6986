"""Pass: put a TokenChannelObserver in front of every quantizable linear of every block."""

from __future__ import annotations

import torch.fx
from torch import nn

from ..capture import blocks
from ..models.family import selects
from ..quant.observer import TokenChannelObserver


def quantizable_linears(gm: torch.fx.GraphModule, names: tuple[str, ...]) -> list[torch.fx.Node]:
    """call_module nodes of ``gm`` whose module is an nn.Linear named one of ``names`` (last component;
    names or fnmatch patterns)."""
    return [
        n
        for n in gm.graph.nodes
        if n.op == "call_module"
        and isinstance(gm.get_submodule(n.target), nn.Linear)
        and selects(names, n.target.rpartition(".")[2])
    ]


def insert_observers(gm: torch.fx.GraphModule, names: tuple[str, ...]) -> int:
    """In place; returns how many observers were inserted (0: nothing to quantize)."""
    count = 0
    for _, block in blocks(gm):
        for node in quantizable_linears(block, names):
            observer_name = f"{node.target}_observer"
            block.add_submodule(observer_name, TokenChannelObserver())
            with block.graph.inserting_before(node):
                observed = block.graph.call_module(observer_name, (node.args[0],))
            node.args = (observed,) + tuple(node.args[1:])
            count += 1
        block.recompile()
    return count


def remove_observers(gm: torch.fx.GraphModule) -> int:
    """In place: drop every observer node and module; returns how many were removed."""
    count = 0
    for _, block in blocks(gm):
        for node in list(block.graph.nodes):
            if node.op == "call_module" and isinstance(block.get_submodule(node.target), TokenChannelObserver):
                node.replace_all_uses_with(node.args[0])
                block.graph.erase_node(node)
                block.delete_submodule(node.target)
                count += 1
        block.recompile()
    return count
