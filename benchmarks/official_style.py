"""The "fp16_official_style" baseline: hustvl/Vim's inference dataflow, written with this project's ops.

hustvl/Vim's bimamba-v2 mixer (``mamba_simple.Mamba.forward``, fast path, ``if_devide_out``) runs

    xz    = in_proj(x) as (B, 2D, L)
    out   = mamba_inner_fn_no_out_proj(xz, conv1d, x_proj, dt_proj, A, D)                 forward
    out_b = mamba_inner_fn_no_out_proj(xz.flip(-1), conv1d_b, x_proj_b, dt_proj_b, A_b, D_b)  a flipped copy
    y     = out_proj(((out + out_b.flip(-1)) / 2) as (B, L, D))                            flipped back, halved

with ``mamba_inner_fn_no_out_proj``: the causal conv1d + SiLU kernel (``causal_conv1d_fwd``), x_proj on the
(B L, D) rows, ``delta = dt_proj.weight @ x_dbl[:, :R]^T``, B and C copied to contiguous (B, N, L), then one
single-direction selective scan (delta_bias and softplus inside, gated by SiLU(z)). Here the CUDA extensions
are this project's ops, run eagerly: ``ptq4vm_fused::conv1d_silu`` for the conv (a fused conv + SiLU kernel,
as causal_conv1d_fwd) and ``ptq4vm::selective_scan`` (its Triton kernel, one direction) for the scan. The
conv's output stays token-major, the layout that scan reads coalesced (no copy is added for the official
(B, D, L) layout). The rest of the model (patch embedding, norms, residuals, head) is the model's own.
Not hustvl's code: the same dataflow, on a copy of a ptq4vm_fx Vim's parameters.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ptq4vm_fx.lowering import fused_ops
from ptq4vm_fx.models.vim import Mamba, VisionMamba


class OfficialStyleMixer(nn.Module):
    """hustvl/Vim's bimamba-v2 forward on ``mixer``'s parameters: (B, L, d_model) -> (B, L, d_model) in the
    parameters' dtype."""

    def __init__(self, mixer: Mamba):
        super().__init__()
        self.mixer = mixer

    def forward(self, hidden_states: Tensor) -> Tensor:
        m = self.mixer
        xz = F.linear(hidden_states, m.in_proj.weight, m.in_proj.bias).transpose(1, 2)  # (B, 2D, L)
        out = self._direction(xz, m.conv1d, m.x_proj, m.dt_proj, m.A_log, m.D)
        out_b = self._direction(xz.flip(-1), m.conv1d_b, m.x_proj_b, m.dt_proj_b, m.A_b_log, m.D_b)
        y = out + out_b.flip(-1)
        if m.if_divide_out:
            y = y / 2
        return F.linear(y.transpose(1, 2), m.out_proj.weight, m.out_proj.bias)

    def _direction(self, xz: Tensor, conv: nn.Conv1d, x_proj: nn.Linear, dt_proj: nn.Linear, A_log: Tensor,
                   D: Tensor) -> Tensor:
        """mamba_inner_fn_no_out_proj: xz (B, 2D, L) -> the gated scan output (B, D, L)."""
        batch, _, length = xz.shape
        rank, n = self.mixer.dt_rank, self.mixer.d_state
        x, z = xz.chunk(2, dim=1)
        u = fused_ops.conv1d_silu(x, conv.weight, conv.bias, False)
        x_dbl = F.linear(u.transpose(1, 2).reshape(batch * length, -1), x_proj.weight)  # (B L, R + 2N)
        delta = (dt_proj.weight @ x_dbl[:, :rank].t()).reshape(-1, batch, length).transpose(0, 1)  # (B, D, L)
        B = x_dbl[:, rank:rank + n].reshape(batch, length, n).transpose(1, 2).contiguous()
        C = x_dbl[:, rank + n:].reshape(batch, length, n).transpose(1, 2).contiguous()
        A = -torch.exp(A_log.float())
        return torch.ops.ptq4vm.selective_scan(u, delta, A, B, C, D.float(), z, dt_proj.bias.float(), True, False)


def official_style(model: VisionMamba) -> VisionMamba:
    """A copy of ``model`` whose blocks run :class:`OfficialStyleMixer` on their mixers' parameters."""
    wrapped = copy.deepcopy(model)
    for block in wrapped.layers:
        block.mixer = OfficialStyleMixer(block.mixer)
    return wrapped
