"""The numerics module against the definitions written out by hand (docs/design.md section 3)."""

import torch

from ptq4vm_fx.quant import integer
from ptq4vm_fx.quant.fake_quant import act_codes, fake_quant_act, weight_codes


def test_rounding_is_half_to_even_at_ties():
    v = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, 1e6 + 0.5, 0.3])
    assert integer.round_half_even(v).tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 0.0, 1e6, 0.0]


def test_straight_through_rounding_is_exact_with_identity_gradient():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 0.49999997, 1e6 + 0.5, 0.3], requires_grad=True)
    y = integer.round_half_even_ste(x)
    assert torch.equal(y, integer.round_half_even(x.detach()))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_ranges():
    assert integer.act_range(8) == (-128, 127) and integer.act_range(4) == (-8, 7)
    assert integer.weight_qmax(8) == 127 and integer.weight_qmax(4) == 7


def test_quantize_codes_order_ties_and_saturation():
    x = torch.tensor([[0.25, 0.75, 1.25, -0.25, 100.0, -100.0]])
    inv_smooth = torch.full((6,), 2.0)
    codes = integer.quantize_codes(x, inv_smooth, torch.tensor([1.0]), torch.tensor([3.0]), 8)
    # (x * 2) * 1 = 0.5, 1.5, 2.5, -0.5 round to 0, 2, 2, -0; + 3; saturate at 127 / -128
    assert codes.tolist() == [[3.0, 5.0, 5.0, 3.0, 127.0, -128.0]]


def test_fake_quant_codes_equal_the_integer_codes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 9, 33, generator=g) * 3
    inv = torch.rand(33, generator=g) + 0.5
    lo, hi = (x * inv).amin((0, 2)), (x * inv).amax((0, 2))
    for bits in (4, 6, 8):
        scale, zp = integer.act_qparams(lo, hi, bits)
        expected = integer.quantize_codes(x, inv, integer.reciprocal_scale(scale), zp, bits)
        assert torch.equal(act_codes(x, inv, scale, zp, bits), expected)


def test_act_qparams_cover_the_range_and_zero():
    scale, zp = integer.act_qparams(torch.tensor([-1.0, 0.5]), torch.tensor([3.0, 2.0]), 8)
    assert torch.allclose(scale, torch.tensor([4.0 / 255, 2.0 / 255]))
    assert zp.tolist() == [round(1.0 / (4.0 / 255)) - 128, -128]
    x = torch.tensor([[[-1.0, 3.0, 0.0], [0.0, 2.0, 0.0]]])
    dq = fake_quant_act(x, torch.ones(3), scale, zp, 8)
    assert torch.allclose(dq, x, atol=scale.max().item() / 2 + 1e-6)
    assert torch.all(dq[..., 2] == 0)  # zero is exactly representable


def test_weight_codes_are_symmetric_narrow_range():
    w = torch.tensor([[1.0, -1.0, 0.2], [10.0, -10.0, 5.0]])
    codes = weight_codes(w, torch.tensor([1 / 7, 10 / 7]), 4)
    assert codes.abs().max() == 7 and codes[0].tolist() == [7, -7, 1]
    # 0.5 and 2.5 steps are ties: to even
    assert integer.weight_codes(torch.tensor([[0.5, 2.5, -1.5]]), torch.tensor([1.0]), 8).tolist() == [[0, 2, -2]]


def test_integer_gemm_equals_the_dequantized_product():
    g = torch.Generator().manual_seed(1)
    xq = torch.randint(-128, 128, (2, 5, 7), generator=g, dtype=torch.int8)
    wq = torch.randint(-127, 128, (3, 7), generator=g, dtype=torch.int8)
    x_scale, zp = torch.rand(5, generator=g) + 0.1, torch.randint(-128, 128, (5,), generator=g)
    w_scale, bias = torch.rand(3, generator=g) + 0.1, torch.randn(3, generator=g)
    y = integer.dequantize_accumulator(integer.int_matmul(xq, wq), x_scale, zp, w_scale, integer.column_sums(wq),
                                       bias)
    # the definition: ((xq - zp) * x_scale) @ (wq * w_scale).T + bias, in float64
    x = (xq.double() - zp.double()[:, None]) * x_scale.double()[:, None]
    expected = x @ (wq.double() * w_scale.double()[:, None]).t() + bias.double()
    torch.testing.assert_close(y.double(), expected, rtol=1e-6, atol=1e-5)
    assert integer.column_sums(wq).dtype == torch.int32
