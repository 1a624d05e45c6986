"""Options of the ``ptq4vm`` backend: ``torch.compile(m, backend="ptq4vm", options={...})``.

* ``fusions``: the rewrites to apply (default: all of :data:`FUSIONS`, each one module of this package);
* ``autotune``: None (default): the INT8 GEMM kernel tunes its tiles on the GPU on first use, once
  per (rows bucketed by powers of two, N, K); the float rest of the graph compiles with Inductor's
  defaults. True: that, and Inductor's ``max_autotune`` for the float rest. False: nothing is
  tuned; the GEMM takes fixed tiles chosen for Vim's shapes (``kernels.int8_linear.fixed_config``),
  with no benchmarking on the first calls;
* ``cudagraphs``: True (default): a graph on a GPU runs as CUDA graphs (Inductor's cudagraph trees),
  one replay per forward instead of a launch per kernel; without them the host's launches took as
  long as the GPU's work (Vim-S, batch 128, H100: 73.1 ms without, 37.0 ms with). The backend
  clones the outputs out of the graphs' memory pool, so results stay valid across calls (plain
  cudagraph trees overwrite them on the next call). Inductor leaves CPU graphs as they are. False:
  every kernel launched from Python;
* ``inductor``: further Inductor config patches, e.g. ``{"coordinate_descent_tuning": True}``.

``torch.compile(..., mode=...)`` adds that mode's Inductor options. Unknown names are errors.
Inductor always runs with ``emulate_precision_casts`` (unless ``inductor`` sets it): its fused
kernels then round at every cast to fp16 / bf16 where eager PyTorch rounds, so a quantized model run
in half precision compiles to the codes its eager run computes (without it, Inductor keeps fp32
across a round trip such as ``x.to(torch.float16).float()``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch._inductor
from torch.fx import GraphModule

from . import (
    fuse_add_rmsnorm_quantize,
    fuse_bidirectional_scan,
    fuse_conv1d_silu,
    fuse_conv1d_silu_quantize,
    fuse_linear_quantize,
    fuse_linear_silu,
    fuse_linear_softplus,
    fuse_scan_quantize,
)

# Every rewrite, by its name, in the order they run (the scan's quantize fusion consumes the scan
# fusion's output; the float conv fusion takes the convs its quantized form left; the softplus moves
# from whichever scan op is left into dt_proj's GEMM, the bidirectional scan's SiLU into in_proj's): the one list of
# fusions. ptq4vm::quantize_per_token and ptq4vm::int8_linear need none: they run their kernels on
# CUDA themselves. bidirectional_scan and conv1d_silu quantize nothing: they lower a float model too.
REWRITES: dict[str, Callable[[GraphModule], int]] = {
    module.NAME: module.rewrite
    for module in (fuse_bidirectional_scan, fuse_scan_quantize, fuse_add_rmsnorm_quantize,
                   fuse_conv1d_silu_quantize, fuse_conv1d_silu, fuse_linear_quantize, fuse_linear_softplus,
                   fuse_linear_silu)
}
FUSIONS = tuple(REWRITES)
_KEYS = ("fusions", "autotune", "cudagraphs", "inductor")


@dataclass(frozen=True)
class BackendOptions:
    """The backend's options (module docstring), validated; ``fusions`` kept in FUSIONS order."""

    fusions: tuple[str, ...] = FUSIONS
    autotune: bool | None = None
    cudagraphs: bool = True
    inductor: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.fusions, str) or not isinstance(self.fusions, Iterable):
            raise TypeError(f"ptq4vm backend option 'fusions' must be a list of names, got {self.fusions!r}")
        fusions = tuple(self.fusions)
        unknown = [f for f in fusions if f not in FUSIONS]
        if unknown:
            raise ValueError(f"ptq4vm backend: unknown fusion(s) {unknown}; choose from {list(FUSIONS)}")
        if "scan_quantize" in fusions and "bidirectional_scan" not in fusions:
            raise ValueError("ptq4vm backend: fusion 'scan_quantize' quantizes in the epilogue of the "
                             "'bidirectional_scan' kernel; enable both or neither")
        object.__setattr__(self, "fusions", tuple(f for f in FUSIONS if f in fusions))
        if self.autotune is not None and not isinstance(self.autotune, bool):
            raise TypeError(f"ptq4vm backend option 'autotune' must be True, False or None, got {self.autotune!r}")
        if not isinstance(self.cudagraphs, bool):
            raise TypeError(f"ptq4vm backend option 'cudagraphs' must be a bool, got {self.cudagraphs!r}")
        if not isinstance(self.inductor, Mapping):
            raise TypeError(f"ptq4vm backend option 'inductor' must be a dict, got {self.inductor!r}")
        known = set(torch._inductor.list_options())
        unknown = sorted(k for k in self.inductor if k not in known)
        if unknown:
            raise ValueError(f"ptq4vm backend option 'inductor': unknown Inductor config {unknown}")

    @classmethod
    def from_compile(cls, options: Mapping[str, Any] | None) -> BackendOptions:
        """From the ``options`` dict of ``torch.compile`` (None: the defaults)."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(_KEYS))
        if unknown:
            raise ValueError(f"ptq4vm backend: unknown option(s) {unknown}; the options are {list(_KEYS)}")
        return cls(**options)

    def inductor_patches(self, mode: str | None) -> dict[str, Any]:
        """Inductor config patches for compile_fx: precision-faithful casts and ``cudagraphs``, the mode's,
        then autotune, then ``inductor``."""
        # a mode that names its choice of CUDA graphs (its options only say it when it wants them) wins
        cudagraphs = self.cudagraphs and mode != "max-autotune-no-cudagraphs"
        patches = {"emulate_precision_casts": True, "triton.cudagraphs": cudagraphs}
        patches.update(torch._inductor.list_mode_options(mode) if mode else {})
        if self.autotune is True:
            patches["max_autotune"] = True
        patches.update(self.inductor)
        return patches
