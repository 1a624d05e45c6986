"""The ``ptq4vm`` torch.compile backend.

    torch.compile(qmodel, backend="ptq4vm", options={"fusions": [...], "autotune": False})

Found through the ``torch_dynamo_backends`` entry point declared in pyproject.toml (this module is
never registered on import). On the graph Dynamo hands it, the backend applies the enabled
rewrites (:data:`REWRITES`, in order): each replaces a ptq4vm op pattern by a ``ptq4vm_fused`` op
whose CUDA implementation is a Triton kernel and whose implementation elsewhere is the kernel's
reference. It then compiles the graph with Inductor, which calls the fused ops as extern kernels.
A graph without ptq4vm ops is compiled by Inductor as is (said once per process). The backend only
lowers what ``ptq4vm_fx.convert`` produced: it never quantizes anything itself. Inference only.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional

import torch
from torch._inductor.compile_fx import compile_fx
from torch.fx import GraphModule

from . import report
from .fuse_add_rmsnorm_quantize import fuse_add_rmsnorm_quantize
from .fuse_bidirectional_scan import fuse_bidirectional_scan
from .fuse_conv1d_silu_quantize import fuse_conv1d_silu_quantize
from .fuse_int8_linear import fuse_int8_linear
from .fuse_scan_quantize import fuse_scan_quantize
from .lower_quantize_per_token import lower_quantize_per_token
from .match import op_namespace
from .options import FUSIONS, BackendOptions

REWRITES: dict[str, Callable[[GraphModule], int]] = {
    "bidirectional_scan": fuse_bidirectional_scan,
    "scan_quantize": fuse_scan_quantize,
    "add_rmsnorm_quantize": fuse_add_rmsnorm_quantize,
    "conv1d_silu_quantize": fuse_conv1d_silu_quantize,
    "int8_linear": fuse_int8_linear,
    "quantize_per_token": lower_quantize_per_token,
}
assert tuple(REWRITES) == FUSIONS  # one rewrite per fusion name, in the order they must run


def has_ptq4vm_ops(gm: GraphModule) -> bool:
    return any(n.op == "call_function" and op_namespace(n.target) == "ptq4vm" for n in gm.graph.nodes)


def lower_graph(gm: GraphModule, fusions: Iterable[str] = FUSIONS) -> dict[str, int]:
    """Apply the rewrites named in ``fusions`` to ``gm`` in place (in :data:`REWRITES` order).

    Returns the number of times each was applied; the counters in :mod:`.report` add them up."""
    enabled = BackendOptions(fusions=tuple(fusions)).fusions
    applied = {name: REWRITES[name](gm) for name in enabled}
    gm.graph.lint()
    gm.recompile()
    report.graph_lowered()
    return applied


def ptq4vm_backend(
    gm: GraphModule,
    example_inputs: list[Any],
    *,
    options: Optional[Mapping[str, Any]] = None,
    mode: Optional[str] = None,
) -> Callable:
    """torch.compile backend: lower the ptq4vm ops of ``gm``, then compile it with Inductor."""
    opts = BackendOptions.from_compile(options)
    if has_ptq4vm_ops(gm):
        lower_graph(gm, opts.fusions)
    else:
        report.graph_without_ptq4vm_ops()
    return compile_fx(gm, example_inputs, config_patches=opts.inductor_patches(mode))
