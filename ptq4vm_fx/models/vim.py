"""Vision Mamba (Vim, Zhu et al. 2024) in pure PyTorch, with hustvl/Vim's parameter names.

Only the configuration the official checkpoints use is built: bimamba v2 (separate backward
conv1d/x_proj/dt_proj/A/D), middle class token, absolute position embedding, RMSNorm with
fused add and fp32 residual, ``if_divide_out``. An official ``{'model': state_dict, ...}``
checkpoint loads with strict key checking (see :mod:`ptq4vm_fx.models.checkpoint`).

The mixer calls its linears as modules and the scan as ``torch.ops.ptq4vm.selective_scan``,
so an FX trace sees every quantizable linear and one node per scan. The backward branch is
computed on the original token order: an anticausal conv1d (the flipped kernel, right padding)
and a ``reverse=True`` scan, which equal hustvl's flip -> causal conv -> scan -> flip exactly.
"""

from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, to_2tuple, trunc_normal_

from .. import ops  # noqa: F401  (registers torch.ops.ptq4vm)
from ..errors import InputError
from ..scan import channel_major
from .checkpoint import CheckedLoading


def check_image_size(x: torch.Tensor, height: int, width: int, channels: int) -> torch.Tensor:
    """Raise an :class:`InputError` naming expected and given sizes when a (batch, C, H, W) image batch
    does not have the model's channel count and image size; returns ``x``."""
    if x.dim() != 4:
        raise InputError(f"expected an image batch of shape (batch, channels, H, W), got {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise InputError(
            f"input images have {x.shape[1]} channel(s) but the model takes {channels}-channel images "
            f"(batch of shape {tuple(x.shape)})"
        )
    if x.shape[-2] != height or x.shape[-1] != width:
        raise InputError(
            f"input image size {x.shape[-2]}x{x.shape[-1]} does not match the model's {height}x{width}: "
            "Vim's position embedding and per-token static scales fix the token count"
        )
    return x


torch.fx.wrap("check_image_size")


class PatchEmbed(nn.Module):
    """(batch, C, H, W) -> (batch, num_patches, embed_dim) by a strided conv (hustvl's layout)."""

    def __init__(self, img_size=224, patch_size=16, stride=16, in_chans=3, embed_dim=768):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.grid_size = (
            (self.img_size[0] - self.patch_size[0]) // stride + 1,
            (self.img_size[1] - self.patch_size[1]) // stride + 1,
        )
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=stride)
        self.norm = nn.Identity()

    def forward(self, x):
        x = check_image_size(x, self.img_size[0], self.img_size[1], self.proj.in_channels)
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dim, computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        return y.to(self.weight.dtype)


def s4d_real_a_log(rows: int, d_state: int) -> torch.Tensor:
    """Mamba's S4D-real A as log A: log 1, ..., log d_state in each of ``rows`` rows; (rows, d_state) fp32."""
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(rows, 1)


def dt_bias_init(shape, dt_min=1e-3, dt_max=0.1, dt_init_floor=1e-4) -> torch.Tensor:
    """Mamba's dt_proj bias: the inverse softplus of dt drawn log-uniform in [dt_min, dt_max] (at least
    dt_init_floor), so softplus(bias) starts there; ``shape`` fp32 (VMamba and LocalVSSM use it too)."""
    dt = torch.exp(torch.rand(shape) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


def _init_dt_proj(dt_proj: nn.Linear, dt_rank: int):
    std = dt_rank**-0.5
    nn.init.uniform_(dt_proj.weight, -std, std)
    with torch.no_grad():
        dt_proj.bias.copy_(dt_bias_init(dt_proj.out_features))


class Mamba(nn.Module):
    """Bidirectional (bimamba v2) Mamba mixer: (batch, L, d_model) -> (batch, L, d_model)."""

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", if_divide_out=True):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.if_divide_out = if_divide_out
        d_inner = self.d_inner
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        A_log = s4d_real_a_log(d_inner, d_state)
        for suffix in ("", "_b"):
            conv = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=True)
            x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
            dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
            _init_dt_proj(dt_proj, self.dt_rank)
            setattr(self, "conv1d" + suffix, conv)
            setattr(self, "x_proj" + suffix, x_proj)
            setattr(self, "dt_proj" + suffix, dt_proj)
        self.A_log = nn.Parameter(A_log.clone())
        self.D = nn.Parameter(torch.ones(d_inner))
        self.A_b_log = nn.Parameter(A_log.clone())
        self.D_b = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def _branch(self, x, z, conv, x_proj, dt_proj, A_log, D, reverse: bool):
        """One scan direction. x, z: (batch, d_inner, L) -> (batch, d_inner, L)."""
        if reverse:  # anticausal: out[t] = sum_j w[W-1-j] x[t+j]
            u = F.conv1d(F.pad(x, (0, self.d_conv - 1)), conv.weight.flip(-1), conv.bias, groups=self.d_inner)
        else:
            u = conv(x)[..., : -(self.d_conv - 1)]
        u = F.silu(u)
        x_dbl = x_proj(u.transpose(1, 2))  # (batch, L, dt_rank + 2 d_state)
        delta = dt_proj(x_dbl[..., : self.dt_rank]).transpose(1, 2)
        B = x_dbl[..., self.dt_rank : self.dt_rank + self.d_state].transpose(1, 2)
        C = x_dbl[..., self.dt_rank + self.d_state :].transpose(1, 2)
        A = channel_major(-torch.exp(A_log.float()))  # the layout the scan kernels read
        return torch.ops.ptq4vm.selective_scan(u, delta, A, B, C, D.float(), z, None, True, reverse)

    def forward(self, hidden_states):
        xz = self.in_proj(hidden_states)  # (batch, L, 2 d_inner)
        x, z = xz.chunk(2, dim=-1)
        x, z = x.transpose(1, 2), z.transpose(1, 2)
        y_f = self._branch(x, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D, False)
        y_b = self._branch(x, z, self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b, True)
        y = y_f + y_b
        if self.if_divide_out:
            y = y / 2
        return self.out_proj(y.transpose(1, 2))


