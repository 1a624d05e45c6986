"""VMamba (Liu et al. 2024) in pure PyTorch, with MzeroMiko/VMamba's parameter names and constructor.

``VSSM(**kwargs)`` takes the keyword arguments of the official ``classification/models/vmamba.py``
``VSSM`` (what its ``build_vssm_model`` passes from a yaml config), so an official config maps
1:1 and an official ``ckpt["model"]`` loads with ``strict=True``. Built: the channel-first path
(``norm_layer="ln2d"``) of the ``SS2D`` v2 family with the 4-direction cross scan
(``forward_type`` ``v05_noz``, the released s1l8 / s1l20 / s2l15 models, and ``v05``, ``v04``,
``v3`` with or without ``_noz``: one computation, the official variants differ only in CUDA
backend and half-precision handling), patch embed v1/v2, downsample v2/v3, MLP or gMLP.
Anything else is refused with :class:`ptq4vm_fx.errors.InputError` (``v2`` too: the official
code at 2ed52ea asserts on its ``"core"`` scan backend, so no official model of that type runs).

Layout: feature maps are (batch, C, H, W) throughout; ``in_proj``, ``out_proj``, ``fc1`` and
``fc2`` are :class:`Linear2d` (a 1x1 conv holding an (out, in) weight, as the official
``Linear2d`` stores it). SS2D's cross scan is one ``torch.ops.ptq4vm.ordered_scan`` call: directions
0/1 scan the row-major / column-major token order forward, directions 2/3 the same orders backwards
(models/orders.py maps; the official flip -> scan -> flip back and transpose -> merge exactly), each
reading the row-major tokens through its order, the four outputs summed in the op, so no flip,
transpose or merge copy appears in the graph. ``x_proj_weight[k]`` and ``dt_projs_weight[k]`` are
applied as ``F.linear`` on the row-major token-major (batch, L, C) view (per-token maps: the order
does not matter to them). Forward has no data-dependent control flow: ``torch.fx.symbolic_trace``
captures it with one scan node per block.

Importing this module registers the variants PTQ4VM quantizes with timm under their official
names (``timm.create_model("vmamba_tiny_s1l8")``); keyword arguments override the configuration.
It also registers the ``vmamba`` model family (:data:`FAMILY`): VSSBlock is the JLSS unit, PTQ4VM's
VMamba alpha 0.65, and :func:`canonicalize` puts each captured block in the passes' form (grouped
x_proj / dt_proj weights as per-direction ``nn.Linear`` modules ``op.x_proj_<k>`` / ``op.dt_proj_<k>``,
the Linear2d projections as token-major ``nn.Linear``). A quantized VSSM runs at its ``imgsize``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_

from .. import ops  # noqa: F401  (registers torch.ops.ptq4vm)
from ..errors import InputError
from ..scan import channel_major
from .arguments import choice, no_checkpointing, positive_int, refuse_unknown, ssm_conv_size, stage_widths
from .canonical import plain_layer_norm, split_grouped_linears, token_major_linears
from .checkpoint import CheckedLoading
from .family import ModelFamily, constructor_keys, model_overrides, named_model, register_family, register_with_timm
from .orders import token_orders
from .vim import dt_bias_init, s4d_real_a_log

__all__ = ["VSSM", "VMAMBA_CONFIGS", "create_vmamba"]

K_GROUP = 4  # scan directions: row-major, column-major, and both reversed
CROSS_SCAN = (("h", 0, False), ("v", 0, False), ("h", 0, True), ("v", 0, True))  # models/orders.py directions
_ACT_LAYERS = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}
_CROSS_SCAN_TYPES = ("v05", "v04", "v3")
FORWARD_TYPES = tuple(f"{base}{suffix}" for base in _CROSS_SCAN_TYPES for suffix in ("_noz", ""))


def check_image_batch(x: torch.Tensor, in_chans: int, patch: int = 1) -> torch.Tensor:
    """Raise InputError unless ``x`` is a (batch, in_chans, H, W) image batch with H, W >= ``patch`` (the
    side a patch-embedding conv needs); returns ``x``."""
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise InputError(f"expected an image batch of shape (batch, {in_chans}, H, W), got {tuple(x.shape)}")
    if x.shape[2] < patch or x.shape[3] < patch:
        raise InputError(f"input image size {x.shape[2]}x{x.shape[3]} is smaller than the model's {patch}x{patch} "
                         "patches")
    return x


torch.fx.wrap("check_image_batch")
torch.fx.wrap("token_orders")  # the order maps: one opaque call in a traced graph, built once per size


class Linear2d(nn.Module):
    """A linear map over the channels of a (batch, in_features, H, W) map -> (batch, out_features, H, W).

    ``weight`` is (out_features, in_features), as nn.Linear (and the official Linear2d) store it;
    computed as a 1x1 conv. A checkpoint's (out_features, in_features, 1, 1) weight (the official
    code's nn.Conv2d 1x1 before March 2024) loads too, as the official Linear2d allows. Deliberately
    not an nn.Linear subclass: its input is channel-first, so code written for (batch, tokens,
    features) linears must not take it for one."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.register_parameter("bias", nn.Parameter(torch.zeros(out_features)) if bias else None)
        trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)

    def alternative_shapes(self) -> dict[str, tuple[int, ...]]:
        """The weight shape a checkpoint may hold besides (out, in) (checkpoint.check_state_dict)."""
        return {"weight": (*self.weight.shape, 1, 1)}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        weight = state_dict.get(prefix + "weight")
        if weight is not None and tuple(weight.shape) == (*self.weight.shape, 1, 1):
            state_dict[prefix + "weight"] = weight.flatten(1)  # state_dict: load_state_dict's own copy
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (batch, C, H, W) map; parameters ``weight``, ``bias`` (C,)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class SS2D(nn.Module):
    """2D selective scan mixer: (batch, d_model, H, W) -> (batch, d_model, H, W).

    Parameters (K = 4 directions, D = d_inner, R = dt_rank, N = d_state): ``in_proj`` (D or 2D, d_model),
    depthwise ``conv2d`` (D, 1, d_conv, d_conv), ``x_proj_weight`` (K, R + 2N, D), ``dt_projs_weight``
    (K, D, R), ``dt_projs_bias`` (K, D), ``A_logs`` (K D, N), ``Ds`` (K D), ``out_norm`` (D),
    ``out_proj`` (d_model, D). ``forward_type`` ending in ``_noz`` drops the SiLU gate z."""

    def __init__(
        self,
        d_model: int,
        d_state: int,
        ssm_ratio: float,
        dt_rank,
        act_layer: type[nn.Module],
        d_conv: int,
        conv_bias: bool,
        dropout: float,
        forward_type: str,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
    ):
        super().__init__()
        self.d_model, self.d_state = int(d_model), int(d_state)
        self.d_inner = int(ssm_ratio * d_model)
        self.dt_rank = int(math.ceil(self.d_model / 16) if dt_rank == "auto" else dt_rank)
        self.disable_z = forward_type.endswith("_noz")
        D, N, R = self.d_inner, self.d_state, self.dt_rank
        self.out_norm = LayerNorm2d(D)
        self.in_proj = Linear2d(self.d_model, D if self.disable_z else 2 * D, bias=False)
        self.act = act_layer()
        self.conv2d = (
            nn.Conv2d(D, D, kernel_size=d_conv, padding=(d_conv - 1) // 2, groups=D, bias=conv_bias)
            if d_conv > 1 else nn.Identity()
        )  # fmt: skip
        bound = D**-0.5  # nn.Linear's default init for each direction's x_proj
        self.x_proj_weight = nn.Parameter(torch.empty(K_GROUP, R + 2 * N, D).uniform_(-bound, bound))
        self.out_proj = Linear2d(D, self.d_model, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Mamba's S4D-real A, unit D and dt init (softplus(dt_projs_bias) log-uniform in [dt_min, dt_max])
        self.A_logs = nn.Parameter(s4d_real_a_log(K_GROUP * D, N))
        self.Ds = nn.Parameter(torch.ones(K_GROUP * D))
        self.dt_projs_weight = nn.Parameter(torch.empty(K_GROUP, D, R).uniform_(-(R**-0.5), R**-0.5))
        self.dt_projs_bias = nn.Parameter(dt_bias_init((K_GROUP, D), dt_min, dt_max, dt_init_floor))

    def cross_scan(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, D, H, W) -> the sum of the 4 directions' outputs, (batch, D, H, W): one
        ``ptq4vm::ordered_scan`` reading the row-major tokens through each direction's order (no transposed
        or flipped copy). x_proj_k and dt_proj_k are per-token maps, so they run on the row-major tokens for
        every direction."""
        height, width = x.shape[2], x.shape[3]
        N, R, D = self.d_state, self.dt_rank, self.d_inner
        u = x.flatten(2)  # (batch, D, H W): token h W + w
        deltas, Bs, Cs = [], [], []
        for k in range(K_GROUP):
            x_dbl = F.linear(u.transpose(1, 2), self.x_proj_weight[k])  # (batch, L, R + 2N)
            deltas.append(F.linear(x_dbl[..., :R], self.dt_projs_weight[k]).transpose(1, 2))  # (batch, D, L)
            Bs.append(x_dbl[..., R : R + N].transpose(1, 2))  # (batch, N, L)
            Cs.append(x_dbl[..., R + N :].transpose(1, 2))
        A = channel_major(-torch.exp(self.A_logs.view(K_GROUP, D, N).float()))  # (K, D, N)
        y = torch.ops.ptq4vm.ordered_scan(u, deltas, A, Bs, Cs, self.Ds.view(K_GROUP, D).float(), None,
                                          self.dt_projs_bias.float(), token_orders(x, CROSS_SCAN), None, True)
        return y.unflatten(2, (height, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_proj(x)
        if not self.disable_z:
            x, z = x.chunk(2, dim=1)
            z = self.act(z)
        x = self.act(self.conv2d(x))
        y = self.out_norm(self.cross_scan(x)).to(x.dtype)
        if not self.disable_z:
            y = y * z
        return self.dropout(self.out_proj(y))


class Mlp(nn.Module):
    """fc1 -> act -> fc2 on a (batch, C, H, W) map; ``gated`` (the official gMlp): fc1 gives 2 hidden
    halves x, z and fc2 sees x * act(z)."""

    def __init__(
        self, in_features: int, hidden_features: int, act_layer: type[nn.Module], drop: float, gated: bool = False
    ):
        super().__init__()
        self.gated = gated
        self.fc1 = Linear2d(in_features, 2 * hidden_features if gated else hidden_features)
        self.act = act_layer()
        self.fc2 = Linear2d(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        if self.gated:
            x, z = x.chunk(2, dim=1)
            return self.drop(self.fc2(x * self.act(z)))
        return self.drop(self.fc2(self.drop(self.act(x))))


class VSSBlock(nn.Module):
    """x + drop_path(op(norm(x))), then x + drop_path(mlp(norm2(x))); (batch, C, H, W) in and out.
    A branch whose ratio is 0 is left out, as in the official block."""

    def __init__(
        self,
        hidden_dim: int,
        drop_path: float,
        ssm_d_state: int,
        ssm_ratio: float,
        ssm_dt_rank,
        ssm_act_layer: type[nn.Module],
        ssm_conv: int,
        ssm_conv_bias: bool,
        ssm_drop_rate: float,
        forward_type: str,
        mlp_ratio: float,
        mlp_act_layer: type[nn.Module],
        mlp_drop_rate: float,
        gmlp: bool,
    ):
        super().__init__()
        self.ssm_branch, self.mlp_branch = ssm_ratio > 0, mlp_ratio > 0
        if self.ssm_branch:
            self.norm = LayerNorm2d(hidden_dim)
            self.op = SS2D(
                hidden_dim,
                ssm_d_state,
                ssm_ratio,
                ssm_dt_rank,
                ssm_act_layer,
                ssm_conv,
                ssm_conv_bias,
                ssm_drop_rate,
                forward_type,
            )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if self.mlp_branch:
            self.norm2 = LayerNorm2d(hidden_dim)
            self.mlp = Mlp(hidden_dim, int(hidden_dim * mlp_ratio), mlp_act_layer, mlp_drop_rate, gated=gmlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ssm_branch:
            x = x + self.drop_path(self.op(self.norm(x)))
        if self.mlp_branch:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class VSSM(CheckedLoading, nn.Module):
    """VMamba classifier: (batch, in_chans, H, W) -> logits (batch, num_classes), any H and W.

    The keyword arguments are the official ``VSSM``'s (see the module docstring for what is
    supported). ``ssm_rank_ratio`` is accepted because the official ``build_vssm_model`` passes it;
    the official model ignores it, and so does this one. ``config`` holds the constructor
    arguments, so the model can be rebuilt from it. ``load_state_dict(strict=True)`` refuses a key or
    shape mismatch with an InputError."""

    def __init__(
        self,
        patch_size=4,
        in_chans=3,
        num_classes=1000,
        depths=(2, 2, 9, 2),
        dims=(96, 192, 384, 768),
        ssm_d_state=16,
        ssm_ratio=2.0,
        ssm_rank_ratio=2.0,
        ssm_dt_rank="auto",
        ssm_act_layer="silu",
        ssm_conv=3,
        ssm_conv_bias=True,
        ssm_drop_rate=0.0,
        ssm_init="v0",
        forward_type="v2",
        mlp_ratio=4.0,
        mlp_act_layer="gelu",
        mlp_drop_rate=0.0,
        gmlp=False,
        drop_path_rate=0.1,
        patch_norm=True,
        norm_layer="ln2d",
        downsample_version="v2",
        patchembed_version="v1",
        use_checkpoint=False,
        posembed=False,
        imgsize=224,
        **kwargs,
    ):
        super().__init__()
        name = "VSSM"
        refuse_unknown(name, kwargs)
        depths, dims = stage_widths(name, depths, dims)
        positive_int(name, "ssm_d_state", ssm_d_state)
        if ssm_dt_rank != "auto":
            positive_int(name, "ssm_dt_rank", ssm_dt_rank)
        ssm_conv_size(name, ssm_conv)
        choice(name, "norm_layer", norm_layer, ("ln2d",), lower=True)
        choice(name, "ssm_init", ssm_init, ("v0",))
        choice(name, "forward_type", forward_type, FORWARD_TYPES)
        choice(name, "downsample_version", downsample_version, ("v2", "v3"))
        choice(name, "patchembed_version", patchembed_version, ("v1", "v2"))
        if patchembed_version == "v2" and (patch_size < 2 or patch_size % 2):
            raise InputError(
                f"VSSM: patch_size={patch_size!r} is not supported by patch embed v2: expected an even size >= 2"
            )
        no_checkpointing(name, use_checkpoint)
        ssm_act = _ACT_LAYERS[choice(name, "ssm_act_layer", ssm_act_layer, tuple(_ACT_LAYERS), lower=True)]
        mlp_act = _ACT_LAYERS[choice(name, "mlp_act_layer", mlp_act_layer, tuple(_ACT_LAYERS), lower=True)]
        self.config = dict(
            patch_size=patch_size, in_chans=in_chans, num_classes=num_classes, depths=depths, dims=dims,
            ssm_d_state=ssm_d_state, ssm_ratio=ssm_ratio, ssm_rank_ratio=ssm_rank_ratio, ssm_dt_rank=ssm_dt_rank,
            ssm_act_layer=ssm_act_layer, ssm_conv=ssm_conv, ssm_conv_bias=ssm_conv_bias,
            ssm_drop_rate=ssm_drop_rate, ssm_init=ssm_init, forward_type=forward_type, mlp_ratio=mlp_ratio,
            mlp_act_layer=mlp_act_layer, mlp_drop_rate=mlp_drop_rate, gmlp=gmlp, drop_path_rate=drop_path_rate,
            patch_norm=patch_norm, norm_layer=norm_layer, downsample_version=downsample_version,
            patchembed_version=patchembed_version, use_checkpoint=use_checkpoint, posembed=posembed,
            imgsize=imgsize,
        )  # fmt: skip
        self.channel_first = True
        self.min_image_side = patch_size if patchembed_version == "v1" else 1  # v2's padded convs take any side
        self.in_chans, self.num_classes = in_chans, num_classes
        self.num_layers = len(depths)
        self.dims, self.num_features = dims, dims[-1]
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # also under a meta device

        self.pos_embed = None
        if posembed:
            grid = imgsize // patch_size
            self.pos_embed = nn.Parameter(trunc_normal_(torch.zeros(1, dims[0], grid, grid), std=0.02))
        self.patch_embed = self._patch_embed(patchembed_version, in_chans, dims[0], patch_size, patch_norm)
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            blocks = [
                VSSBlock(dims[i], dpr[start + j], ssm_d_state, ssm_ratio, ssm_dt_rank, ssm_act, ssm_conv,
                         ssm_conv_bias, ssm_drop_rate, forward_type, mlp_ratio, mlp_act, mlp_drop_rate, gmlp)
                for j in range(depth)
            ]  # fmt: skip
            last = i == len(depths) - 1
            downsample = nn.Identity() if last else self._downsample(downsample_version, dims[i], dims[i + 1])
            self.layers.append(nn.Sequential(OrderedDict(blocks=nn.Sequential(*blocks), downsample=downsample)))
        head = nn.Linear(self.num_features, num_classes)
        trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
        self.classifier = nn.Sequential(OrderedDict(
            norm=LayerNorm2d(self.num_features),
            permute=nn.Identity(),  # the official channel-last permute's slot
            avgpool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1),
            head=head,
        ))  # fmt: skip

    @staticmethod
    def _patch_embed(version: str, in_chans: int, dim: int, patch_size: int, patch_norm: bool) -> nn.Sequential:
        """Stride-``patch_size`` stem; the Identity slots keep the official Sequential indices."""
        if version == "v1":
            return nn.Sequential(
                nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size),
                nn.Identity(),
                LayerNorm2d(dim) if patch_norm else nn.Identity(),
            )
        stride = patch_size // 2  # two stride-(p/2) 3x3-style convs
        return nn.Sequential(
            nn.Conv2d(in_chans, dim // 2, kernel_size=stride + 1, stride=stride, padding=1),
            nn.Identity(),
            LayerNorm2d(dim // 2) if patch_norm else nn.Identity(),
            nn.Identity(),
            nn.GELU(),
            nn.Conv2d(dim // 2, dim, kernel_size=stride + 1, stride=stride, padding=1),
            nn.Identity(),
            LayerNorm2d(dim) if patch_norm else nn.Identity(),
        )

    @staticmethod
    def _downsample(version: str, dim: int, out_dim: int) -> nn.Sequential:
        """Stride-2 conv (v2: 2x2, v3: 3x3 padded) then LayerNorm2d, at the official indices 1 and 3."""
        conv = (
            nn.Conv2d(dim, out_dim, kernel_size=2, stride=2)
            if version == "v2" else nn.Conv2d(dim, out_dim, kernel_size=3, stride=2, padding=1)
        )  # fmt: skip
        return nn.Sequential(nn.Identity(), conv, nn.Identity(), LayerNorm2d(out_dim))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, in_chans, H, W) -> the last stage's map (batch, num_features, H', W')."""
        x = self.patch_embed(check_image_batch(x, self.in_chans, self.min_image_side))
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for layer in self.layers:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


