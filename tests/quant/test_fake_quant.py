import torch

from ptq4vm_fx.ops import quantize_codes
from ptq4vm_fx.quant.fake_quant import act_codes, act_qparams, fake_quant_act, round_ste, weight_codes


def test_round_ste_is_exact_round_half_even_with_identity_gradient():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 0.49999997, 1e6 + 0.5, 0.3], requires_grad=True)
    y = round_ste(x)
    assert torch.equal(y, torch.round(x.detach()))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_fake_quant_codes_equal_the_integer_op_codes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 9, 33, generator=g) * 3
    inv = torch.rand(33, generator=g) + 0.5
    lo, hi = (x * inv).amin((0, 2)), (x * inv).amax((0, 2))
    for bits in (4, 6, 8):
        scale, zp = act_qparams(lo, hi, bits)
        assert torch.equal(act_codes(x, inv, scale, zp, bits), quantize_codes(x, inv, scale, zp, bits))


def test_act_qparams_cover_the_range_and_zero():
    scale, zp = act_qparams(torch.tensor([-1.0, 0.5]), torch.tensor([3.0, 2.0]), 8)
    x = torch.tensor([[[-1.0, 3.0, 0.0], [0.0, 2.0, 0.0]]])
    dq = fake_quant_act(x, torch.ones(3), scale, zp, 8)
    assert torch.allclose(dq, x, atol=scale.max().item() / 2 + 1e-6)
    assert torch.all(dq[..., 2] == 0)  # zero is exactly representable


def test_weight_codes_are_symmetric_narrow_range():
    w = torch.tensor([[1.0, -1.0, 0.2], [10.0, -10.0, 5.0]])
    codes = weight_codes(w, torch.tensor([1 / 7, 10 / 7]), 4)
    assert codes.abs().max() == 7 and codes[0].tolist() == [7, -7, 1]
