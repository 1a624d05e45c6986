"""Fixtures for the lowering tests (helpers in lowering_helpers.py). tests/conftest.py has already
switched the Triton interpreter on when there is no GPU: the fused ops' CUDA implementations (the
Triton launches) are checked on the CPU through it."""

import os

import pytest
import torch
from torch._dynamo.utils import counters

from ptq4vm_fx.lowering import report

from .lowering_helpers import quantize, tiny_vim


@pytest.fixture(scope="session")
def qvim() -> torch.fx.GraphModule:
    """The TINY Vim quantized W8A8 with PTS + smoothing (all six linears of each block)."""
    return quantize(tiny_vim())


@pytest.fixture
def fresh_counters():
    """Clears the ptq4vm counters before the test; yields the report module to read them."""
    counters[report.APPLIED].clear()
    counters[report.SKIPPED].clear()
    yield report


@pytest.fixture(scope="session")
def device():
    """cuda when there is a GPU, else the CPU through the Triton interpreter."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("1", "true", "yes", "on"):
        pytest.skip("no CUDA GPU and TRITON_INTERPRET is disabled")
    return torch.device("cpu")
