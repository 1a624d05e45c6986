"""Calibration observers: running per-(token, channel) min and max of a linear's input."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import InputError


class TokenChannelObserver(nn.Module):
    """Pass-through module recording min and max over the batch of x (…, L, C) as (L, C) buffers.

    Per-token ranges of x / m (any smoothing m > 0) and per-channel absmax both follow from them."""

    def __init__(self):
        super().__init__()
        self.register_buffer("min_val", torch.empty(0))
        self.register_buffer("max_val", torch.empty(0))
        self.batches = 0

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2:
            raise InputError(f"observer expects (…, tokens, channels), got shape {tuple(x.shape)}")
        v = x.detach().float().reshape(-1, *x.shape[-2:])
        lo, hi = v.amin(0), v.amax(0)
        if self.batches and lo.shape != self.min_val.shape:
            raise InputError(
                f"calibration batch has {lo.shape[0]} tokens x {lo.shape[1]} channels but earlier batches had "
                f"{self.min_val.shape[0]} x {self.min_val.shape[1]}: calibrate at one image size"
            )
        if self.batches == 0:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val, self.max_val = torch.minimum(self.min_val, lo), torch.maximum(self.max_val, hi)
        self.batches += 1
        return x

    def channel_absmax(self) -> Tensor:
        """(C,) max |x| per channel."""
        return torch.maximum(self.min_val.abs(), self.max_val.abs()).amax(0)

    def token_range(self, inv_smooth: Tensor) -> tuple[Tensor, Tensor]:
        """(L,) min and max of x * inv_smooth per token (inv_smooth > 0)."""
        return (self.min_val * inv_smooth).amin(1), (self.max_val * inv_smooth).amax(1)
