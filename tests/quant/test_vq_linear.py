"""The runtime VQLinear module and the ptq4vm::vq_linear op (CPU reference path)."""

import io

import pytest
import torch
import torch.nn.functional as F

from ptq4vm_fx.errors import InputError
from ptq4vm_fx.kernels.vq_linear import pack_codes
from ptq4vm_fx.quant.vq_linear import VQLinear


def _module(out_features=6, in_features=12, k=16, d=2, bias=True, seed=0):
    """A VQLinear with random codes and a dyadic codebook / bias (so fp32 sums are exact in any order)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, k, (out_features, in_features // d), generator=g)
    codebook = torch.randint(-64, 64, (k, d), generator=g) / 16
    b = torch.randint(-16, 16, (out_features,), generator=g) / 8 if bias else None
    return VQLinear.from_codes(codes, codebook, b), codes, codebook, b


def _x(*shape, seed=1):
    return torch.randint(-8, 8, shape, generator=torch.Generator().manual_seed(seed)) / 4


@pytest.mark.parametrize("bias", [True, False])
def test_forward_is_the_decoded_linear(bias):
    m, codes, codebook, b = _module(bias=bias)
    w = codebook[codes].reshape(6, 12)
    assert torch.equal(m.weight(), w)
    assert torch.equal(m.code_indices(), codes)
    x = _x(2, 5, 12)
    y = m(x)
    assert y.shape == (2, 5, 6)
    assert torch.equal(y, F.linear(x, w, b))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_keeps_buffers(dtype):
    m, codes, codebook, b = _module()
    x = _x(3, 12)
    m = m.to(dtype)
    assert m.codebook.dtype == torch.float16 and m.codes.dtype == torch.uint8 and m.bias.dtype == torch.float32
    y = m(x.to(dtype))
    assert y.dtype == dtype
    assert torch.equal(y, F.linear(x, codebook[codes].reshape(6, 12), b).to(dtype))
    m = m.float()
    assert m.codebook.dtype == torch.float16 and m.bias.dtype == torch.float32


def test_opcheck():
    m, *_ = _module()
    for args in [(_x(4, 12), m.codes, m.codebook, m.bias), (_x(2, 3, 12).half(), m.codes, m.codebook, None)]:
        torch.library.opcheck(torch.ops.ptq4vm.vq_linear.default, args)


def test_state_dict_round_trip_without_pickled_code():
    m, *_ = _module(k=64, d=4, in_features=24, out_features=5)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    fresh = VQLinear.empty(**m.init_args())
    assert m.init_args() == {"in_features": 24, "out_features": 5, "k": 64, "d": 4, "has_bias": True}
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    for name, t in m.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], t) and fresh.state_dict()[name].dtype == t.dtype
    x = _x(3, 24)
    assert torch.equal(fresh(x), m(x))


def test_corrupt_codes_are_refused_on_load():
    m, *_ = _module(k=48, d=2)  # 6-bit codes: 49..63 fit in the bits but not in the codebook
    state = m.state_dict()
    codes = m.code_indices()
    codes[2, 3] = 50
    bad = dict(state, codes=pack_codes(codes, 6))
    with pytest.raises(InputError, match="code 50 is out of range for a 48-entry codebook"):
        VQLinear(12, 6, 48, 2, has_bias=True).load_state_dict(bad)
    with pytest.raises(InputError, match="codes must be uint8"):
        VQLinear(12, 6, 48, 2, has_bias=True).load_state_dict(dict(state, codes=state["codes"].long()))
    with pytest.raises(InputError, match=r"codes must be in \[0, 16\)"):
        VQLinear.from_codes(torch.full((2, 3), 16), torch.zeros(16, 2), None)


def test_storage_bits():
    m, *_ = _module(out_features=8, in_features=16, k=16, d=2)
    # 8 rows x 8 codes x 4 bits = 256 bits, codebook 16 x 2 x 16 bits = 512 bits, over 128 weights
    assert m.nominal_bits == 2.0 and m.storage_bits == 6.0
    assert m.codes.shape == (8, 4)


def test_constructor_refuses_bad_sizes():
    with pytest.raises(InputError, match="not a multiple of the codeword length 4"):
        VQLinear(10, 3, 16, 4, has_bias=False)
    with pytest.raises(InputError, match="k must be in"):
        VQLinear(8, 3, 512, 4, has_bias=False)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_op_runs_the_kernel_like_the_reference(dtype):
    """On dyadic values every fp32 partial sum is exact, so the Triton path equals the CPU reference."""
    m, *_ = _module(out_features=40, in_features=64, k=64, d=4)
    x = _x(3, 7, 64).to(dtype)
    expect = m.to(dtype)(x)
    assert torch.equal(m.cuda()(x.cuda()).cpu(), expect)
