import pytest
import torch

import ptq4vm_fx
from ptq4vm_fx.capture import blocks, capture
from ptq4vm_fx.passes.insert_observers import insert_observers, remove_observers
from ptq4vm_fx.quant.observer import TokenChannelObserver

from ..conftest import tiny_vim


def observers(gm):
    """{'layers.0.mixer.in_proj': observer, ...} keyed by the observed linear's full name."""
    return {f"{prefix}.{name.removesuffix('_observer')}": module
            for prefix, block in blocks(gm) for name, module in block.named_modules()
            if isinstance(module, TokenChannelObserver)}


def test_one_observer_per_quantizable_linear_and_none_for_others():
    gm = capture(tiny_vim())
    assert insert_observers(gm, ("in_proj", "x_proj", "dt_proj", "out_proj", "x_proj_b", "dt_proj_b")) == 12
    assert sorted(observers(gm))[:3] == ["layers.0.mixer.dt_proj", "layers.0.mixer.dt_proj_b", "layers.0.mixer.in_proj"]
    assert remove_observers(gm) == 12
    assert insert_observers(capture(tiny_vim()), ("out_proj",)) == 2


def test_observer_records_token_channel_ranges():
    gm = capture(tiny_vim())
    insert_observers(gm, ("in_proj",))
    with torch.no_grad():
        gm(torch.randn(4, 3, 32, 32))
    obs = observers(gm)["layers.0.mixer.in_proj"]
    assert obs.min_val.shape == (17, 32) and obs.batches == 1
    assert torch.all(obs.min_val <= obs.max_val)


def test_a_model_with_nothing_to_quantize_is_refused():
    with pytest.raises(ValueError, match="nothing to quantize"):
        ptq4vm_fx.prepare(tiny_vim(depth=0), torch.randn(1, 3, 32, 32), "w8a8")
