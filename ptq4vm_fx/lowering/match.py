"""Reading the torch-level FX graph Dynamo hands a backend: which op a node is, its arguments, its
tensor metadata.

Dynamo records the op as the program spelled it (``x.transpose(1, 2)`` is a ``call_method`` node,
``torch.transpose(x, 1, 2)`` a ``call_function`` node, ``a + b`` an ``operator.add``), so ops are
recognised by a canonical name over all of their spellings, and arguments are bound to the
parameter names of the torch signature. Module parameters and buffers arrive as placeholders or
as ``get_attr`` nodes; both are plain graph values here. Shapes and dtypes come from the fake
tensor Dynamo stores in ``node.meta["example_value"]`` (a ``get_attr`` node without one is read
from the module).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch.fx import Node

# canonical op -> (call_function targets, call_method names, parameters in order, defaults)
_OPS: dict[str, tuple[frozenset, frozenset, tuple[str, ...], dict[str, Any]]] = {
    "add": (frozenset({operator.add, torch.add}), frozenset({"add"}), ("input", "other"), {"alpha": 1}),
    "mul": (frozenset({operator.mul, torch.mul}), frozenset({"mul"}), ("input", "other"), {}),
    "div": (frozenset({operator.truediv, torch.div, torch.true_divide}), frozenset({"div", "true_divide"}),
            ("input", "other"), {"rounding_mode": None}),
    "pow": (frozenset({operator.pow, torch.pow}), frozenset({"pow"}), ("input", "exponent"), {}),
    "mean": (frozenset({torch.mean}), frozenset({"mean"}), ("input", "dim", "keepdim"),
             {"dim": None, "keepdim": False, "dtype": None}),
    "rsqrt": (frozenset({torch.rsqrt}), frozenset({"rsqrt"}), ("input",), {}),
    "transpose": (frozenset({torch.transpose}), frozenset({"transpose"}), ("input", "dim0", "dim1"), {}),
    "silu": (frozenset({F.silu}), frozenset(), ("input", "inplace"), {"inplace": False}),
    "conv1d": (frozenset({torch.conv1d}), frozenset(),
               ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
               {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}),
    "pad": (frozenset({F.pad, torch._C._nn.pad}), frozenset(), ("input", "pad", "mode", "value"),
            {"mode": "constant", "value": None}),
    "getitem": (frozenset({operator.getitem}), frozenset(), ("input", "index"), {}),
}

# methods that keep a tensor's values when its dtype, device and shape do not change
_CASTS = frozenset({"float", "to", "type", "contiguous"})


def is_op(node: Any, name: str) -> bool:
    """True when ``node`` calls the canonical op ``name`` (any spelling)."""
    if not isinstance(node, Node):
        return False
    functions, methods, _, _ = _OPS[name]
    if node.op == "call_function":
        return node.target in functions
    return node.op == "call_method" and node.target in methods


def bind(node: Any, name: str) -> dict[str, Any] | None:
    """The arguments of a call to canonical op ``name`` by parameter name, defaults filled in;
    None when ``node`` is not that op or passes an argument the signature does not have."""
    if not is_op(node, name):
        return None
    _, _, params, defaults = _OPS[name]
    if len(node.args) > len(params) or set(node.kwargs) - set(params) - set(defaults):
        return None
    bound = dict(defaults)
    bound.update(zip(params, node.args))
    bound.update(node.kwargs)
    return bound if all(p in bound for p in params) else None


def flip_dims(node: Any) -> tuple[int, ...] | None:
    """The dims of ``x.flip(*dims)`` / ``torch.flip(x, dims)``; None for any other node."""
    is_flip = isinstance(node, Node) and (
        (node.op == "call_method" and node.target == "flip")
        or (node.op == "call_function" and node.target is torch.flip)
    )
    if not is_flip:
        return None
    dims = list(node.args[1:]) + ([node.kwargs["dims"]] if "dims" in node.kwargs else [])
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = list(dims[0])
    return tuple(dims) if all(isinstance(d, int) for d in dims) else None


def is_custom_op(node: Any, packet: torch._ops.OpOverloadPacket) -> bool:
    """True when ``node`` calls the custom op ``packet`` (the packet or its default overload)."""
    return isinstance(node, Node) and node.op == "call_function" and node.target in (packet, packet.default)


def bind_custom(node: Node, packet: torch._ops.OpOverloadPacket) -> dict[str, Any]:
    """The arguments of a custom-op call by schema name, defaults filled in."""
    schema = packet.default._schema
    bound = {a.name: a.default_value for a in schema.arguments if a.has_default_value()}
    bound.update(zip((a.name for a in schema.arguments), node.args))
    bound.update(node.kwargs)
    return bound


def op_namespace(target: Any) -> str | None:
    """The library namespace of an OpOverload / OpOverloadPacket target, else None."""
    if isinstance(target, torch._ops.OpOverload):
        return target.namespace
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target._qualified_op_name.split("::")[0]
    return None


def value(node: Any) -> Any:
    """The example value of a graph value: the fake tensor of a node, a constant as is."""
    if not isinstance(node, Node):
        return node
    if "example_value" in node.meta:
        return node.meta["example_value"]
    if "val" in node.meta:
        return node.meta["val"]
    if node.op == "get_attr":
        return operator.attrgetter(node.target)(node.graph.owning_module)
    return None


def tensor(node: Any) -> torch.Tensor | None:
    """The example tensor of ``node``, or None when it is not a tensor (or has no metadata)."""
    v = value(node)
    return v if isinstance(v, torch.Tensor) else None


def column_slice(node: Any) -> tuple[Node, int, int] | None:
    """(source, start, stop) when ``node`` is ``source[..., start:stop]`` (or ``source[:, :, start:stop]``: every
    leading dim whole), a step-1 slice of the last dim with int or None bounds, normalised to source's width as
    Python slices are (``-4:`` -> ``N-4:N``); else None."""
    if not (isinstance(node, Node) and node.op == "call_function" and node.target is operator.getitem):
        return None
    source, index = node.args
    y = tensor(source)
    if y is None:
        return None
    items = list(index) if isinstance(index, tuple) else [index]
    if items and items[0] is Ellipsis:
        items = [slice(None)] * (y.dim() - len(items) + 1) + items[1:]
    if len(items) != y.dim() or any(item != slice(None) for item in items[:-1]):
        return None
    last = items[-1]
    if not isinstance(last, slice) or last.step not in (None, 1):
        return None
    if not all(isinstance(b, (int, type(None))) for b in (last.start, last.stop)):
        return None
    start, stop, _ = last.indices(y.shape[-1])
    return source, start, stop


def strip_casts(node: Any) -> Any:
    """Walk up through casts that do not change the values (same dtype, device and shape)."""
    while isinstance(node, Node) and node.op == "call_method" and node.target in _CASTS and node.args:
        src, out = tensor(node.args[0]), tensor(node)
        if src is None or out is None or (src.dtype, src.device, src.shape) != (out.dtype, out.device, out.shape):
            break
        node = node.args[0]
    return node


def _cast_dtypes(node: Any) -> tuple[torch.dtype, torch.dtype] | None:
    """(input dtype, output dtype) of a cast method that changes nothing but the dtype, else None."""
    if not (isinstance(node, Node) and node.op == "call_method" and node.target in _CASTS and node.args):
        return None
    src, out = tensor(node.args[0]), tensor(node)
    if src is None or out is None or (src.device, src.shape) != (out.device, out.shape):
        return None
    return src.dtype, out.dtype


def rounding(node: Any) -> tuple[Any, torch.dtype]:
    """For ``node`` a cast of an fp32 value to fp16 / bf16 (a rounding): (that value, the dtype);
    otherwise (``node``, torch.float32): no rounding."""
    dtypes = _cast_dtypes(node)
    if dtypes is not None and dtypes[0] == torch.float32 and dtypes[1] in (torch.float16, torch.bfloat16):
        return node.args[0], dtypes[1]
    return node, torch.float32


def widened(node: Any) -> Node | None:
    """For ``node`` a cast of an fp16 / bf16 value to fp32 (exact): that value, else None."""
    dtypes = _cast_dtypes(node)
    if dtypes is not None and dtypes[0] in (torch.float16, torch.bfloat16) and dtypes[1] == torch.float32:
        return node.args[0]
    return None


def only_user(node: Node) -> Node | None:
    """The single user of ``node``, or None when it has several or none."""
    return next(iter(node.users)) if len(node.users) == 1 else None


def norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim
