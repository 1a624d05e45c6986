"""Wall time and peak memory of a stretch of work (calibration, conversion).

    with Measured(device) as m:
        ...
    m.seconds, m.peak_rss_mib, m.peak_cuda_mib, m.start_rss_mib

``peak_rss_mib``: the largest resident set size of the process while the block ran, sampled every
``interval`` seconds from /proc/self/statm by a background thread (a spike shorter than that can be
missed); where /proc is missing, the process's lifetime peak from ``resource.getrusage`` (which
includes everything before the block). ``start_rss_mib``: the resident set at the start (the peak
minus it is what the block added; a Python process with torch and triton imported holds ~0.5-1 GiB
before any model). ``peak_cuda_mib``: on a CUDA device, PyTorch's allocator
peak (``torch.cuda.max_memory_allocated``, reset at the start), else None.
"""

from __future__ import annotations

import os
import resource
import threading
import time

import torch

_STATM = "/proc/self/statm"
_MIB = 1 << 20


def _rss_bytes() -> int | None:
    try:
        with open(_STATM) as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


class Measured:
    """Context manager measuring wall time (``time.perf_counter``) and peak memory (module docstring)."""

    def __init__(self, device: torch.device | str | None = None, interval: float = 0.005):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.interval = interval
        self.seconds = 0.0
        self.peak_rss_mib: float | None = None
        self.peak_cuda_mib: float | None = None
        self.start_rss_mib: float | None = None
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_bytes() or 0)

    def __enter__(self) -> Measured:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        now = _rss_bytes()
        if now is not None:
            self._peak = now
            self.start_rss_mib = now / _MIB
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_cuda_mib = torch.cuda.max_memory_allocated(self.device) / _MIB
        self.seconds = time.perf_counter() - self._start
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_rss_mib = max(self._peak, _rss_bytes() or 0) / _MIB
        else:  # ru_maxrss is in KiB on Linux
            self.peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def to_dict(self) -> dict:
        return {"seconds": self.seconds, "peak_rss_mib": self.peak_rss_mib, "peak_cuda_mib": self.peak_cuda_mib,
                "start_rss_mib": self.start_rss_mib}
