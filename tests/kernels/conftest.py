"""Kernel tests run on a CUDA GPU when there is one, else on the CPU through the Triton
interpreter. TRITON_INTERPRET must be set before triton is first imported (``triton.jit``
decides at decoration time whether a kernel is compiled or interpreted), hence at the top of
this file."""

import os

import torch  # importing torch does not import triton

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


@pytest.fixture(scope="session")
def device():
    """Device the kernels run on: cuda if available, else cpu (interpreter)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if not _interpret():
        pytest.skip("no CUDA GPU and TRITON_INTERPRET is disabled")
    return torch.device("cpu")
