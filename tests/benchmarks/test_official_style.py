"""The "fp16_official_style" baseline model (benchmarks/official_style.py) computes the Vim it wraps:
hustvl's flip copies, single-direction scans and separate conv give the logits of the model's own
anticausal conv and reverse scan (CPU: the ops' reference implementations)."""

import torch

from benchmarks.official_style import OfficialStyleMixer, official_style

from ..lowering.lowering_helpers import images, tiny_vim


def test_official_style_vim_equals_the_model():
    model, x = tiny_vim(), images(3)
    wrapped = official_style(model)
    assert all(isinstance(block.mixer, OfficialStyleMixer) for block in wrapped.layers)
    assert not any(isinstance(block.mixer, OfficialStyleMixer) for block in model.layers)  # a copy
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), model(x), rtol=1e-5, atol=1e-5)

