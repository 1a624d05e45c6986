"""LocalMamba (Huang et al. 2024, arXiv 2403.09338) in pure PyTorch, with hunto/LocalMamba's parameter names.

Two models, each taking the keyword arguments of its official class, so an official ``ckpt["model"]``
loads with ``strict=True``:

* :class:`LocalVSSM`: ``classification/lib/models/local_vmamba.py``'s ``VSSM`` (channel-last
  (batch, H, W, C) maps, nn.Linear projections, PatchMerging2D, no MLP). Each block's ``SS2D`` scans
  its own list of directions (``directions``: one list per block, the searched lists of the
  released models) and gates each direction's merged output with the ``BiAttn`` channel gate of
  ``op.multi_scan.attn`` before summing, then ``out_norm``, the SiLU z gate and ``out_proj``.
* :class:`LocalVim`: ``classification/lib/models/local_vim.py``'s ``VisionMamba`` with its
  ``MultiMamba`` mixer: per direction its own causal conv1d / x_proj / dt_proj / A_log / D,
  the z gate inside each direction, one shared ``attn`` (BiAttn), optional RoPE and middle class
  token. It reuses Vim's RMSNorm and Block (:mod:`ptq4vm_fx.models.vim`), as the official code does.

Directions (the official ``MultiScan``): ``h`` (row-major), ``v`` (column-major), ``w<k>`` (k x k windows
in row-major order, row-major inside each window; the map is zero-padded at the bottom/right to
multiples of k first and the padded tokens are scanned too, as officially), each optionally ``_flip``
(scanned backwards). LocalVSSM scans each direction with one ``torch.ops.ptq4vm.ordered_scan`` call
that reads the map's row-major tokens through the direction's order map (models/orders.py; a padded
token read as the official zero) and writes each output where the official merge puts it: no
activation is padded, transposed, flipped or gathered in its graph. LocalVim's conv1d runs over each
direction's sequence (the class token inserted in it), so its padded tokens' conv outputs are not zero:
``torch.ops.ptq4vm.ordered_conv1d_silu`` reads x through the direction's sequence map
(``orders.sequence_maps``) and writes u in sequence order (anticausal for a flipped direction, as
Vim's backward branch), x_proj_i / dt_proj_i run on it, and one ``ordered_scan`` walks u, delta, B, C
by step (backwards when flipped), reads z through the map and writes each output to its token
(``orders.sequence_scan_maps``): no gathered, concatenated or merged copy either. Both equal the
official flip -> scan -> flip back to rounding, padded tokens included.
The official merge of ``v`` / ``v_flip`` reads the column-major output back as if it were laid out
(H, W) (``rearrange('b d (h w) -> b d (w h)')``): the inverse of the scan only for square maps. It is
reproduced as is (LocalVim's z gate too stays in each scan's token order, as officially), so
non-square inputs (LocalVSSM any size; LocalVim a non-square ``img_size`` without RoPE) give the
official results.

Official checkpoints of LocalVim hold K equal ``A_log_i`` per block (the official ``MultiMamba``
wraps one tensor in K Parameters, which share storage and so train as one); here they are K
independent Parameters, equal after loading such a checkpoint.

Forward has no data-dependent control flow: ``torch.fx.symbolic_trace`` captures it with one scan
node per direction per block. Importing this module registers the released variants with timm
under their official names (``timm.create_model("local_vssm_tiny")``); keyword arguments override
the configuration.

It also registers two model families (models/family.py): ``local_vssm`` (:data:`VSSM_FAMILY`; any
image size in float, the calibration size fixed at capture; :func:`canonicalize_vssm_block` gives the
grouped x_proj / dt_proj weights per-direction ``nn.Linear`` modules and runs in_proj / out_proj on
tokens) and ``local_vim`` (:data:`VIM_FAMILY`; blocks already in the passes' form). The quantized
linears are in_proj, out_proj and per direction x_proj_<i> / dt_proj_<i>; BiAttn's linears, the
patch merging and the head stay float.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, to_2tuple, trunc_normal_

from .. import ops  # noqa: F401  (registers torch.ops.ptq4vm)
from ..errors import InputError
from ..scan import channel_major
from .arguments import choice, no_checkpointing, positive_int, refuse_unknown, ssm_conv_size, stage_widths
from .canonical import split_grouped_linears, token_major_linears
from .checkpoint import CheckedLoading
from .family import ModelFamily, constructor_keys, model_overrides, named_model, register_family, register_with_timm
from .orders import sequence_maps, sequence_scan_maps, token_orders, token_scatters
from .vim import Block as VimBlock
from .vim import RMSNorm, dt_bias_init, s4d_real_a_log
from .vmamba import check_image_batch

torch.fx.wrap("check_image_batch")  # fx.wrap patches the name in this module's globals, so wrap it here too
torch.fx.wrap("token_orders")  # the order maps (models/orders.py): one opaque call, built once per size
torch.fx.wrap("token_scatters")
torch.fx.wrap("sequence_maps")
torch.fx.wrap("sequence_scan_maps")

__all__ = ["LocalVSSM", "LocalVim", "MultiScan", "BiAttn", "LOCALMAMBA_CONFIGS", "create_localmamba"]

_DIRECTION = re.compile(r"(h|v|w([1-9][0-9]*))(_flip)?")
_DIRECTIONS_SUPPORTED = "h, v, w<k> (window size k >= 1), each optionally with _flip"


class Direction(NamedTuple):
    """A scan direction: token ``order`` ('h' row-major, 'v' column-major, 'w' windowed), the
    ``window`` size of 'w' (0 otherwise), and ``flip`` (scanned backwards)."""

    order: str
    window: int
    flip: bool


def parse_direction(name, where: str) -> Direction:
    """``'h' | 'v' | 'w<k>'`` with an optional ``'_flip'`` -> Direction; anything else is an InputError."""
    match = _DIRECTION.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise InputError(f"{where}={name!r} is not supported; supported: {_DIRECTIONS_SUPPORTED}")
    return Direction(match[1][0], int(match[2] or 0), match[3] is not None)


def _direction_lists(model: str, directions, blocks: int) -> list[list[str]]:
    """One non-empty list of direction names per block, checked."""
    if directions is None:
        raise InputError(
            f"{model}: directions=None (the direction-search supernet) is not supported; "
            f"supported: a list of {blocks} per-block lists of scan directions ({_DIRECTIONS_SUPPORTED})"
        )
    if not isinstance(directions, (list, tuple)) or not all(isinstance(d, (list, tuple)) for d in directions):
        raise InputError(f"{model}: directions={directions!r} is not supported; supported: a list of per-block lists")
    directions = [list(d) for d in directions]
    if len(directions) != blocks or not all(directions):
        raise InputError(
            f"{model}: directions has {len(directions)} lists for {blocks} blocks (each needs a non-empty list)"
        )
    for i, block in enumerate(directions):
        for j, name in enumerate(block):
            parse_direction(name, f"{model}: directions[{i}][{j}]")
    return directions


class MultiScan(nn.Module):
    """The scan directions of one block (official ``MultiScan`` with fixed ``choices``; no parameters):
    ``directions`` parsed, the token orders built from them as maps (models/orders.py)."""

    def __init__(self, choices: Sequence[str], where: str = "directions"):
        super().__init__()
        self.choices = tuple(choices)
        self.directions = [parse_direction(name, f"{where}[{k}]") for k, name in enumerate(self.choices)]

    def extra_repr(self) -> str:
        return ", ".join(self.choices)


class BiAttn(nn.Module):
    """The official channel gate: x * sigmoid(channel_select(gelu(global_reduce(mean_tokens(norm(x))))));
    (batch, T, C) -> (batch, T, C)."""

    def __init__(self, in_channels: int, act_ratio: float = 0.125):
        super().__init__()
        reduce_channels = int(in_channels * act_ratio)
        self.norm = nn.LayerNorm(in_channels)
        self.global_reduce = nn.Linear(in_channels, reduce_channels)
        self.act_fn = nn.GELU()
        self.channel_select = nn.Linear(reduce_channels, in_channels)
        self.gate_fn = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_global = self.act_fn(self.global_reduce(self.norm(x).mean(1, keepdim=True)))
        return x * self.gate_fn(self.channel_select(x_global))


class MultiScanVSSM(MultiScan):
    """LocalVSSM's MultiScan: the token orders and the BiAttn gate ``attn`` over d_inner channels."""

    def __init__(self, dim: int, choices: Sequence[str], where: str = "directions"):
        super().__init__(choices, where)
        self.attn = BiAttn(dim)