# -------------------------------------------------------------------------------------------------
# named variants: the official registrations in classification/models/vmamba.py (= configs/vssm/*.yaml)
# -------------------------------------------------------------------------------------------------

_RELEASED = dict(
    patch_size=4, in_chans=3, num_classes=1000, ssm_d_state=1, ssm_dt_rank="auto", ssm_act_layer="silu",
    ssm_conv=3, ssm_conv_bias=False, ssm_drop_rate=0.0, ssm_init="v0", forward_type="v05_noz", mlp_ratio=4.0,
    mlp_act_layer="gelu", mlp_drop_rate=0.0, gmlp=False, patch_norm=True, norm_layer="ln2d",
    downsample_version="v3", patchembed_version="v2", use_checkpoint=False, posembed=False, imgsize=224,
)  # fmt: skip
VMAMBA_CONFIGS = {
    "vmamba_tiny_s1l8": dict(_RELEASED, depths=[2, 2, 8, 2], dims=96, ssm_ratio=1.0, drop_path_rate=0.2),
    "vmamba_small_s1l20": dict(_RELEASED, depths=[2, 2, 20, 2], dims=96, ssm_ratio=1.0, drop_path_rate=0.3),
    "vmamba_base_s1l20": dict(_RELEASED, depths=[2, 2, 20, 2], dims=128, ssm_ratio=1.0, drop_path_rate=0.5),
    "vmamba_small_s2l15": dict(_RELEASED, depths=[2, 2, 15, 2], dims=96, ssm_ratio=2.0, drop_path_rate=0.3),
    "vmamba_base_s2l15": dict(_RELEASED, depths=[2, 2, 15, 2], dims=128, ssm_ratio=2.0, drop_path_rate=0.6),
}
# the small model bundled with the package, trained on scikit-learn's 8x8 digits (scripts/train_digits.py):
# 1-pixel patches, so stage 1 scans an 8x8 map (64 tokens) and stage 2 a 4x4 one
BUNDLED_CONFIGS = {
    "vmamba_digits": dict(_RELEASED, patch_size=1, in_chans=1, num_classes=10, depths=[2, 2], dims=[24, 48],
                          ssm_d_state=4, ssm_ratio=2.0, mlp_ratio=2.0, patchembed_version="v1", imgsize=8,
                          drop_path_rate=0.0),
}  # fmt: skip
def create_vmamba(name: str, pretrained: bool = False, channel_first: bool = True, **overrides) -> VSSM:
    """Build a named VMamba; ``overrides`` are VSSM keyword arguments. ``channel_first`` is the official
    builders' argument (False selects ``norm_layer="ln"``, which is refused)."""
    overrides = model_overrides(name, model_names(), pretrained, overrides)
    config = dict({**VMAMBA_CONFIGS, **BUNDLED_CONFIGS}[name], norm_layer="ln2d" if channel_first else "ln")
    config.update(overrides)
    return named_model(VSSM(**config), name, (config["in_chans"], config["imgsize"], config["imgsize"]))


