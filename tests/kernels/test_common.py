"""The shared device helpers: rounding to fp16 / bf16 exactly as torch's casts round."""

import pytest
import torch
import triton
import triton.language as tl

from ptq4vm_fx.kernels._common import TL_DTYPES, _round_to


@triton.jit
def _round_kernel(x_ptr, y_ptr, n, DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, _round_to(tl.load(x_ptr + offs, mask=mask), DTYPE), mask=mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_to_matches_torch_casts(device, dtype):
    """Ties to even, subnormals, overflow to infinity, signed zero, NaN (also the all-ones NaN whose
    rounding carry would wrap): the value torch's cast gives, on a GPU and under the interpreter
    (which truncates fp32 -> bf16 on its own)."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([
        torch.randn(2000, generator=g) * 10,
        torch.tensor([1.00390625, 1.01171875, 1.0 + 2**-11, 1.0 + 3 * 2**-11]),  # bf16 / fp16 ties
        torch.tensor([3.4e38, -3.4e38, 65520.0, 1e-40, 1e-7, -0.0, float("inf"), float("-inf"), float("nan")]),
        torch.tensor([-1], dtype=torch.int32).view(torch.float32),  # 0xFFFFFFFF: a NaN
    ])
    xd = x.to(device)
    yd = torch.empty_like(xd)
    _round_kernel[(1,)](xd, yd, x.numel(), DTYPE=TL_DTYPES[dtype], BLOCK=triton.next_power_of_2(x.numel()))
    y = yd.cpu()
    expect = x.to(dtype).float()
    assert torch.equal(y.isnan(), expect.isnan())
    assert torch.equal(y[~y.isnan()], expect[~expect.isnan()])
    assert torch.equal(y.signbit()[~y.isnan()], expect.signbit()[~expect.isnan()])
