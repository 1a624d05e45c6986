"""Rewrite: the bidirectional scan's gate ``silu(z)`` computed in in_proj's GEMM epilogue.

    xz = ptq4vm::int8_linear(xq, ..., bias, torch.float32)                (..., L, 2D)
    x, z = xz.chunk(2, dim=-1)                                            (or z = xz[..., D:])
    y  = bidirectional_scan(..., z.transpose(1, 2), ..., z_silu=False)
 -> xz = ptq4vm_fused::int8_linear_silu(xq, ..., bias, D, torch.float32)  (columns [D, 2D) hold silu(z))
    y  = bidirectional_scan(..., z.transpose(1, 2), ..., z_silu=True)

``bidirectional_scan`` is the fused op with or without its quantize (Vim's one scan a block). The epilogue
runs the scan kernels' own SiLU on the value the scan would read, so the gate the scan multiplies by is, bit
for bit, the one it computed before (docs/design.md section 3.3); the scan no longer pays a SiLU (an exp2, a
reciprocal and ~6 instructions per channel and token on sm_90). Only where exact: in_proj's output in fp32
(stored fp16 / bf16, silu(z) would be rounded where the scan keeps fp32), z its last columns reaching the scan
through transposes and value-preserving casts that nothing else reads, every other reader of in_proj's output
reading columns before z's (Vim's x: the conv). Counted per GEMM; anchored on the scan. Not taken: the
single-direction and ordered scans (``ptq4vm::`` ops, whose schema has no such flag), the float path.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import GraphModule, Node

from .. import ops  # noqa: F401  (registers torch.ops.ptq4vm)
from . import report
from .fused_ops import FUSED_OPS
from .match import bind, bind_custom, column_slice, is_custom_op, norm_dim, strip_casts, tensor
from .rewrite import insert_call

NAME = "linear_silu"
LINEAR = torch.ops.ptq4vm.int8_linear
FUSED = FUSED_OPS.int8_linear_silu
SCANS = (FUSED_OPS.bidirectional_scan, FUSED_OPS.bidirectional_scan_quantize)


def rewrite(gm: GraphModule) -> int:
    """In place; returns the number of GEMMs that took their scan's SiLU."""
    count = 0
    for node in list(gm.graph.nodes):
        packet = next((p for p in SCANS if is_custom_op(node, p)), None)
        found = None if packet is None else _plan(node, packet)
        if isinstance(found, str):
            report.skipped(NAME, found, node)
        elif found is not None:
            _apply(node, packet, *found)
            count += 1
    return count


def _plan(node: Node, packet) -> None | str | tuple[Node, int]:
    """(in_proj's int8_linear node, the first column of z in its output), a reason, or None (no z, z already
    activated, or z no quantized GEMM's last columns: nothing to move)."""
    args = bind_custom(node, packet)
    if args["z"] is None or args["z_silu"] is not False:
        return None
    found = _in_proj(args["z"])
    if found is None or isinstance(found, str):
        return found
    linear, start = found
    dtype = bind_custom(linear, LINEAR)["out_dtype"]
    if dtype != torch.float32:
        return f"in_proj's output is {str(dtype).replace('torch.', '')}: silu(z) stored in it would be rounded " \
               f"where the scan keeps fp32"
    return linear, start


def _in_proj(z: object) -> None | str | tuple[Node, int]:
    """(the int8_linear node whose output columns [start, N) ``z`` is, through transposes and value-preserving
    casts of it alone and a last chunk or a slice to the end of the last dim; that start), a reason when
    something else reads z's columns on the way, or None when z is no such columns of an int8_linear output."""
    path, node = [], z
    while isinstance(node, Node):  # up through casts and transposes to the column selection
        up = strip_casts(node)
        if up is node:
            transposed = bind(node, "transpose")
            if transposed is None or node.all_input_nodes != [transposed["input"]]:
                break
            up = transposed["input"]
        path.append(node)
        node = up
    selected = _last_columns(node)
    if selected is None:
        return None
    linear, start = selected
    readers = [n for n in linear.users if n is not node and n is not node.args[0]]
    if any(len(n.users) != 1 for n in [node, *path]) or not all(_columns_before(n, start) for n in readers):
        return "in_proj's z columns have other users"
    if node.args[0] is not linear and not all(_columns_before(n, start) for n in node.args[0].users if n is not node):
        return "in_proj's z columns have other users"
    return linear, start


def _last_columns(node: object) -> tuple[Node, int] | None:
    """For ``node`` = ``linear(...).chunk(k, -1)[k - 1]`` or ``linear(...)[..., start:]`` (linear an int8_linear
    call): (linear, the first column it selects); else None."""
    if not (isinstance(node, Node) and node.op == "call_function" and node.target is operator.getitem):
        return None
    source, index = node.args
    chunks = _chunk(source)
    if chunks is not None:
        linear, k, size = chunks
        return (linear, (k - 1) * size) if index == k - 1 else None
    columns = column_slice(node)
    if columns is None or not is_custom_op(source, LINEAR) or columns[2] < tensor(source).shape[-1]:
        return None
    return source, columns[1]


def _chunk(node: object) -> tuple[Node, int, int] | None:
    """For ``node`` = ``linear(...).chunk(k, dim=-1)`` (method or torch.chunk), linear an int8_linear call:
    (linear, the number of chunks, the columns of each but the last); else None."""
    if not isinstance(node, Node) or not ((node.op == "call_method" and node.target == "chunk")
                                          or (node.op == "call_function" and node.target is torch.chunk)):
        return None
    bound = dict(zip(("input", "chunks", "dim"), node.args)) | dict(node.kwargs)
    linear, out = bound.get("input"), tensor(bound.get("input"))
    if not is_custom_op(linear, LINEAR) or out is None or not isinstance(bound.get("chunks"), int):
        return None
    if not isinstance(bound.get("dim", 0), int) or norm_dim(bound.get("dim", 0), out.dim()) != out.dim() - 1:
        return None
    size = -(-out.shape[-1] // bound["chunks"])
    chunks = -(-out.shape[-1] // size)  # torch.chunk may return fewer chunks than asked
    return linear, chunks, size


def _columns_before(node: Node, start: int) -> bool:
    """Whether ``node`` reads only columns before ``start`` of what it indexes: an earlier chunk, or a slice of
    the last dim that stops by ``start``."""
    if not (node.op == "call_function" and node.target is operator.getitem):
        return False
    source, index = node.args
    chunks = _chunk(source)
    if chunks is not None:
        return isinstance(index, int) and 0 <= index < chunks[1] - 1
    columns = column_slice(node)
    return columns is not None and columns[2] <= start


def _apply(scan: Node, packet, linear: Node, start: int) -> None:
    """Swap in_proj's GEMM for its SiLU form and tell the scan its z is activated."""
    gemm = bind_custom(linear, LINEAR)
    fused_args = (gemm["xq"], gemm["x_scale"], gemm["x_zero_point"], gemm["wq"], gemm["w_scale"], gemm["w_colsum"],
                  gemm["bias"], start, gemm["out_dtype"])
    call = insert_call(linear, FUSED.default, fused_args + (() if gemm["autotune"] else (False,)))
    linear.replace_all_uses_with(call)
    linear.graph.erase_node(linear)
    scan.kwargs = {**scan.kwargs, "z_silu": True}
    report.applied(NAME)