# -------------------------------------------------------------------------------------------------
# LocalVSSM
# -------------------------------------------------------------------------------------------------

_ACT_LAYERS = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU}  # what the official VSSM maps


class Permute(nn.Module):
    """x.permute(*dims) (the official Permute)."""

    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class PatchMerging2D(nn.Module):
    """(batch, H, W, C) -> (batch, ceil(H/2), ceil(W/2), out_dim): odd sides zero-padded, the 2x2
    neighbours concatenated as (0,0), (1,0), (0,1), (1,1), LayerNorm over 4C, ``reduction`` (no bias)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class SS2D(nn.Module):
    """LocalVSSM's mixer: (batch, H, W, d_model) -> (batch, H, W, d_model).

    Parameters (K = len(directions), D = d_inner, R = dt_rank, N = d_state): ``in_proj`` (2D, d_model),
    depthwise ``conv2d`` (D, 1, d_conv, d_conv) when d_conv > 1, ``x_proj_weight`` (K, R + 2N, D),
    ``dt_projs_weight`` (K, D, R), ``dt_projs_bias`` (K, D), ``A_logs`` (K D, N), ``Ds`` (K D),
    ``out_norm`` (D), ``out_proj`` (d_model, D), ``multi_scan.attn`` (BiAttn over D)."""

    def __init__(
        self,
        d_model: int,
        d_state,
        ssm_ratio: float,
        dt_rank,
        act_layer: type[nn.Module],
        d_conv: int,
        conv_bias: bool,
        dropout: float,
        simple_init: bool,
        directions: Sequence[str],
        where: str,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
    ):
        super().__init__()
        self.d_model = d_model
        self.d_inner = D = int(ssm_ratio * d_model)
        self.dt_rank = R = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.d_state = N = math.ceil(d_model / 6) if d_state == "auto" else d_state
        self.d_conv = d_conv
        K = len(directions)
        self.out_norm = nn.LayerNorm(D)
        self.in_proj = nn.Linear(d_model, 2 * D, bias=False)
        self.act = act_layer()
        if d_conv > 1:
            self.conv2d = nn.Conv2d(D, D, kernel_size=d_conv, padding=(d_conv - 1) // 2, groups=D, bias=conv_bias)
        self.x_proj_weight = nn.Parameter(torch.empty(K, R + 2 * N, D).uniform_(-(D**-0.5), D**-0.5))
        if simple_init:
            self.dt_projs_weight = nn.Parameter(torch.randn(K, D, R))
            self.dt_projs_bias = nn.Parameter(torch.randn(K, D))
            self.A_logs = nn.Parameter(torch.randn(K * D, N))
        else:  # Mamba's dt init (softplus(dt_projs_bias) log-uniform in [dt_min, dt_max]) and S4D-real A
            self.dt_projs_weight = nn.Parameter(torch.empty(K, D, R).uniform_(-(R**-0.5), R**-0.5))
            self.dt_projs_bias = nn.Parameter(dt_bias_init((K, D), dt_min, dt_max, dt_init_floor))
            self.A_logs = nn.Parameter(s4d_real_a_log(K * D, N))
        self.Ds = nn.Parameter(torch.ones(K * D))
        self.out_proj = nn.Linear(D, d_model, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.multi_scan = MultiScanVSSM(D, directions, where)

    def _direction(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Direction k over the map x (batch, D, H, W) -> its output merged to row-major tokens (batch, D, H W):
        one ``ptq4vm::ordered_scan`` reading the row-major tokens through the direction's order and writing
        each output where the official merge puts it (no padded, transposed or flipped copy; a padded
        token is read as the zero the official padding holds). x_proj_k and dt_proj_k are per-token maps:
        they run on the H W row-major tokens (a padded token's x_proj and dt_proj outputs are 0)."""
        N, R, D = self.d_state, self.dt_rank, self.d_inner
        u = x.flatten(2)  # (batch, D, H W)
        x_dbl = F.linear(u.transpose(1, 2), self.x_proj_weight[k])  # (batch, L, R + 2N)
        delta = F.linear(x_dbl[..., :R], self.dt_projs_weight[k]).transpose(1, 2)  # (batch, D, L)
        B = x_dbl[..., R : R + N].transpose(1, 2)  # (batch, N, L)
        C = x_dbl[..., R + N :].transpose(1, 2)
        A = channel_major(-torch.exp(self.A_logs.view(-1, D, N)[k : k + 1].float()))  # (1, D, N)
        D_skip = self.Ds.view(-1, D)[k : k + 1].float()
        delta_bias = self.dt_projs_bias[k : k + 1].float()
        spec = (tuple(self.multi_scan.directions[k]),)
        scatter = token_scatters(x, spec) if spec[0][0] == "v" else None  # the official merge of "v"
        return torch.ops.ptq4vm.ordered_scan(u, [delta], A, [B], [C], D_skip, None, delta_bias,
                                             token_orders(x, spec), scatter, True)

    def cross_scan(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, D, H, W) -> sum over directions of BiAttn(direction output), (batch, H W, D)."""
        ms = self.multi_scan
        return torch.stack([ms.attn(self._direction(x, k).transpose(1, 2)) for k in range(len(ms.directions))]).sum(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xz = self.in_proj(x)
        if self.d_conv > 1:
            x, z = xz.chunk(2, dim=-1)
            z = self.act(z)
            x = self.act(self.conv2d(x.permute(0, 3, 1, 2)))
        else:
            x, z = self.act(xz).chunk(2, dim=-1)
            x = x.permute(0, 3, 1, 2)
        y = self.out_norm(self.cross_scan(x)).unflatten(1, (x.shape[2], x.shape[3])).to(x.dtype)
        return self.dropout(self.out_proj(y * z))


class VSSBlock(nn.Module):
    """x + drop_path(op(norm(x))) on (batch, H, W, C)."""

    def __init__(self, hidden_dim: int, drop_path: float, op: SS2D):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_dim)
        self.op = op
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.op(self.norm(x)))


class LocalVSSM(CheckedLoading, nn.Module):
    """LocalVMamba classifier: (batch, in_chans, H, W) -> logits (batch, num_classes), any H and W.

    The keyword arguments are the official ``VSSM``'s; ``directions`` holds one list per block
    (sum(depths) lists). Refused: ``directions=None`` (the search supernet), ``norm_layer`` other
    than "ln", ``ssm_act_layer`` other than silu/gelu/relu, an even ``ssm_conv`` > 1, and
    ``use_checkpoint=True``. ``config`` holds the constructor arguments."""

    def __init__(
        self,
        patch_size=4,
        in_chans=3,
        num_classes=1000,
        depths=(2, 2, 9, 2),
        dims=(96, 192, 384, 768),
        ssm_d_state=16,
        ssm_ratio=2.0,
        ssm_dt_rank="auto",
        ssm_act_layer="silu",
        ssm_conv=3,
        ssm_conv_bias=True,
        ssm_drop_rate=0.0,
        ssm_simple_init=False,
        drop_path_rate=0.1,
        patch_norm=True,
        norm_layer="LN",
        use_checkpoint=False,
        directions=None,
        **kwargs,
    ):
        super().__init__()
        name = "LocalVSSM"
        refuse_unknown(name, kwargs)
        positive_int(name, "patch_size", patch_size)
        depths, dims = stage_widths(name, depths, dims)
        if ssm_d_state != "auto":
            positive_int(name, "ssm_d_state", ssm_d_state)
        if ssm_dt_rank != "auto":
            positive_int(name, "ssm_dt_rank", ssm_dt_rank)
        if not (isinstance(ssm_ratio, (int, float)) and int(ssm_ratio * min(dims)) >= 1):
            raise InputError(f"{name}: ssm_ratio={ssm_ratio!r} is not supported: expected ssm_ratio * dim >= 1")
        ssm_conv_size(name, ssm_conv)
        choice(name, "norm_layer", norm_layer, ("ln",), lower=True)
        act = _ACT_LAYERS[choice(name, "ssm_act_layer", ssm_act_layer, tuple(_ACT_LAYERS), lower=True)]
        no_checkpointing(name, use_checkpoint)
        directions = _direction_lists(name, directions, sum(depths))
        self.config = dict(
            patch_size=patch_size, in_chans=in_chans, num_classes=num_classes, depths=depths, dims=dims,
            ssm_d_state=ssm_d_state, ssm_ratio=ssm_ratio, ssm_dt_rank=ssm_dt_rank, ssm_act_layer=ssm_act_layer,
            ssm_conv=ssm_conv, ssm_conv_bias=ssm_conv_bias, ssm_drop_rate=ssm_drop_rate,
            ssm_simple_init=ssm_simple_init, drop_path_rate=drop_path_rate, patch_norm=patch_norm,
            norm_layer=norm_layer, use_checkpoint=use_checkpoint, directions=directions,
        )  # fmt: skip
        self.in_chans, self.num_classes = in_chans, num_classes
        self.num_layers = len(depths)
        self.dims, self.num_features = dims, dims[-1]
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # also under a meta device

        self.patch_embed = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=patch_size, stride=patch_size),
            Permute(0, 2, 3, 1),
            nn.LayerNorm(dims[0]) if patch_norm else nn.Identity(),
        )
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            blocks = []
            for j in range(start, start + depth):
                op = SS2D(dims[i], ssm_d_state, ssm_ratio, ssm_dt_rank, act, ssm_conv, ssm_conv_bias, ssm_drop_rate,
                          ssm_simple_init, directions[j], f"{name}: directions[{j}]")  # fmt: skip
                blocks.append(VSSBlock(dims[i], dpr[j], op))
            last = i == len(depths) - 1
            downsample = nn.Identity() if last else PatchMerging2D(dims[i], dims[i + 1])
            self.layers.append(nn.Sequential(OrderedDict(blocks=nn.Sequential(*blocks), downsample=downsample)))
        self.classifier = nn.Sequential(OrderedDict(
            norm=nn.LayerNorm(self.num_features),
            permute=Permute(0, 3, 1, 2),
            avgpool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1),
            head=nn.Linear(self.num_features, num_classes),
        ))  # fmt: skip
        self.apply(_init_linear_and_norm)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, in_chans, H, W) -> the last stage's map (batch, H', W', num_features)."""
        x = self.patch_embed(check_image_batch(x, self.in_chans, self.patch_embed[0].kernel_size[0]))
        for layer in self.layers:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


