"""The ``ptq4vm`` torch.compile backend.

    torch.compile(qmodel, backend="ptq4vm", options={"fusions": [...], "autotune": False})

(options: :mod:`.options`).

Found through the ``torch_dynamo_backends`` entry point declared in pyproject.toml (this module is
never registered on import). On the graph Dynamo hands it, the backend applies the enabled
rewrites (:data:`REWRITES`, in order): each replaces a ptq4vm op pattern by a ``ptq4vm_fused`` op
whose CUDA implementation is a Triton kernel and whose implementation elsewhere is the kernel's
reference. It then compiles the graph with Inductor, which calls the fused ops as extern kernels.
A float model's graph (ptq4vm ops, none quantized: a float Vim's scans) gets the same rewrites, of
which the float ones fire (the bidirectional scan, conv1d + SiLU), and the backend says once per
process that nothing is quantized; under autograd it is compiled by Inductor as is (the fused ops
have no backward). A graph without any ptq4vm op goes to Inductor as is, said once too. The backend
only lowers what ``ptq4vm_fx.convert`` produced: it never quantizes anything itself. Quantized
graphs: inference only (no_grad / inference_mode).

Inductor's on-disk caches key a graph by its ops, not by the fake implementations that gave it
its strides, so after an upgrade of this package they could hand back code compiled against old
layouts. The backend therefore tags its compilations with a hash of the modules that define the
ops (:func:`ops_fingerprint`).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch._inductor.compile_fx import compile_fx
from torch.fx import GraphModule

from .. import ops, scan  # ops registers torch.ops.ptq4vm
from ..kernels import _common
from ..kernels import int8_linear as _gemm
from ..kernels import quantize as _quantize
from ..kernels import segmented_scan as _segmented
from ..kernels import selective_scan as _scan_kernels
from ..kernels import vq_linear as _vq
from ..progress import hide_cuda_home_notice
from ..quant import integer
from . import fused_ops, report
from .match import is_custom_op, op_namespace
from .options import FUSIONS, REWRITES, BackendOptions

QUANTIZED_OPS = (torch.ops.ptq4vm.quantize_per_token, torch.ops.ptq4vm.int8_linear, torch.ops.ptq4vm.vq_linear)
GEMMS = (torch.ops.ptq4vm.int8_linear, fused_ops.FUSED_OPS.int8_linear_quantize,
         fused_ops.FUSED_OPS.int8_linear_softplus, fused_ops.FUSED_OPS.int8_linear_silu)


def has_quantized_ops(gm: GraphModule) -> bool:
    """True when ``gm`` calls ``ptq4vm::quantize_per_token``, ``ptq4vm::int8_linear`` or
    ``ptq4vm::vq_linear`` (a float Vim calls only ``ptq4vm::selective_scan``)."""
    return any(is_custom_op(n, op) for n in gm.graph.nodes for op in QUANTIZED_OPS)


def has_ptq4vm_ops(gm: GraphModule) -> bool:
    """True when ``gm`` calls any ``ptq4vm::`` op (a float Vim: its selective scans)."""
    return any(op_namespace(n.target) == "ptq4vm" for n in gm.graph.nodes if n.op == "call_function")


@functools.cache
def ops_fingerprint() -> str:
    """"ptq4vm-<16 hex digits>": a hash of the sources of the ptq4vm and ptq4vm_fused ops (their
    definitions, the kernel modules that implement them, the numerics and the scan reference)."""
    digest = hashlib.sha256()
    for module in (ops, fused_ops, integer, scan, _gemm, _quantize, _scan_kernels, _segmented, _vq, _common):
        digest.update(Path(module.__file__).read_bytes())
    return "ptq4vm-" + digest.hexdigest()[:16]


def lower_graph(gm: GraphModule, fusions: Iterable[str] = FUSIONS, tune_gemm: bool = True) -> dict[str, int]:
    """Apply the rewrites named in ``fusions`` to ``gm`` in place (in :data:`REWRITES` order); with
    ``tune_gemm`` False, the INT8 GEMMs they produce take fixed tiles instead of tuning them.

    Returns the number of times each was applied; the counters in :mod:`.report` add them up, and
    count the ``ptq4vm::vq_linear`` and ``ptq4vm::ordered_scan`` calls the graph hands to Inductor (no
    rewrite takes them: each op runs its kernel on CUDA itself)."""
    enabled = BackendOptions(fusions=tuple(fusions)).fusions
    applied = {name: REWRITES[name](gm) for name in enabled}
    report.vq_linears(sum(is_custom_op(n, torch.ops.ptq4vm.vq_linear) for n in gm.graph.nodes))
    report.ordered_scans(sum(is_custom_op(n, torch.ops.ptq4vm.ordered_scan) for n in gm.graph.nodes))
    if not tune_gemm:
        for node in gm.graph.nodes:
            if any(is_custom_op(node, op) for op in GEMMS):
                node.kwargs = {**node.kwargs, "autotune": False}
    gm.graph.lint()
    gm.recompile()
    report.graph_lowered()
    return applied


def ptq4vm_backend(
    gm: GraphModule,
    example_inputs: list[Any],
    *,
    options: Mapping[str, Any] | None = None,
    mode: str | None = None,
) -> Callable:
    """torch.compile backend: lower the ptq4vm ops of ``gm``, then compile it with Inductor."""
    hide_cuda_home_notice()  # Inductor imports torch.utils.cpp_extension, which logs it on a CPU machine
    opts = BackendOptions.from_compile(options)
    needs_grad = torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                                 for t in example_inputs)
    if has_quantized_ops(gm):
        if needs_grad:
            raise RuntimeError(
                "ptq4vm backend: the integer ops of a quantized model have no gradient; call the compiled "
                "model under torch.no_grad() or torch.inference_mode() (or requires_grad_(False) the model)"
            )
        lower_graph(gm, opts.fusions, tune_gemm=opts.autotune is not False)
    elif not has_ptq4vm_ops(gm):
        report.graph_without_ptq4vm_ops()
    elif needs_grad:
        report.graph_kept_for_autograd()
    else:
        report.float_graph()
        lower_graph(gm, opts.fusions)
    tag = "|".join(t for t in (torch.compiler.config.cache_key_tag, ops_fingerprint()) if t)
    patches = opts.inductor_patches(mode)
    with torch.compiler.config.patch(cache_key_tag=tag):
        compiled = compile_fx(gm, example_inputs, config_patches=patches)
    on_gpu = any(isinstance(t, torch.Tensor) and t.is_cuda for t in example_inputs)
    return cloning_outputs(compiled) if patches.get("triton.cudagraphs") and on_gpu else compiled


def cloning_outputs(compiled: Callable) -> Callable:
    """``compiled`` returning copies of its tensor outputs: a CUDA graph's outputs live in its memory
    pool and the next replay overwrites them; the copies stay valid. Outputs that alias an input
    are not in the pool and come back as they are (which ones those are is fixed by the graph: found
    on the first call)."""
    aliased = None

    def run(*args):
        nonlocal aliased
        outs = compiled(*args)
        if aliased is None:
            inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
            aliased = {i for i, o in enumerate(outs)
                       if isinstance(o, torch.Tensor) and o.untyped_storage().data_ptr() in inputs}
        return type(outs)(o.clone() if isinstance(o, torch.Tensor) and i not in aliased else o
                          for i, o in enumerate(outs))

    return run
