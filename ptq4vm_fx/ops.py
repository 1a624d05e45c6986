"""The ptq4vm custom ops ``torch.ops.ptq4vm.*``, the ones a quantized model calls (docs/design.md section 6).

Each op is defined once (:func:`define_op`): one name, one signature, with its CPU implementation (the
pure-PyTorch ``*_ref`` beside its Triton kernel), its CUDA implementation (the kernel's public function,
same signature) and its fake (shapes only, for tracing). Importing this module registers them
(``torch.library`` needs a definition before any graph can hold an op). Numerics: :mod:`.quant.integer`.

* ``selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)``: float, differentiable
  (on the CPU, with a gradient to compute, it runs :func:`ptq4vm_fx.scan.selective_scan_ref`, whose own
  backward needs no second forward; elsewhere its backward recomputes through that reference).
* ``ordered_scan(u, deltas, A, Bs, Cs, D, z, delta_bias, order, scatter, delta_softplus, z_order=None)``: K
  scans, each reading the tokens through its order map (z through z_order if given), summed
  (:func:`ptq4vm_fx.scan.ordered_scan_ref`); float,
  differentiable (the reference, whose autograd keeps the scans' checkpoints, with a gradient to compute).
* ``ordered_conv1d_silu(x, weight, bias, order, reverse)``: depthwise conv1d + SiLU over the sequence of x's
  tokens an order map reads (LocalVim's per-direction conv; :mod:`.kernels.quantize`); differentiable (its
  reference, with a gradient to compute).
* ``quantize_per_token(x, inv_smooth, scale, zero_point, bits)`` -> int8 codes.
* ``int8_linear(xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias, out_dtype, autotune=True)``.
* ``vq_linear(x, codes, codebook, bias)``: float x, the weight decoded from packed codes and an fp16
  codebook (:mod:`.kernels.vq_linear`).

The lowering's fusions (``torch.ops.ptq4vm_fused.*``) are defined the same way in
:mod:`ptq4vm_fx.lowering.fused_ops`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import torch
from torch import Tensor

from .errors import InputError
from .kernels import int8_linear as _gemm
from .kernels import quantize as _quantize
from .kernels import selective_scan as _scan_kernels
from .kernels import vq_linear as _vq
from .scan import ordered_scan_ref, selective_scan_ref

__all__ = ["define_op", "selective_scan", "ordered_scan", "ordered_conv1d_silu", "quantize_per_token", "int8_linear",
           "vq_linear"]


# The CUDA implementation (a Triton launch) of every op defined here and in lowering/fused_ops.py, by
# overload: tests and scripts run them on the CPU through the Triton interpreter.
CUDA_KERNELS: dict[torch._ops.OpOverload, Callable] = {}


def define_op(qualname: str, ref: Callable, cuda: Callable, fake: Callable) -> torch.library.CustomOpDef:
    """The custom op ``qualname``: its schema and CPU implementation from ``ref`` (annotated), ``cuda``
    (same signature) on CUDA tensors, ``fake`` for tracing. Outputs never alias inputs."""
    op = torch.library.custom_op(qualname, ref, mutates_args=())
    _register(op, cuda, fake)
    return op


def _register(op: torch.library.CustomOpDef, cuda: Callable, fake: Callable) -> None:
    op.register_kernel("cuda")(cuda)
    op.register_fake(fake)
    CUDA_KERNELS[op._opoverload] = cuda


# --------------------------------------------------------------------------------------------
# ptq4vm::selective_scan
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("ptq4vm::selective_scan", mutates_args=())
def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor],
    z: Optional[Tensor],
    delta_bias: Optional[Tensor],
    delta_softplus: bool,
    reverse: bool,
) -> Tensor:
    """:func:`ptq4vm_fx.scan.selective_scan_ref`; on CUDA the Triton kernel
    (:func:`ptq4vm_fx.kernels.selective_scan.selective_scan`)."""
    _check_scan_shapes(u, delta, A, B, C, D, z, delta_bias)
    with torch.no_grad():
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)


def _check_scan_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3:
        raise InputError(f"selective_scan: u must be (batch, d, L), got shape {tuple(u.shape)}")
    batch, d, length = u.shape
    n = A.shape[-1]
    expected = {
        "delta": (delta, (batch, d, length)),
        "A": (A, (d, n)),
        "B": (B, (batch, n, length)),
        "C": (C, (batch, n, length)),
        "D": (D, (d,)),
        "z": (z, (batch, d, length)),
        "delta_bias": (delta_bias, (d,)),
    }
    for name, (t, shape) in expected.items():
        if t is not None and tuple(t.shape) != shape:
            raise InputError(f"selective_scan: {name} must have shape {shape}, got {tuple(t.shape)}")


_register(selective_scan, _scan_kernels.selective_scan, _scan_kernels.selective_scan_fake)


def _scan_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*[t if t is not None else torch.empty(0) for t in inputs[:8]])
    ctx.present = [t is not None for t in inputs[:8]]
    ctx.flags = inputs[8:]


def _scan_backward(ctx, grad_out):
    saved = [t if p else None for t, p in zip(ctx.saved_tensors, ctx.present)]
    needs = [t is not None and ctx.needs_input_grad[i] for i, t in enumerate(saved)]
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(n) if t is not None else None for t, n in zip(saved, needs)]
        out = selective_scan_ref(*leaves, *ctx.flags)
        wrt = [t for t, n in zip(leaves, needs) if n]
        grads = iter(torch.autograd.grad(out, wrt, grad_out) if wrt else [])
    return tuple(next(grads) if n else None for n in needs) + (None, None)


selective_scan.register_autograd(_scan_backward, setup_context=_scan_setup_context)

_AUTOGRAD = torch.library.Library("ptq4vm", "IMPL")


def _scan_autograd_cpu(keyset, *args):
    """The op's autograd kernel for CPU tensors. With a gradient to compute, the differentiable reference
    itself: its autograd keeps the scan's checkpoints, so backward does not run the forward again (the
    registered backward above, used on other devices, recomputes it). Otherwise the op below autograd."""
    if torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in args):
        _check_scan_shapes(*args[:8])
        return selective_scan_ref(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return selective_scan._opoverload.redispatch(keyset & torch._C._after_autograd_keyset, *args)


_AUTOGRAD.impl("selective_scan", _scan_autograd_cpu, "AutogradCPU", with_keyset=True)


# --------------------------------------------------------------------------------------------
# ptq4vm::ordered_scan
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("ptq4vm::ordered_scan", mutates_args=())
def ordered_scan(
    u: Tensor,
    deltas: Sequence[Tensor],
    A: Tensor,
    Bs: Sequence[Tensor],
    Cs: Sequence[Tensor],
    D: Optional[Tensor],
    z: Optional[Tensor],
    delta_bias: Optional[Tensor],
    order: Tensor,
    scatter: Optional[Tensor],
    delta_softplus: bool,
    z_order: Optional[Tensor] = None,
) -> Tensor:
    """:func:`ptq4vm_fx.scan.ordered_scan_ref`; on CUDA the Triton kernel
    (:func:`ptq4vm_fx.kernels.selective_scan.ordered_scan`)."""
    _check_ordered_scan_shapes(u, deltas, A, Bs, Cs, D, z, delta_bias, order, scatter, z_order)
    with torch.no_grad():
        return ordered_scan_ref(u, list(deltas), A, list(Bs), list(Cs), D, z, delta_bias, order, scatter,
                                delta_softplus, z_order)


def _check_ordered_scan_shapes(u, deltas, A, Bs, Cs, D, z, delta_bias, order, scatter, z_order=None) -> None:
    if u.dim() != 3 or A.dim() != 3 or order.dim() != 2:
        raise InputError(f"ordered_scan: u must be (batch, d, L), A (K, d, n) and order (K, S), got shapes "
                         f"{tuple(u.shape)}, {tuple(A.shape)}, {tuple(order.shape)}")
    directions = order.shape[0]
    if not len(deltas) == len(Bs) == len(Cs) == directions:
        raise InputError(f"ordered_scan: order has {directions} directions but {len(deltas)} deltas, "
                         f"{len(Bs)} Bs and {len(Cs)} Cs were given")
    if z_order is not None and (z is None or z.dim() != 3 or tuple(z.shape[:2]) != tuple(u.shape[:2])):
        raise InputError(f"ordered_scan: z_order reads z, which must be ({u.shape[0]}, {u.shape[1]}, T), got "
                         f"{None if z is None else tuple(z.shape)}")
    for name, t in (("A", A), ("D", D), ("delta_bias", delta_bias), ("scatter", scatter), ("z_order", z_order)):
        want = order.shape if name in ("scatter", "z_order") else (directions, u.shape[1])
        if t is not None and tuple(t.shape[:2]) != tuple(want):
            raise InputError(f"ordered_scan: {name} must have {directions} directions of {want[1]}, got "
                             f"shape {tuple(t.shape)}")
    for k in range(directions):
        _check_scan_shapes(u, deltas[k], A[k], Bs[k], Cs[k], None if D is None else D[k],
                           z if z_order is None else None, None if delta_bias is None else delta_bias[k])


_register(ordered_scan, _scan_kernels.ordered_scan, _scan_kernels.ordered_scan_fake)


def _autograd_through_reference(op: torch.library.CustomOpDef, reference: Callable) -> None:
    """Register ``op``'s autograd kernel (CPU and CUDA): with a gradient to compute, the differentiable
    ``reference`` on the same arguments (its own autograd: the scan's keeps its checkpoints); otherwise
    the op below autograd."""

    def kernel(keyset, *args):
        tensors = [t for a in args for t in (a if isinstance(a, (list, tuple)) else (a,))]
        if torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in tensors):
            return reference(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return op._opoverload.redispatch(keyset & torch._C._after_autograd_keyset, *args)

    for key in ("AutogradCPU", "AutogradCUDA"):
        _AUTOGRAD.impl(op._name, kernel, key, with_keyset=True)


def _ordered_scan_under_grad(u, deltas, A, Bs, Cs, *rest):
    _check_ordered_scan_shapes(u, deltas, A, Bs, Cs, *rest[:5], *rest[6:])
    return ordered_scan_ref(u, list(deltas), A, list(Bs), list(Cs), *rest)


_autograd_through_reference(ordered_scan, _ordered_scan_under_grad)


# --------------------------------------------------------------------------------------------
# ptq4vm::ordered_conv1d_silu, ptq4vm::quantize_per_token, ptq4vm::int8_linear, ptq4vm::vq_linear
# --------------------------------------------------------------------------------------------

ordered_conv1d_silu = define_op("ptq4vm::ordered_conv1d_silu", _quantize.ordered_conv1d_silu_ref,
                                _quantize.ordered_conv1d_silu, _quantize.ordered_conv1d_silu_fake)
_autograd_through_reference(ordered_conv1d_silu, _quantize.ordered_conv1d_silu_ref)

quantize_per_token = define_op("ptq4vm::quantize_per_token", _quantize.quantize_per_token_ref,
                               _quantize.quantize_per_token, _quantize.quantize_per_token_fake)
int8_linear = define_op("ptq4vm::int8_linear", _gemm.int8_linear_ref, _gemm.int8_linear, _gemm.int8_linear_fake)
vq_linear = define_op("ptq4vm::vq_linear", _vq.vq_linear_ref, _vq.vq_linear, _vq.vq_linear_fake)
