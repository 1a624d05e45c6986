import torch

from ptq4vm_fx.models.zoo import FAMILY as VIM
from ptq4vm_fx.passes.fold_smoothing import fold_smoothing
from ptq4vm_fx.quant.linear import FakeQuantLinear

from ..conftest import randomly_smoothed, tiny_vim


def smoothed_float_model(linears=VIM.linears):
    """A captured float model whose linears carry random smoothing scales, quantization off."""
    model = tiny_vim()
    x = torch.randn(8, 3, 32, 32)
    return model, randomly_smoothed(model, x, linears=linears), x


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_folding_is_exact_on_a_float_model():
    model, gm, x = smoothed_float_model()
    with torch.no_grad():
        expected = model(x)
        before = gm(x)
        assert fold_smoothing(gm) == 6  # per block: in_proj (norm), dt_proj and dt_proj_b (x_proj rows)
        after = gm(x)
    assert rel_err(before, expected) < 1e-5
    assert rel_err(after, expected) < 1e-5
    folded = sorted(n for n, m in gm.named_modules() if isinstance(m, FakeQuantLinear) and bool(m.input_folded))
    assert folded == [f"layers.{i}.mixer.{k}" for i in range(2) for k in ("dt_proj", "dt_proj_b", "in_proj")]


def test_explicit_scales_stay_where_no_exact_fold_exists():
    _, gm, _ = smoothed_float_model(linears=("x_proj", "out_proj"))
    assert fold_smoothing(gm) == 0


def test_folding_into_an_unquantized_producer():
    """dt_proj quantized, x_proj float: the scale goes into x_proj's nn.Linear rows."""
    model, gm, x = smoothed_float_model(linears=("dt_proj",))
    assert fold_smoothing(gm) == 2
    with torch.no_grad():
        assert rel_err(gm(x), model(x)) < 1e-5
