import pytest
import torch

import ptq4vm_fx
from ptq4vm_fx.errors import InputError
from ptq4vm_fx.quant.linear import FakeQuantLinear

from ..conftest import tiny_vim


def fake_quant_modules(gm):
    return {n: m for n, m in gm.named_modules() if isinstance(m, FakeQuantLinear)}


@pytest.mark.parametrize("method,smooth,per_tensor", [
    ("minmax", False, True), ("smoothquant", True, True), ("pts", False, False), ("pts_smooth", True, False)])
def test_init_follows_the_method(method, smooth, per_tensor):
    model = tiny_vim()
    x = torch.randn(16, 3, 32, 32)
    prepared = ptq4vm_fx.prepare(model, x[:1], ptq4vm_fx.QuantConfig(method=method))
    with torch.no_grad():
        prepared(x)
    sim = ptq4vm_fx.convert(prepared, simulate=True)
    modules = fake_quant_modules(sim)
    assert len(modules) == 12
    in_proj = modules["layers.0.mixer.in_proj"]
    assert bool((in_proj.log_smooth != 0).any()) == smooth
    scales = in_proj.log_act_scale
    assert bool(torch.all(scales == scales[0])) == per_tensor
    assert not any(n.op == "call_module" and "observer" in n.target
                   for _, m in sim.named_modules() if hasattr(m, "graph") for n in m.graph.nodes)


def test_convert_before_calibration_is_refused():
    prepared = ptq4vm_fx.prepare(tiny_vim(), torch.randn(1, 3, 32, 32), "w8a8")
    with pytest.raises(InputError, match="needs calibration"):
        ptq4vm_fx.convert(prepared)