class Block(nn.Module):
    """Add -> RMSNorm -> Mamba. (hidden, residual) (batch, L, D) each -> (mixer output, new residual)."""

    def __init__(self, dim, d_state=16, norm_epsilon=1e-5, drop_path=0.0, residual_in_fp32=True, if_divide_out=True):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.mixer = Mamba(dim, d_state=d_state, if_divide_out=if_divide_out)
        self.norm = RMSNorm(dim, eps=norm_epsilon)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, hidden_states, residual):
        residual = residual + self.drop_path(hidden_states)
        if self.residual_in_fp32:
            residual = residual.float()
        hidden_states = self.norm(residual.to(self.norm.weight.dtype))
        return self.mixer(hidden_states), residual


class VisionMamba(CheckedLoading, nn.Module):
    """Vim classifier: (batch, channels, H, W) -> logits (batch, num_classes).

    ``config`` holds the constructor arguments, so a quantized model can be rebuilt on load.
    ``load_state_dict(strict=True)`` refuses a key or shape mismatch with an InputError.
    """

    def __init__(
        self,
        img_size=224,
        patch_size=16,
        stride=16,
        depth=24,
        embed_dim=192,
        d_state=16,
        channels=3,
        num_classes=1000,
        drop_rate=0.0,
        drop_path_rate=0.1,
        norm_epsilon=1e-5,
        residual_in_fp32=True,
        if_divide_out=True,
    ):
        super().__init__()
        self.config = dict(
            img_size=img_size, patch_size=patch_size, stride=stride, depth=depth, embed_dim=embed_dim,
            d_state=d_state, channels=channels, num_classes=num_classes, drop_rate=drop_rate,
            drop_path_rate=drop_path_rate, norm_epsilon=norm_epsilon, residual_in_fp32=residual_in_fp32,
            if_divide_out=if_divide_out,
        )  # fmt: skip
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, stride, channels, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.token_position = num_patches // 2  # the middle class token
        self.num_tokens = num_patches + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(p=drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        dpr = [0.0] + torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.layers = nn.ModuleList(
            [
                Block(embed_dim, d_state, norm_epsilon, dpr[i], residual_in_fp32, if_divide_out)
                for i in range(depth)
            ]
        )
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0.0 else nn.Identity()
        self.norm_f = RMSNorm(embed_dim, eps=norm_epsilon)
        self._init_weights(depth)

    def _init_weights(self, depth):
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        for layer in self.layers:
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                layer.mixer.out_proj.weight /= math.sqrt(depth)

    def forward_features(self, x):
        x = self.patch_embed(x)
        cls_token = self.cls_token.expand(x.shape[0], -1, -1)
        tp = self.token_position
        x = torch.cat((x[:, :tp, :], cls_token, x[:, tp:, :]), dim=1)
        x = self.pos_drop(x + self.pos_embed)
        hidden_states, residual = x, torch.zeros_like(x)
        for layer in self.layers:
            hidden_states, residual = layer(hidden_states, residual)
        residual = residual + self.drop_path(hidden_states)
        hidden_states = self.norm_f(residual.to(self.norm_f.weight.dtype))
        return hidden_states[:, tp, :]

    def forward(self, x):
        return self.head(self.forward_features(x))