for _name in [*VMAMBA_CONFIGS, *BUNDLED_CONFIGS]:
    register_with_timm(_name, create_vmamba,
                       f"VMamba {_name!r} (MzeroMiko/VMamba); keyword arguments override its configuration.")


# -------------------------------------------------------------------------------------------------
# the model family (models/family.py)
# -------------------------------------------------------------------------------------------------


def model_names() -> list[str]:
    return sorted(VMAMBA_CONFIGS) + sorted(BUNDLED_CONFIGS)


def canonicalize(block: torch.fx.GraphModule) -> None:
    """A captured VSSBlock graph in the passes' form (docs/design.md section 11), in place: each direction's
    ``F.linear(·, x_proj_weight[k])`` / ``F.linear(·, dt_projs_weight[k])`` becomes a call of the bias-free
    ``nn.Linear`` ``op.x_proj_<k>`` / ``op.dt_proj_<k>`` (dt_proj's input stays the column slice
    ``x_dbl[..., :R]`` of x_proj's output, so its 1/m folds into x_proj's rows), and each Linear2d
    (in_proj, out_proj, fc1, fc2) an ``nn.Linear`` on (batch, H W, C) tokens, with the LayerNorm2d
    before it (norm, norm2, out_norm through its cast) run on tokens as an ``nn.LayerNorm`` that can
    absorb its 1/m; fc1 -> act -> fc2 stays on tokens."""
    split_grouped_linears(block, "x_proj_weight", "x_proj")
    split_grouped_linears(block, "dt_projs_weight", "dt_proj")
    targets = [n.target for n in block.graph.nodes
               if n.op == "call_module" and isinstance(block.get_submodule(n.target), Linear2d)]  # fmt: skip
    token_major_linears(block, targets, channel_first=True,
                        token_norm=lambda m: plain_layer_norm(m) if isinstance(m, LayerNorm2d) else None)


