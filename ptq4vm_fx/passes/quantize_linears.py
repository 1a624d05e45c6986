"""Pass: replace observed linears by FakeQuantLinear, initialised from the calibration statistics.

Smoothing scales follow SmoothQuant, ``m = max|X_c|^a / max|W_:,c|^(1-a)``; weight step sizes are
per-row absmax; activation qparams come from the observed ranges of x / m, per token (PTS) or
per tensor. The observers are removed from the graph.
"""

from __future__ import annotations

import torch
import torch.fx

from ..capture import blocks
from ..config import QuantConfig
from ..errors import InputError
from ..quant.integer import act_qparams, weight_qmax
from ..quant.linear import FakeQuantLinear
from ..quant.observer import TokenChannelObserver
from .insert_observers import remove_observers


def smoothing_scale(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """(C,) SmoothQuant scale from per-channel activation absmax (C,) and weight (O, C)."""
    w_absmax = weight.abs().amax(0).clamp(min=1e-5)
    m = act_absmax.clamp(min=1e-5).pow(alpha) / w_absmax.pow(1 - alpha)
    return m.clamp(min=1e-5)


@torch.no_grad()
def init_fake_quant(linear: torch.nn.Linear, observer: TokenChannelObserver, config: QuantConfig) -> FakeQuantLinear:
    tokens = observer.min_val.shape[0]
    fq = FakeQuantLinear(linear.weight, linear.bias, tokens, config.weight_bits, config.act_bits,
                         dynamic=config.granularity == "per_token_dynamic")
    if config.smooth:
        fq.log_smooth.copy_(torch.log(smoothing_scale(observer.channel_absmax(), linear.weight.float(), config.alpha)))
    w_absmax = fq.effective_weight().abs().amax(1).clamp(min=1e-8)
    fq.log_w_scale.copy_(torch.log(w_absmax / weight_qmax(config.weight_bits)))
    lo, hi = observer.token_range(fq.inv_smooth)
    if config.granularity == "per_tensor":
        lo, hi = lo.amin().expand_as(lo), hi.amax().expand_as(hi)
    scale, zero_point = act_qparams(lo, hi, config.act_bits)
    fq.log_act_scale.copy_(torch.log(scale))
    fq.act_zero_point.copy_(zero_point)
    return fq


def quantize_linears(gm: torch.fx.GraphModule, config: QuantConfig) -> int:
    """In place; returns the number of linears replaced."""
    count = 0
    for _, block in blocks(gm):
        for node in block.graph.nodes:
            if node.op != "call_module" or not isinstance(block.get_submodule(node.target), TokenChannelObserver):
                continue
            observer = block.get_submodule(node.target)
            if observer.batches == 0:
                raise InputError(
                    "convert() needs calibration: run the prepared model on calibration batches "
                    "(under torch.no_grad()) before converting"
                )
            (linear_node,) = node.users
            block.set_submodule(linear_node.target, init_fake_quant(block.get_submodule(linear_node.target),
                                                                    observer, config))
            count += 1
    remove_observers(gm)
    return count
