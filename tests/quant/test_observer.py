import pytest
import torch

from ptq4vm_fx.quant.observer import TokenChannelObserver


def test_observer_ranges_and_derived_statistics():
    obs = TokenChannelObserver()
    a = torch.tensor([[[1.0, -2.0], [0.5, 4.0]]])
    b = torch.tensor([[[-3.0, 1.0], [0.0, 2.0]]])
    assert obs(a) is a
    obs(b)
    assert obs.min_val.tolist() == [[-3.0, -2.0], [0.0, 2.0]]
    assert obs.max_val.tolist() == [[1.0, 1.0], [0.5, 4.0]]
    assert obs.channel_absmax().tolist() == [3.0, 4.0]
    lo, hi = obs.token_range(torch.tensor([1.0, 0.5]))
    assert lo.tolist() == [-3.0, 0.0] and hi.tolist() == [1.0, 2.0]


def test_observer_refuses_a_second_image_size():
    obs = TokenChannelObserver()
    obs(torch.zeros(1, 5, 3))
    with pytest.raises(ValueError, match="calibrate at one image size"):
        obs(torch.zeros(1, 7, 3))
