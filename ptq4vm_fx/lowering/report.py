"""What the lowering did, in ``torch._dynamo.utils.counters``.

* ``counters["ptq4vm"][rewrite]``: how many times each rewrite was applied (summed over the graphs
  compiled since the counters were last cleared), plus ``graphs_lowered`` (every graph the rewrites
  ran on), ``float_graphs`` (those of them without quantized ops: a float model, lowered to the
  float fusions), ``graphs_kept_for_autograd`` (float graphs compiled under autograd: not rewritten,
  the fused ops have no backward) and ``graphs_without_ptq4vm_ops`` (no ptq4vm op at all: Inductor as is);
  ``vq_linear``: the ``ptq4vm::vq_linear`` calls of the lowered graphs (each runs the VQ GEMM);
  ``ordered_scan``: their ``ptq4vm::ordered_scan`` calls (VMamba's cross scans, LocalVSSM's directions: each
  runs the ordered scan kernel, no rewrite needed).
* ``counters["ptq4vm_skipped"]["rewrite: reason"]``: candidates a kernel cannot take, left as the
  reference ops. Each distinct reason is also logged once per process as a warning.
"""

from __future__ import annotations

import logging

from torch._dynamo.utils import counters
from torch.fx import Node

APPLIED = "ptq4vm"
SKIPPED = "ptq4vm_skipped"

log = logging.getLogger("ptq4vm_fx.lowering")
_warned: set[str] = set()


def applied(rewrite: str) -> None:
    counters[APPLIED][rewrite] += 1


def skipped(rewrite: str, reason: str, node: Node) -> None:
    key = f"{rewrite}: {reason}"
    counters[SKIPPED][key] += 1
    log.debug("ptq4vm lowering: %s not applied at node %s: %s", rewrite, node.name, reason)
    _warn_once(key, "ptq4vm backend: %s not applied (%s); the reference op stays in the graph", rewrite, reason)


def vq_linears(calls: int) -> None:
    if calls:
        counters[APPLIED]["vq_linear"] += calls


def ordered_scans(calls: int) -> None:
    if calls:
        counters[APPLIED]["ordered_scan"] += calls


def graph_lowered() -> None:
    counters[APPLIED]["graphs_lowered"] += 1


def float_graph() -> None:
    counters[APPLIED]["float_graphs"] += 1
    _warn_once("float graph", "ptq4vm backend: nothing in this graph is quantized (a float model): its scans and "
               "conv1d + SiLU run the fused float kernels, its linears stay float. For INT8, quantize the model "
               "first with ptq4vm_fx.prepare and ptq4vm_fx.convert.")


def graph_kept_for_autograd() -> None:
    counters[APPLIED]["graphs_kept_for_autograd"] += 1
    _warn_once("autograd", "ptq4vm backend: a float graph compiled under autograd (inputs that require grad, "
               "grad mode on) is compiled by Inductor as it is: the fused kernels are inference only. Call the "
               "compiled model under torch.no_grad() or torch.inference_mode() to run them.")


def graph_without_ptq4vm_ops() -> None:
    counters[APPLIED]["graphs_without_ptq4vm_ops"] += 1
    _warn_once("no ptq4vm ops", "ptq4vm backend: no ptq4vm ops to lower in this graph (no quantized op, no "
               "selective scan: not a ptq4vm_fx model?); compiling it with Inductor as it is.")


def lowering_counters() -> dict[str, int]:
    """A copy of the applied-rewrite counters."""
    return dict(counters[APPLIED])


def skipped_counters() -> dict[str, int]:
    """A copy of the skipped-candidate counters ("rewrite: reason" -> count)."""
    return dict(counters[SKIPPED])


def _warn_once(key: str, message: str, *args) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)
