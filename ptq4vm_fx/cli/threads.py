"""``--threads``: how many CPU threads PyTorch's operators use while a command runs.

More threads than idle cores is the costly mistake: every operator ends at a barrier of its OpenMP
threads, so one thread waiting for a core stalls the others, operator after operator (the scan runs
thousands of small ones). On a 2-core machine shared with another process, the bundled model's
calibration took 345 s with PyTorch's default of 2 threads and 23 s with 1. ``auto`` (the default)
takes PyTorch's default (the physical cores, or ``OMP_NUM_THREADS`` when set, which it respects) capped
at the cores idle when the command starts: the CPUs this process may run on minus the 1-minute load
average, at least 1. A number sets the count as given.
"""

from __future__ import annotations

import argparse
import os

import torch

AUTO = "auto"


def parse_threads(text: str) -> str | int:
    """argparse type: ``auto`` or a count >= 1."""
    if text == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number of threads, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def idle_cpus() -> int:
    """The CPUs this process may run on minus the 1-minute load average (rounded), at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, cpus - round(load))


def resolve_threads(threads: str | int) -> int:
    """The thread count ``--threads`` asks for (module docstring)."""
    if threads != AUTO:
        return threads
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    return min(torch.get_num_threads(), idle_cpus())