def _init_linear_and_norm(m: nn.Module) -> None:
    """The official init: Linear weights trunc_normal(0.02), biases 0; LayerNorm 1 and 0."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# -------------------------------------------------------------------------------------------------
# LocalVim
# -------------------------------------------------------------------------------------------------


def check_patch_grid(x: torch.Tensor, channels: int, patch_size: int, grid: tuple[int, int]) -> torch.Tensor:
    """Raise InputError unless ``x`` is a (batch, channels, H, W) batch whose zero-padded patch grid
    (ceil(H / patch_size), ceil(W / patch_size)) is ``grid`` (the position embedding's and token orders');
    returns ``x``."""
    if x.dim() != 4 or x.shape[1] != channels:
        raise InputError(f"expected an image batch of shape (batch, {channels}, H, W), got {tuple(x.shape)}")
    got = (-(-x.shape[2] // patch_size), -(-x.shape[3] // patch_size))
    if got != tuple(grid):
        (gh, gw), p = grid, patch_size
        raise InputError(
            f"input image size {x.shape[2]}x{x.shape[3]} gives a {got[0]}x{got[1]} patch grid but the model's is "
            f"{gh}x{gw}: expected H in [{(gh - 1) * p + 1}, {gh * p}] and W in [{(gw - 1) * p + 1}, {gw * p}]"
        )
    return x


torch.fx.wrap("check_patch_grid")


class PatchEmbed(nn.Module):
    """timm's PatchEmbed as LocalVim builds it (``dynamic_img_pad=True``): (batch, C, H, W) zero-padded at the
    bottom/right to patch multiples -> (batch, grid_h grid_w, embed_dim)."""

    def __init__(self, img_size, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size, self.patch_size = to_2tuple(img_size), patch_size
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        x = check_patch_grid(x, self.proj.in_channels, p, self.grid_size)
        x = F.pad(x, (0, (-x.shape[3]) % p, 0, (-x.shape[2]) % p))
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class VisionRotaryEmbeddingFast(nn.Module):
    """The official 2D RoPE (EVA-02's): t (batch, S S, 4 (dim // 2)) -> t cos + rotate_half(t) sin, with
    persistent buffers ``freqs_cos`` / ``freqs_sin`` (S S, 4 (dim // 2)), S = ``ft_seq_len``."""

    def __init__(self, dim: int, pt_seq_len: int, ft_seq_len: int, theta: float = 10000):
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        t = torch.arange(ft_seq_len) / ft_seq_len * pt_seq_len
        freqs = (t[:, None] * freqs).repeat_interleave(2, dim=-1)  # (S, 2 (dim // 2))
        size = (ft_seq_len, ft_seq_len, freqs.shape[-1])
        freqs = torch.cat((freqs[:, None, :].expand(size), freqs[None, :, :].expand(size)), dim=-1).flatten(0, 1)
        self.register_buffer("freqs_cos", freqs.cos())
        self.register_buffer("freqs_sin", freqs.sin())

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        pairs = t.unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return t * self.freqs_cos + rotated * self.freqs_sin


class MultiMamba(nn.Module):
    """LocalVim's mixer: (batch, T, d_model) -> (batch, T, d_model), T = H W (+ 1 with the middle class token).

    Per direction i: ``A_log_i`` (D, N), causal depthwise ``conv1d_i`` (D, 1, d_conv), ``x_proj_i`` (R + 2N, D),
    ``dt_proj_i`` (D, R) with bias, ``D_i`` (D); shared ``in_proj`` (2D, d_model), ``out_proj``
    (d_model, D), ``attn`` (BiAttn over D). Each direction scans x in its order (the class token
    inserted at the middle of the ordered sequence) with the SiLU(z) gate in the same order, read through
    order maps and written to token order, and is gated by ``attn``; the directions are summed and projected."""

    def __init__(
        self,
        d_model: int,
        directions: Sequence[str],
        token_size: tuple[int, int],
        use_middle_cls_token: bool,
        where: str,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        dt_rank="auto",
        conv_bias: bool = True,
        bias: bool = False,
    ):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = D = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.token_size = tuple(token_size)
        self.use_middle_cls_token = use_middle_cls_token
        self.in_proj = nn.Linear(d_model, 2 * D, bias=bias)
        self.multi_scan = MultiScan(directions, where)
        A_log = s4d_real_a_log(D, d_state)
        for i in range(len(directions)):
            setattr(self, f"A_log_{i}", nn.Parameter(A_log.clone()))
            conv = nn.Conv1d(D, D, d_conv, groups=D, padding=d_conv - 1, bias=conv_bias)
            setattr(self, f"conv1d_{i}", conv)
            setattr(self, f"x_proj_{i}", nn.Linear(D, self.dt_rank + 2 * d_state, bias=False))
            setattr(self, f"dt_proj_{i}", nn.Linear(self.dt_rank, D, bias=True))
            setattr(self, f"D_{i}", nn.Parameter(torch.ones(D)))
        self.out_proj = nn.Linear(D, d_model, bias=bias)
        self.attn = BiAttn(D)

    def _branch(self, xz: torch.Tensor, i: int) -> torch.Tensor:
        """Direction i on xz (batch, 2D, T), tokens in natural order -> its output y * silu(z) at the natural tokens,
        (batch, D, T). The conv reads x through the direction's sequence map (the class token at step c, or
        S - c flipped; a padded window token 0) and writes u (batch, D, S) in sequence order (anticausal when
        flipped); x_proj_i / dt_proj_i run on u; one ``ptq4vm::ordered_scan`` walks u, delta, B, C by step
        (backwards when flipped), reads z through the map and writes each output where the merge puts it."""
        height, width = self.token_size
        conv = getattr(self, f"conv1d_{i}")
        x_proj, dt_proj = getattr(self, f"x_proj_{i}"), getattr(self, f"dt_proj_{i}")
        direction = tuple(self.multi_scan.directions[i])
        x, z = xz.chunk(2, dim=1)
        reads = sequence_maps(xz, direction, height, width, self.use_middle_cls_token)[0]
        u = torch.ops.ptq4vm.ordered_conv1d_silu(x, conv.weight, conv.bias, reads, direction[2])
        x_dbl = x_proj(u.transpose(1, 2))  # (batch, S, R + 2N)
        R, N = self.dt_rank, self.d_state
        delta = dt_proj(x_dbl[..., :R]).transpose(1, 2)
        B = x_dbl[..., R : R + N].transpose(1, 2)
        C = x_dbl[..., R + N :].transpose(1, 2)
        A = channel_major(-torch.exp(getattr(self, f"A_log_{i}").float())[None])  # (1, D, N)
        D_skip = getattr(self, f"D_{i}").float()[None]
        maps = sequence_scan_maps(xz, direction, height, width, self.use_middle_cls_token)  # steps, z, outputs
        return torch.ops.ptq4vm.ordered_scan(u, [delta], A, [B], [C], D_skip, z, None, maps[:1], maps[2:], True,
                                             maps[1:2])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (batch, 2D, T)
        outs = [self.attn(self._branch(xz, i).transpose(1, 2)) for i in range(len(self.multi_scan.directions))]
        return self.out_proj(torch.stack(outs).sum(0))


class LocalVimBlock(VimBlock):
    """Vim's Block (add -> norm -> mixer; its forward) around a MultiMamba mixer and RMSNorm or LayerNorm."""

    def __init__(self, mixer: MultiMamba, norm: nn.Module, drop_path: float, residual_in_fp32: bool):
        nn.Module.__init__(self)  # VimBlock.__init__ builds Vim's own mixer
        self.residual_in_fp32 = residual_in_fp32
        self.mixer = mixer
        self.norm = norm
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()


_SSM_CFG_KEYS = ("d_state", "d_conv", "expand", "dt_rank", "conv_bias", "bias", "use_fast_path")
_FINAL_POOL_TYPES = ("mean", "none")


class LocalVim(CheckedLoading, nn.Module):
    """LocalVim classifier: (batch, channels, H, W) -> logits (batch, num_classes).

    The keyword arguments are the official local_vim ``VisionMamba``'s; ``directions`` holds one list
    per layer. H and W may be any size whose zero-padded patch grid is the model's (the official
    dynamic padding; the position embedding is not resized). ``bimamba_type``, ``ft_seq_len`` and
    ``ssm_cfg["use_fast_path"]`` are accepted and unused, as officially. Refused: ``directions=None``
    (the search supernet), a class token other than the middle one, ``final_pool_type`` other than
    mean/none, RoPE with a class token or a non-square grid or embed_dim % 4 != 0, ``ssm_cfg`` keys
    other than d_state/d_conv (2 to 4)/expand/dt_rank/conv_bias/bias, and non-None
    ``initializer_cfg``, ``device``, ``dtype`` or ``mamba_cls``. ``config`` holds the arguments."""

    def __init__(
        self,
        img_size=224,
        patch_size=16,
        depth=24,
        embed_dim=192,
        channels=3,
        num_classes=1000,
        ssm_cfg=None,
        drop_rate=0.0,
        drop_path_rate=0.1,
        norm_epsilon=1e-5,
        rms_norm=False,
        initializer_cfg=None,
        fused_add_norm=False,
        residual_in_fp32=False,
        device=None,
        dtype=None,
        ft_seq_len=None,
        pt_hw_seq_len=14,
        final_pool_type="none",
        if_abs_pos_embed=False,
        if_rope=False,
        if_rope_residual=False,
        bimamba_type="none",
        if_cls_token=False,
        use_middle_cls_token=False,
        directions=None,
        mamba_cls=None,
        **kwargs,
    ):
        super().__init__()
        name = "LocalVim"
        refuse_unknown(name, kwargs)
        for key, value in (("initializer_cfg", initializer_cfg), ("device", device), ("dtype", dtype),
                           ("mamba_cls", mamba_cls)):  # fmt: skip
            if value is not None:
                raise InputError(f"{name}: {key}={value!r} is not supported; supported: None")
        for key, value in (("patch_size", patch_size), ("depth", depth), ("embed_dim", embed_dim),
                           ("channels", channels)):  # fmt: skip
            positive_int(name, key, value)
        for side in to_2tuple(img_size):
            if positive_int(name, "img_size", side) < patch_size:
                raise InputError(f"{name}: img_size={img_size!r} is smaller than patch_size={patch_size}")
        ssm_cfg = dict(ssm_cfg or {})
        unknown = sorted(set(ssm_cfg) - set(_SSM_CFG_KEYS))
        if unknown:
            raise InputError(f"{name}: ssm_cfg keys {', '.join(unknown)} are not supported; "
                             f"supported: {', '.join(_SSM_CFG_KEYS)}")  # fmt: skip
        ssm_cfg.pop("use_fast_path", None)
        choice(name, "ssm_cfg['d_conv']", ssm_cfg.get("d_conv", 4), (2, 3, 4))
        if (if_cls_token, use_middle_cls_token) not in ((False, False), (True, True)):
            raise InputError(
                f"{name}: if_cls_token={if_cls_token}, use_middle_cls_token={use_middle_cls_token} is not supported; "
                "supported: both False, or both True (the middle class token)"
            )
        if not if_cls_token:
            choice(name, "final_pool_type", final_pool_type, _FINAL_POOL_TYPES, lower=True)
        directions = _direction_lists(name, directions, depth)
        self.patch_embed = PatchEmbed(img_size, patch_size, channels, embed_dim)
        grid = self.patch_embed.grid_size
        if if_rope and (if_cls_token or grid[0] != grid[1] or embed_dim % 4):
            raise InputError(
                f"{name}: if_rope=True is not supported with if_cls_token={if_cls_token}, a {grid[0]}x{grid[1]} "
                f"patch grid and embed_dim={embed_dim}; supported: no class token, a square grid, embed_dim % 4 == 0"
            )
        self.config = dict(
            img_size=img_size, patch_size=patch_size, depth=depth, embed_dim=embed_dim, channels=channels,
            num_classes=num_classes, ssm_cfg=ssm_cfg or None, drop_rate=drop_rate, drop_path_rate=drop_path_rate,
            norm_epsilon=norm_epsilon, rms_norm=rms_norm, fused_add_norm=fused_add_norm,
            residual_in_fp32=residual_in_fp32, pt_hw_seq_len=pt_hw_seq_len, final_pool_type=final_pool_type,
            if_abs_pos_embed=if_abs_pos_embed, if_rope=if_rope, if_rope_residual=if_rope_residual,
            bimamba_type=bimamba_type, if_cls_token=if_cls_token, use_middle_cls_token=use_middle_cls_token,
            directions=directions,
        )  # fmt: skip
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.if_cls_token, self.if_abs_pos_embed = if_cls_token, if_abs_pos_embed
        self.if_rope, self.if_rope_residual = if_rope, if_rope_residual
        self.final_pool_type = final_pool_type
        num_patches = self.patch_embed.num_patches
        self.token_position = num_patches // 2
        if if_cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if if_abs_pos_embed:
            self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + int(if_cls_token), embed_dim))
            self.pos_drop = nn.Dropout(p=drop_rate)
        if if_rope:
            self.rope = VisionRotaryEmbeddingFast(embed_dim // 2, pt_hw_seq_len, grid[0])
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        dpr = [0.0] + torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0.0 else nn.Identity()

        def norm() -> nn.Module:
            return RMSNorm(embed_dim, eps=norm_epsilon) if rms_norm else nn.LayerNorm(embed_dim, eps=norm_epsilon)

        self.layers = nn.ModuleList(
            LocalVimBlock(
                MultiMamba(embed_dim, directions[i], grid, use_middle_cls_token, f"{name}: directions[{i}]", **ssm_cfg),
                norm(),
                dpr[i],
                residual_in_fp32,
            )
            for i in range(depth)
        )
        self.norm_f = norm()
        self._init_weights(depth)

    def _init_weights(self, depth: int) -> None:
        """The official init: Linear trunc_normal(0.02) with zero bias (dt_proj's too), norms 1/0, pos_embed
        trunc_normal(0.02), out_proj kaiming-uniform / sqrt(depth)."""
        self.apply(_init_linear_and_norm)
        if self.if_abs_pos_embed:
            trunc_normal_(self.pos_embed, std=0.02)
        for layer in self.layers:
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                layer.mixer.out_proj.weight /= math.sqrt(depth)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, channels, H, W) -> pooled features (batch, embed_dim)."""
        x = self.patch_embed(x)
        tp = self.token_position
        if self.if_cls_token:
            x = torch.cat((x[:, :tp], self.cls_token.expand(x.shape[0], -1, -1), x[:, tp:]), dim=1)
        if self.if_abs_pos_embed:
            x = self.pos_drop(x + self.pos_embed)
        hidden_states, residual = x, torch.zeros_like(x)
        for layer in self.layers:
            if self.if_rope:
                hidden_states = self.rope(hidden_states)
                if self.if_rope_residual:
                    residual = self.rope(residual)
            hidden_states, residual = layer(hidden_states, residual)
        residual = residual + self.drop_path(hidden_states)
        hidden_states = self.norm_f(residual.to(self.norm_f.weight.dtype))
        if self.if_cls_token:
            return hidden_states[:, tp]
        return hidden_states.mean(dim=1) if self.final_pool_type == "mean" else hidden_states[:, -1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


# -------------------------------------------------------------------------------------------------
# named variants: the official registrations (local_vmamba.py, local_vim.py at 75e5d1f)
# -------------------------------------------------------------------------------------------------

LOCAL_VSSM_TINY_DIRECTIONS = [
    ["h", "h_flip", "w7", "w7_flip"], ["h_flip", "v_flip", "w2", "w2_flip"], ["h_flip", "v_flip", "w2_flip", "w7"],
    ["h_flip", "v", "v_flip", "w2"], ["h", "h_flip", "v_flip", "w2_flip"], ["h_flip", "v_flip", "w2", "w2_flip"],
    ["h", "w2_flip", "w7", "w7_flip"], ["h", "h_flip", "v", "v_flip"], ["h", "v_flip", "w7", "w7_flip"],
    ["h_flip", "v", "w2", "w7_flip"], ["v", "v_flip", "w2", "w7_flip"], ["h", "h_flip", "v_flip", "w2_flip"],
    ["v_flip", "w2_flip", "w7", "w7_flip"], ["h_flip", "v_flip", "w2_flip", "w7_flip"],
    ["h_flip", "v", "w7", "w7_flip"],
]  # fmt: skip
LOCAL_VSSM_SMALL_DIRECTIONS = [
    ["h", "v", "v_flip", "w7_flip"], ["h", "h_flip", "v", "w7"], ["h_flip", "v", "v_flip", "w7"],
    ["h_flip", "v", "w2_flip", "w7"], ["h_flip", "v", "w2_flip", "w7"], ["h_flip", "v_flip", "w2", "w7_flip"],
    ["h_flip", "v", "v_flip", "w7"], ["h", "v", "v_flip", "w7"], ["h", "v", "v_flip", "w7"],
    ["h", "v", "v_flip", "w7_flip"], ["h", "h_flip", "v", "v_flip"], ["h", "v", "v_flip", "w2"],
    ["v", "v_flip", "w2_flip", "w7"], ["h", "h_flip", "v", "w2"], ["h_flip", "v", "v_flip", "w7_flip"],
    ["h", "h_flip", "v", "v_flip"], ["h", "v", "v_flip", "w7_flip"], ["h", "v", "v_flip", "w7_flip"],
    ["h", "h_flip", "v_flip", "w7"], ["h_flip", "v_flip", "w2_flip", "w7"], ["h_flip", "v", "v_flip", "w7_flip"],
    ["v", "v_flip", "w7", "w7_flip"], ["h", "v", "v_flip", "w7_flip"], ["h_flip", "v", "v_flip", "w2"],
    ["h", "v", "v_flip", "w2_flip"], ["h", "h_flip", "v", "w7"], ["h", "h_flip", "w7", "w7_flip"],
    ["h", "v_flip", "w2", "w2_flip"], ["h", "v_flip", "w2", "w7"], ["h", "v", "v_flip", "w7_flip"],
    ["h_flip", "v", "w2_flip", "w7"], ["h_flip", "v_flip", "w7", "w7_flip"], ["h", "v", "w7", "w7_flip"],
]  # fmt: skip
LOCAL_VIM_TINY_DIRECTIONS = [
    ["h", "v_flip", "w7", "w7_flip"], ["h_flip", "w2_flip", "w7", "w7_flip"], ["h", "h_flip", "v", "w7"],
    ["h", "h_flip", "v", "v_flip"], ["h", "h_flip", "v", "v_flip"], ["h", "h_flip", "v", "v_flip"],
    ["h_flip", "v", "v_flip", "w7"], ["h_flip", "v", "v_flip", "w2_flip"], ["h", "h_flip", "v", "v_flip"],
    ["h", "h_flip", "v", "v_flip"], ["h", "v", "v_flip", "w2"], ["h", "v", "v_flip", "w2_flip"],
    ["h", "h_flip", "v_flip", "w7"], ["h_flip", "v", "v_flip", "w2"], ["h", "h_flip", "v", "v_flip"],
    ["h", "v", "w2", "w2_flip"], ["v", "v_flip", "w2", "w7"], ["h", "h_flip", "v", "w2"],
    ["h", "h_flip", "w2_flip", "w7"], ["v", "v_flip", "w2", "w2_flip"],
]  # fmt: skip

_VSSM = dict(patch_size=4, in_chans=3, num_classes=1000, dims=[96, 192, 384, 768], ssm_d_state=16, ssm_ratio=2.0,
             ssm_dt_rank="auto", ssm_act_layer="silu", ssm_conv=3, ssm_conv_bias=True, ssm_drop_rate=0.0,
             ssm_simple_init=False, drop_path_rate=0.2, patch_norm=True, norm_layer="LN")  # fmt: skip
_VIM = dict(img_size=224, patch_size=16, depth=20, channels=3, num_classes=1000, rms_norm=True, residual_in_fp32=True,
            fused_add_norm=True, final_pool_type="mean", if_abs_pos_embed=True, if_rope=True, if_rope_residual=True,
            bimamba_type="v2", drop_path_rate=0.1)  # fmt: skip
# local_vim.py defines local_vim_small twice; the second (no searched directions) is the one registered
LOCALMAMBA_CONFIGS = {
    "local_vssm_tiny": dict(_VSSM, depths=[2, 2, 9, 2], directions=LOCAL_VSSM_TINY_DIRECTIONS),
    "local_vssm_small": dict(_VSSM, depths=[2, 2, 27, 2], directions=LOCAL_VSSM_SMALL_DIRECTIONS),
    "local_vim_tiny": dict(_VIM, embed_dim=192, directions=LOCAL_VIM_TINY_DIRECTIONS),
    "local_vim_tiny_middle_cls_token": dict(_VIM, embed_dim=192, directions=LOCAL_VIM_TINY_DIRECTIONS, if_rope=False,
                                            if_rope_residual=False, if_cls_token=True, use_middle_cls_token=True),
    "local_vim_small": dict(_VIM, embed_dim=384, directions=[["h", "h_flip", "w2", "w2_flip"]] * 20),
}  # fmt: skip
# the small models bundled with the package, trained on scikit-learn's 8x8 digits (scripts/train_digits.py):
# LocalVSSM with 1-pixel patches (an 8x8 map, then 4x4; 2x2 and 4x4 windows), LocalVim with 2x2 patches
# (a 4x4 grid and the middle class token, 17 tokens; 2x2 windows)
BUNDLED_CONFIGS = {
    "local_vssm_digits": dict(_VSSM, patch_size=1, in_chans=1, num_classes=10, depths=[2, 2], dims=[24, 48],
                              ssm_d_state=4, drop_path_rate=0.0,
                              directions=[["h", "v_flip", "w2", "w4_flip"], ["h_flip", "v", "w4", "w2_flip"],
                                          ["h", "v_flip", "w2", "w2_flip"], ["h_flip", "v", "w2", "v_flip"]]),
    "local_vim_digits": dict(_VIM, img_size=8, patch_size=2, depth=4, embed_dim=32, channels=1, num_classes=10,
                             ssm_cfg=dict(d_state=8), if_rope=False, if_rope_residual=False, if_cls_token=True,
                             use_middle_cls_token=True, drop_path_rate=0.0,
                             directions=[["h", "h_flip", "w2", "w2_flip"], ["v", "v_flip", "w2", "w2_flip"],
                                         ["h", "h_flip", "v", "v_flip"], ["h", "v_flip", "w2", "w2_flip"]]),
}  # fmt: skip
_VSSM_INPUT_SIZE = {"local_vssm_digits": 8}  # what the data config resizes to (224 for the released models)
def create_localmamba(name: str, pretrained: bool = False, **overrides) -> LocalVSSM | LocalVim:
    """Build a named LocalMamba model; ``overrides`` are the model's keyword arguments."""
    configs = {**LOCALMAMBA_CONFIGS, **BUNDLED_CONFIGS}
    overrides = model_overrides(name, sorted(configs), pretrained, overrides)
    config = dict(configs[name], **overrides)
    if name.startswith("local_vssm"):
        return named_model(LocalVSSM(**config), name, (config["in_chans"], *(_VSSM_INPUT_SIZE.get(name, 224),) * 2))
    return named_model(LocalVim(**config), name, (config["channels"], *to_2tuple(config["img_size"])))


for _name in [*LOCALMAMBA_CONFIGS, *BUNDLED_CONFIGS]:
    register_with_timm(_name, create_localmamba,
                       f"LocalMamba {_name!r} (hunto/LocalMamba); keyword arguments override its configuration.")


# -------------------------------------------------------------------------------------------------
# the model families (models/family.py)
# -------------------------------------------------------------------------------------------------

_SCAN_ORDERS = ("per block its own list: h (row-major), v (column-major), w<k> (k x k windows, the map "
                "zero-padded to window multiples, padded tokens scanned)", "each optionally _flip (reverse=True)")


def _names(prefix: str):
    return lambda: sorted(name for name in {**LOCALMAMBA_CONFIGS, **BUNDLED_CONFIGS} if name.startswith(prefix))


def canonicalize_vssm_block(block: torch.fx.GraphModule) -> None:
    """A captured LocalVSSM VSSBlock graph in the passes' form (docs/design.md section 11), in place: each
    direction's ``F.linear(·, x_proj_weight[k])`` / ``F.linear(·, dt_projs_weight[k])`` becomes a call of the
    bias-free ``nn.Linear`` ``op.x_proj_<k>`` / ``op.dt_proj_<k>``, and in_proj / out_proj run on
    (batch, H W, C) tokens: norm -> in_proj, and out_norm (on tokens already) -> cast -> times z ->
    out_proj, so both fold their 1/m into the norm."""
    split_grouped_linears(block, "x_proj_weight", "x_proj")
    split_grouped_linears(block, "dt_projs_weight", "dt_proj")
    token_major_linears(block, ("op.in_proj", "op.out_proj"), channel_first=False,
                        token_norm=lambda m: m if type(m) is nn.LayerNorm else None)


_LINEARS = ("in_proj", "out_proj", "x_proj_[0-9]*", "dt_proj_[0-9]*")  # x_proj_<i>, dt_proj_<i>: per direction

VSSM_FAMILY = register_family(ModelFamily(
    name="local_vssm",
    model_class=LocalVSSM,
    model_names=_names("local_vssm"),
    create=create_localmamba,
    config_keys=lambda: constructor_keys(LocalVSSM),
    block_classes=(VSSBlock,),
    leaf_classes=(),
    fold_norms=(nn.LayerNorm,),
    linears=_LINEARS,
    alpha=0.65,  # VMamba's (the same block structure)
    scan_orders=_SCAN_ORDERS,
    image_size=lambda model: None,  # any size: the calibration size is fixed at capture
    canonicalize=canonicalize_vssm_block,
))  # fmt: skip

VIM_FAMILY = register_family(ModelFamily(
    name="local_vim",
    model_class=LocalVim,
    model_names=_names("local_vim"),
    create=create_localmamba,
    config_keys=lambda: constructor_keys(LocalVim),
    block_classes=(LocalVimBlock,),
    leaf_classes=(RMSNorm,),
    fold_norms=(RMSNorm, nn.LayerNorm),
    linears=_LINEARS,
    alpha=0.5,  # Vim's (the same block structure)
    scan_orders=_SCAN_ORDERS,
    image_size=lambda model: tuple(model.patch_embed.img_size),
))  # fmt: skip
