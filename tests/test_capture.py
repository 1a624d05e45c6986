import pytest
import torch
import torch.fx

from ptq4vm_fx.capture import blocks, capture
from ptq4vm_fx.errors import InputError

from .conftest import tiny_vim


def test_capture_matches_eager_with_one_graph_per_block():
    model = tiny_vim()
    gm = capture(model)
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
    assert [name for name, _ in blocks(gm)] == ["layers.0", "layers.1"]
    block = blocks(gm)[0][1]
    scans = [n for n in block.graph.nodes if n.target is torch.ops.ptq4vm.selective_scan]
    assert [n.args[-1] for n in scans] == [False, True]  # forward and reverse scan, no flips
    assert not any(n.op == "call_method" and n.target == "flip" and n.args[0].op != "get_attr"
                   for n in block.graph.nodes)
    linears = {n.target for n in block.graph.nodes if n.op == "call_module"}
    assert {"mixer.in_proj", "mixer.x_proj", "mixer.dt_proj", "mixer.x_proj_b", "mixer.dt_proj_b",
            "mixer.out_proj", "norm"} <= linears


def test_capture_rejects_unsupported_models():
    with pytest.raises(InputError, match="unsupported model Sequential"):
        capture(torch.nn.Sequential(torch.nn.Linear(4, 4)))