FAMILY = register_family(ModelFamily(
    name="vmamba",
    model_class=VSSM,
    model_names=model_names,
    create=create_vmamba,
    config_keys=lambda: constructor_keys(VSSM),
    block_classes=(VSSBlock,),
    leaf_classes=(Linear2d, LayerNorm2d),
    fold_norms=(nn.LayerNorm,),
    linears=("in_proj", "out_proj", "fc1", "fc2", "x_proj_[0-9]*", "dt_proj_[0-9]*"),  # per direction
    alpha=0.65,  # PTQ4VM's VMamba code
    scan_orders=("row-major tokens (direction 0)", "column-major tokens (1)", "row-major reversed (2)",
                 "column-major reversed (3); one ordered scan sums the four"),
    image_size=lambda model: (model.config["imgsize"], model.config["imgsize"]),
    channel_dim=1,  # blocks map (batch, C, H, W) -> (batch, C, H, W)
    canonicalize=canonicalize,
    # the official PTQ4VM code's VMamba command (VMamba/README.md, "JLSS"): --epochs 50 --train-batch 32
    # --lr-w 1e-4 --lr-a 1e-4 --lr-s 1e-4
    official_jlss={"jlss_epochs": 50, "jlss_batch_size": 32, "jlss_lr": (1e-4, 1e-4, 1e-4)},
))  # fmt: skip
