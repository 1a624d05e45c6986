"""Editing the graph: the loop every rewrite runs (:func:`apply_rewrite`), inserting a fused-op call
(with its fake-tensor metadata) where all of its inputs are available, unpacking a tuple-returning
call, and erasing what a replacement left unused."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.fx import GraphModule, Node

from . import report
from .match import value


@dataclass(frozen=True)
class Replacement:
    """Call ``op(*args)`` right before ``before``; its outputs (one, or each element of a returned
    tuple) take the place of the nodes in ``replaces`` (None: that output replaces nothing)."""

    before: Node
    op: Any
    args: tuple
    replaces: tuple[Node | None, ...]


def apply_rewrite(gm: GraphModule, name: str, candidates: Iterable[Node],
                  plan: Callable[[Node], None | str | Replacement]) -> int:
    """Rewrite ``gm`` in place; returns how many replacements were made.

    ``plan(node)`` for each candidate gives None (not this pattern), a reason the pattern cannot
    be fused (counted as skipped under ``name``), or the :class:`Replacement` to make (made unless
    an input is computed after the insertion point, which is counted as skipped too)."""
    count = 0
    for node in list(candidates):
        found = plan(node)
        if found is None:
            continue
        problem = found if isinstance(found, str) else placement_problem(found.args, found.before)
        if problem is not None:
            report.skipped(name, problem, node)
            continue
        call = insert_call(found.before, found.op, found.args)
        outputs = unpack(call, len(found.replaces)) if len(found.replaces) > 1 else [call]
        for old, new in zip(found.replaces, outputs):
            if old is not None:
                old.replace_all_uses_with(new)
        erase_dead([old for old in found.replaces if old is not None])
        report.applied(name)
        count += 1
    return count


def erase_dead(nodes: Iterable[Node]) -> None:
    """Erase ``nodes`` and, upwards, the inputs this leaves unused: only nodes without users, side
    effects or in-place methods (``x.add_(y)``, which FX's purity check takes for pure). The rest of
    the graph is left as Dynamo traced it (a float model's graph may hold anything)."""
    pending, erased = list(nodes), set()
    while pending:
        node = pending.pop()
        if node in erased or node.users or node.op not in ("call_function", "call_method", "get_attr"):
            continue
        in_place = node.op == "call_method" and node.target.endswith("_") and not node.target.endswith("__")
        if in_place or node.is_impure():
            continue
        inputs = node.all_input_nodes
        node.graph.erase_node(node)
        erased.add(node)
        pending.extend(inputs)


def placement_problem(args: Sequence[Any], before: Node) -> str | None:
    """Why a call with ``args`` cannot go right before ``before`` (None when it can): an input
    computed later in the graph. Parameters read later by ``get_attr`` are moved up by :func:`insert_call`."""
    earlier = _nodes_before(before)
    late = [a for a in args if isinstance(a, Node) and a not in earlier and a.op != "get_attr"]
    return f"input {late[0].name} is computed after {before.name}" if late else None


def insert_call(before: Node, target: Any, args: Sequence[Any]) -> Node:
    """``target(*args)`` as a new node right before ``before``, with ``meta["example_value"]``.

    Check :func:`placement_problem` first."""
    earlier = _nodes_before(before)
    for a in args:
        if isinstance(a, Node) and a.op == "get_attr" and a not in earlier:
            before.prepend(a)
    with before.graph.inserting_before(before):
        node = before.graph.call_function(target, tuple(args))
    node.meta["example_value"] = _fake_call(target, args)
    return node


def unpack(node: Node, count: int) -> list[Node]:
    """``operator.getitem(node, i)`` nodes for i < count, right after ``node``."""
    outputs, anchor = [], node
    for i in range(count):
        with node.graph.inserting_after(anchor):
            anchor = node.graph.call_function(operator.getitem, (node, i))
        anchor.meta["example_value"] = node.meta["example_value"][i]
        outputs.append(anchor)
    return outputs


def _nodes_before(before: Node) -> set[Node]:
    earlier = set()
    for node in before.graph.nodes:
        if node is before:
            break
        earlier.add(node)
    return earlier


def _fake_call(target: Any, args: Sequence[Any]) -> Any:
    """Run ``target`` on the fake tensors of ``args`` (the mode Dynamo traced the graph with)."""
    vals = [value(a) if isinstance(a, Node) else a for a in args]
    fake_mode = next((v.fake_mode for v in vals if isinstance(v, FakeTensor)), None)
    if fake_mode is None:
        raise RuntimeError("ptq4vm lowering needs the fake-tensor metadata (node.meta['example_value']) "
                           "that Dynamo records; the graph has none")
    vals = [fake_mode.from_tensor(v) if isinstance(v, torch.Tensor) and not isinstance(v, FakeTensor) else v
            for v in vals]
    with fake_mode:
        return target(*vals)
