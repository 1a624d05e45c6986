"""Graph rewrites a family's ``canonicalize`` uses to put a captured block graph in the form the passes
read (docs/design.md section 11): every quantizable linear a call_module ``nn.Linear`` on a token-major
(batch, tokens, channels) input, so observers, fake-quant and integer linears, JLSS and the smoothing
folds work on it unchanged. Each rewrite computes what the traced graph computed: layouts change and a
grouped weight's slices become modules; values change only by float rounding where a 1x1 conv
(VMamba's Linear2d) becomes a matmul.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

# modules that act on each element alone: a layout change commutes with them
ELEMENTWISE = (nn.Identity, nn.Dropout, nn.GELU, nn.SiLU, nn.ReLU, nn.Sigmoid)


def split_grouped_linears(block: torch.fx.GraphModule, parameter: str, name: str) -> None:
    """Each ``F.linear(x, W[k])`` of a grouped weight ``W`` (K, O, I) (a parameter whose last name component
    is ``parameter``) becomes a call of a new bias-free ``nn.Linear(I, O)`` ``<owner>.<name>_<k>`` holding
    a copy of ``W[k]``; ``W`` leaves the block once nothing reads it. In place."""
    for attr in [n for n in block.graph.nodes if n.op == "get_attr" and n.target.rpartition(".")[2] == parameter]:
        owner, _, attr_name = attr.target.rpartition(".")
        weight = block.get_parameter(attr.target)
        for index in list(attr.users):
            if index.op != "call_function" or index.target is not operator.getitem or type(index.args[1]) is not int:
                continue
            target = f"{owner}.{name}_{index.args[1]}" if owner else f"{name}_{index.args[1]}"
            calls = [u for u in index.users if u.op == "call_function" and u.target is F.linear
                     and len(u.args) == 2 and not u.kwargs and u.args[1] is index]  # fmt: skip
            if calls:
                linear = nn.Linear(weight.shape[2], weight.shape[1], bias=False, device=weight.device,
                                   dtype=weight.dtype)
                linear.weight = nn.Parameter(weight[index.args[1]].detach().clone(), requires_grad=weight.requires_grad)
                block.add_submodule(target, linear)
            for call in calls:
                with block.graph.inserting_before(call):
                    module_call = block.graph.call_module(target, (call.args[0],))
                call.replace_all_uses_with(module_call)
                block.graph.erase_node(call)
            if not index.users:
                block.graph.erase_node(index)
        if not attr.users:
            block.graph.erase_node(attr)
            delattr(block.get_submodule(owner), attr_name)
    block.recompile()


def token_major_linears(
    block: torch.fx.GraphModule,
    targets: Iterable[str],
    channel_first: bool,
    token_norm: Callable[[nn.Module], nn.Module | None],
) -> None:
    """Each call of the modules ``targets`` (linears over the channels of a map: (batch, C, H, W) when
    ``channel_first``, else (batch, H, W, C); H, W those of the block's first input) becomes an
    ``nn.Linear`` (sharing the module's (out, in) weight and bias) on (batch, H W, C) tokens, its output
    put back into the map's layout. The rearrangement of the input is pushed up through producers used
    only on the way, which then run on tokens too: norms over the channels (``token_norm(module)`` is
    the module doing it on tokens, None for a module that is no such norm), ``.to`` casts, products of
    two maps, :data:`ELEMENTWISE` modules, ``unflatten(1, (H, W))`` of tokens (channel-last; dropped),
    and an earlier target's output put back (cancelled). In place."""
    graph = block.graph
    first_input = next(n for n in graph.nodes if n.op == "placeholder")
    with graph.inserting_after(first_input):
        height = graph.call_method("size", (first_input, 2 if channel_first else 1))
    with graph.inserting_after(height):
        width = graph.call_method("size", (first_input, 3 if channel_first else 2))
    restored: dict[torch.fx.Node, torch.fx.Node] = {}  # an output put back into the map -> the token output

    def tokens(node: torch.fx.Node) -> torch.fx.Node:
        """A node computing ``node`` as (batch, H W, C) tokens, inserted at the graph's insert point."""
        if node in restored:
            return restored[node]
        if len(node.users) == 1:
            if node.op == "call_module":
                module = block.get_submodule(node.target)
                norm = token_norm(module)
                if norm is not None:
                    if norm is not module:
                        block.set_submodule(node.target, norm)
                    return graph.call_module(node.target, (tokens(node.args[0]),))
                if isinstance(module, ELEMENTWISE):
                    return graph.call_module(node.target, (tokens(node.args[0]),))
            if node.op == "call_method" and node.target == "to":
                return graph.call_method("to", (tokens(node.args[0]), *node.args[1:]), dict(node.kwargs))
            if (node.op == "call_function" and node.target is operator.mul and len(node.args) == 2
                    and all(isinstance(a, torch.fx.Node) for a in node.args) and node.args[0] is not node.args[1]):
                return graph.call_function(operator.mul, tuple(tokens(a) for a in node.args))
            if not channel_first and node.op == "call_method" and node.target == "unflatten" and node.args[1] == 1:
                return node.args[0]
        if channel_first:
            node = graph.call_method("permute", (node, 0, 2, 3, 1))
        return graph.call_method("flatten", (node, 1, 2))

    for node in [n for n in graph.nodes if n.op == "call_module" and n.target in set(targets)]:
        module = block.get_submodule(node.target)
        if not isinstance(module, nn.Linear):
            linear = nn.Linear(module.weight.shape[1], module.weight.shape[0], bias=module.bias is not None,
                               device=module.weight.device, dtype=module.weight.dtype)
            linear.weight, linear.bias = module.weight, module.bias
            block.set_submodule(node.target, linear)
        with graph.inserting_before(node):
            node.args = (tokens(node.args[0]),)
        with graph.inserting_after(node):
            unflattened = graph.call_method("unflatten", (node, 1, (height, width)))
        back = unflattened
        if channel_first:
            with graph.inserting_after(unflattened):
                back = graph.call_method("permute", (unflattened, 0, 3, 1, 2))
        node.replace_all_uses_with(back, delete_user_cb=lambda user, u=unflattened: user is not u)
        restored[back] = node
    graph.eliminate_dead_code()
    block.recompile()


def plain_layer_norm(norm: nn.LayerNorm) -> nn.LayerNorm:
    """An ``nn.LayerNorm`` over the last dim sharing ``norm``'s parameters (for a LayerNorm subclass that
    rearranges its input, such as a channel-first LayerNorm2d)."""
    plain = nn.LayerNorm(norm.normalized_shape, eps=norm.eps, elementwise_affine=norm.elementwise_affine,
                         bias=norm.bias is not None, device=torch.device("meta"))
    plain.weight, plain.bias = norm.weight, norm.bias
    return plain
