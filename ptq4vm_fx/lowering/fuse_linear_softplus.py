"""Rewrite: the scan's ``softplus(delta + delta_bias)`` computed in dt_proj's GEMM epilogue.

    dt = ptq4vm::int8_linear(xq, ..., bias, torch.float32)                     (..., L, D)
    y  = scan(..., dt.transpose(1, 2), ..., delta_bias, ..., delta_softplus=True, ...)
 -> dt = ptq4vm_fused::int8_linear_softplus(xq, ..., bias, delta_bias, torch.float32)
    y  = scan(..., dt.transpose(1, 2), ..., None, ..., delta_softplus=False, ...)

``scan`` is ``ptq4vm::selective_scan`` or the bidirectional scan (with or without its quantize), whose
directions share one softplus flag: both of its deltas must be fusable. The epilogue runs the scan
kernels' own softplus on the value the scan would read, so the scan's input after the rewrite is, bit
for bit, the delta the scan computed before (docs/design.md section 3.3); the scan no longer pays a
softplus (2 MUFU and ~19 SASS instructions per channel, token and direction on sm_90). Only where exact:
dt_proj's output in fp32 (stored fp16 / bf16, the softplus'd delta would be rounded where the scan keeps
fp32), reaching the scan through transposes and value-preserving casts that nothing else reads. Counted
per GEMM; anchored on the scan. ``ptq4vm::ordered_scan`` is taken only with one direction, no delta_bias and a
``z_order`` (LocalVim's sequence scan, whose ``order`` has no padding step by the op's contract); otherwise
its padded steps would scan softplus(delta_bias), which no GEMM computes (docs/design.md section 7.1).
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from .. import ops  # noqa: F401  (registers torch.ops.ptq4vm)
from . import report
from .fused_ops import FUSED_OPS
from .match import bind, bind_custom, is_custom_op, strip_casts
from .rewrite import insert_call, placement_problem

NAME = "linear_softplus"
LINEAR = torch.ops.ptq4vm.int8_linear
FUSED = FUSED_OPS.int8_linear_softplus
# the scans, and their (delta, delta_bias) argument names per direction
_BIDIRECTIONAL = (("delta_f", "delta_bias_f"), ("delta_b", "delta_bias_b"))
SCANS = {torch.ops.ptq4vm.selective_scan: (("delta", "delta_bias"),),
         FUSED_OPS.bidirectional_scan: _BIDIRECTIONAL, FUSED_OPS.bidirectional_scan_quantize: _BIDIRECTIONAL}
ORDERED_SCAN = torch.ops.ptq4vm.ordered_scan


def _sequence_scan(node: Node) -> bool:
    """An ordered scan with one direction, no delta_bias and a z_order: no padding step, so the softplus of its
    one delta is dt_proj's epilogue's."""
    args = bind_custom(node, ORDERED_SCAN)
    return args["z_order"] is not None and args["delta_bias"] is None and len(args["deltas"]) == 1


def _deltas(args: dict, packet) -> list[tuple[object, str]]:
    """Per direction (the scan's delta argument, its delta_bias argument's name)."""
    if packet is ORDERED_SCAN:
        return [(args["deltas"][0], "delta_bias")]
    return [(args[delta], bias) for delta, bias in SCANS[packet]]


def rewrite(gm: GraphModule) -> int:
    """In place; returns the number of GEMMs that took their scan's softplus."""
    count = 0
    for node in list(gm.graph.nodes):
        packet = next((p for p in SCANS if is_custom_op(node, p)), None)
        if is_custom_op(node, ORDERED_SCAN) and _sequence_scan(node):
            packet = ORDERED_SCAN
        found = None if packet is None else _plan(node, packet)
        if isinstance(found, str):
            report.skipped(NAME, found, node)
        elif found is not None:
            count += _apply(node, packet, found)
    return count


def _plan(node: Node, packet) -> None | str | list[tuple[Node, list[Node], str]]:
    """Per direction (dt_proj's int8_linear node, the nodes from it to the scan's delta, the scan's delta_bias
    argument name), a reason, or None (no softplus, or no delta from a quantized GEMM: nothing to move)."""
    args = bind_custom(node, packet)
    if args["delta_softplus"] is not True:
        return None
    found = [(*_dt_proj(delta), bias) for delta, bias in _deltas(args, packet)]
    linears = [linear for linear, _, _ in found]
    if all(linear is None for linear in linears):
        return None
    if any(linear is None for linear in linears):
        return "a direction's delta is not a quantized dt_proj's output"
    if any(isinstance(linear, str) for linear in linears):
        return next(linear for linear in linears if isinstance(linear, str))
    if len(set(linears)) != len(linears):
        return "the directions read one dt_proj output"
    for linear, _, _ in found:
        dtype = bind_custom(linear, LINEAR)["out_dtype"]
        if dtype != torch.float32:
            return f"dt_proj's output is {str(dtype).replace('torch.', '')}: softplus(delta) stored in it would " \
                   f"be rounded where the scan keeps fp32"
    return found


def _dt_proj(delta: object) -> tuple[None | str | Node, list[Node]]:
    """(the int8_linear node whose output ``delta`` is, through transposes and value-preserving casts of it
    alone, or a reason when something besides the scan reads that output on the way, or None when it is no
    int8_linear output; the nodes on the way, from the linear's user to ``delta``)."""
    path, node = [], delta
    while isinstance(node, Node) and not is_custom_op(node, LINEAR):
        path.insert(0, node)
        up = strip_casts(node)
        if up is node:
            transposed = bind(node, "transpose")
            up = transposed and transposed["input"]
        if up is not None and node.all_input_nodes != [up]:
            return None, path
        node = up
    if not is_custom_op(node, LINEAR):
        return None, path
    if any(len(n.users) != 1 for n in (node, *path)):  # delta's one user is the scan
        return "dt_proj's output has other users", path
    return node, path


def _apply(scan: Node, packet, found: list[tuple[Node, list[Node], str]]) -> int:
    """Swap each dt_proj GEMM for its softplus form, then drop the scan's softplus and delta biases. A delta_bias
    computed after dt_proj (VMamba's ``dt_projs_bias.float()``) moves the fused call after it, and the
    transposes / casts between the GEMM and the scan with it."""
    names = [a.name for a in packet.default._schema.arguments]
    args, kwargs = list(scan.args), dict(scan.kwargs)

    def set_arg(name, value):
        if name in kwargs or names.index(name) >= len(args):
            kwargs[name] = value
        else:
            args[names.index(name)] = value

    bound = bind_custom(scan, packet)
    for linear, path, bias in found:
        gemm, delta_bias = bind_custom(linear, LINEAR), bound[bias]
        late = isinstance(delta_bias, Node) and placement_problem([delta_bias], linear) is not None
        fused_args = (gemm["xq"], gemm["x_scale"], gemm["x_zero_point"], gemm["wq"], gemm["w_scale"], gemm["w_colsum"],
                      gemm["bias"], delta_bias, gemm["out_dtype"])
        call = insert_call(delta_bias.next if late else linear, FUSED.default,
                           fused_args + (() if gemm["autotune"] else (False,)))
        linear.replace_all_uses_with(call)
        linear.graph.erase_node(linear)
        if late:  # the path after the call, in order (each node reads only the one before it)
            anchor = call
            for node in path:
                anchor.append(node)
                anchor = node
        set_arg(bias, None)
        report.applied(NAME)
    set_arg("delta_softplus", False)
    scan.args, scan.kwargs = tuple(args), kwargs
    return len(found)
