"""Pass: FakeQuantLinear -> QuantizedLinear (int8 weights, int32 column sums, integer ops)."""

from __future__ import annotations

import torch.fx

from ..capture import blocks
from ..quant.linear import FakeQuantLinear


def pack_weights(gm: torch.fx.GraphModule) -> int:
    """In place; returns how many linears were packed."""
    count = 0
    for _, block in blocks(gm):
        for name, module in list(block.named_modules()):
            if isinstance(module, FakeQuantLinear):
                block.set_submodule(name, module.to_quantized())
                count += 1
    return count
