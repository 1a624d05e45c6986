"""GPU timing: CUDA events around each run, warm-up first, median of the runs (docs/design.md section 8)."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

L2_FLUSH_BYTES = 256 * 2**20  # larger than any current GPU's L2, as triton.testing.do_bench uses


def median_ms(fn: Callable[[], object], *, warmup: int = 10, runs: int = 100, flush_l2: bool = True,
              graph: bool = False) -> float:
    """Median wall time of ``fn()`` on the current CUDA stream, in milliseconds.

    ``warmup`` untimed calls first (compilation, autotuning, allocator), then ``runs`` >= 50 timed
    calls, each bracketed by CUDA events; with ``flush_l2`` an L2-sized buffer is zeroed before each
    run so that weights do not stay cached between runs. With ``graph`` the timed call is the replay
    of a CUDA graph captured from ``fn`` after the warm-up: device time without the host's launch
    overhead (for single kernels, whose launch can take longer than they run)."""
    if runs < 50:
        raise ValueError(f"runs must be >= 50 for a stable median, got {runs}")
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda") if flush_l2 else None
    stream = torch.cuda.Stream() if graph else torch.cuda.current_stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # graph capture wants the warm-up off the default stream
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    if graph:
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph):
            fn()
        fn = cuda_graph.replay
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(runs)]
    for start, end in events:
        if flush is not None:
            flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)
