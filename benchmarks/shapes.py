"""Vim-T/S/B at 224x224: the problem sizes of their quantized linears and scans."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ptq4vm_fx.models.zoo import VIM_CONFIGS

MODELS = ("vim_tiny_patch16_224", "vim_small_patch16_224", "vim_base_patch16_224")
BATCHES = (1, 32, 128)


@dataclass(frozen=True)
class VimShape:
    name: str
    d_model: int
    d_state: int
    tokens: int  # (224 / 16)^2 patches + the class token

    @property
    def short(self) -> str:
        return self.name.split("_")[1]  # tiny / small / base

    @property
    def d_inner(self) -> int:
        return 2 * self.d_model

    @property
    def dt_rank(self) -> int:
        return math.ceil(self.d_model / 16)

    def linear(self, name: str) -> tuple[int, int]:
        """(in_features K, out_features N) of a mixer linear."""
        return {
            "in_proj": (self.d_model, 2 * self.d_inner),
            "x_proj": (self.d_inner, self.dt_rank + 2 * self.d_state),
            "dt_proj": (self.dt_rank, self.d_inner),
            "out_proj": (self.d_inner, self.d_model),
        }[name]


def vim_shape(name: str) -> VimShape:
    cfg = VIM_CONFIGS[name]
    patches = (cfg["img_size"] // cfg["patch_size"]) ** 2
    return VimShape(name, cfg["embed_dim"], cfg["d_state"], patches + 1)
