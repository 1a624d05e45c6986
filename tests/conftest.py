"""Shared fixtures. Triton runs through its interpreter when there is no GPU; TRITON_INTERPRET
must be set before triton is first imported, so it is set here, before anything else."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import ptq4vm_fx  # noqa: E402
from ptq4vm_fx.data.bundled import bundled_model  # noqa: E402
from ptq4vm_fx.data.digits import load_digits_splits  # noqa: E402
from ptq4vm_fx.models import create_vim  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "requires_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def digits():
    return load_digits_splits()


@pytest.fixture(scope="session")
def float_model():
    """The bundled, trained digits Vim (eval mode). Do not modify it in a test."""
    return bundled_model()


def tiny_vim(**overrides):
    """A small random Vim: 2 blocks, 32x32 images, 8x8 patches -> 17 tokens (an odd count)."""
    torch.manual_seed(0)
    kw = dict(depth=2, img_size=32, patch_size=8, stride=8, embed_dim=32, num_classes=10)
    kw.update(overrides)
    return create_vim("vim_tiny_patch16_224", **kw).eval()


@pytest.fixture
def tiny():
    return tiny_vim()


def calibrated(model, images, config, batch_size=64):
    prepared = ptq4vm_fx.prepare(model, images[:1], config)
    with torch.no_grad():
        for batch in images.split(batch_size):
            prepared(batch)
    return prepared


@pytest.fixture(scope="session")
def ptq4vm_w8a8(float_model, digits):
    """(prepared, integer model, simulated model) of the full method at W8A8 on the bundled model."""
    prepared = calibrated(float_model, digits["calib"].images, "w8a8")
    return prepared, ptq4vm_fx.convert(prepared), ptq4vm_fx.convert(prepared, simulate=True)
