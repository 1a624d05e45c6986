"""Post-training vector quantization of linear weights (ViM-VQ, Deng et al., arXiv 2503.09509).

Weights only. A layer's weight W (O, C) is cut into O * C/d sub-vectors of length d along the
input dimension (row o, group g -> W[o, g*d:(g+1)*d]); one k-entry codebook per layer is fitted by
k-means (k-means++ seeding from a seeded generator, then Lloyd). Nominal bits per weight: log2(k)/d
(k=64, d=2: 3; k=256, d=4: 2; k=256, d=8: 1); the stored size adds the fp16 codebook
(``VQLinear.storage_bits``).

Calibration (:func:`calibrate_block`), block by block against the float block's outputs:

* Convex combination: each sub-vector keeps its n nearest codewords (``n_candidates``, 4) and n
  logits; its reconstruction is the softmax(logits)-weighted combination of those codewords (memory
  grows with n, not k). The logits start as -log(distance) (weights inversely proportional to the
  distance to each candidate). Learnable: logits, codebook, bias (Adam).
* Fast hull update: every ``hull_every`` steps each still-soft sub-vector's candidates become the n
  codewords nearest to its current soft reconstruction; a candidate that stays keeps its weight, the
  weight of those dropped goes to the newcomers in inverse proportion to their distance (and their
  Adam moments restart from zero).
* Incremental VQ (``incremental``): every ``confirm_every`` steps sub-vectors whose largest softmax
  weight reaches ``confirm_threshold`` are confirmed (frozen to that codeword), and the most
  confident of the rest too until the confirmed share reaches the schedule's (linear from 0 to 1
  over ``steps``). The still-soft ones keep learning and absorb the error. Without it (the
  ablation's convex-combination step) every sub-vector stays soft for all ``steps`` and is hardened
  to its most weighted candidate at the end. Then all codes are hard and ``codebook_steps`` train
  the codebook and bias alone.

The codebook is used rounded to fp16 throughout (straight-through gradient), so the final
reconstruction is exactly the packed module's decoded weight. Loss: ``"mse"``, the mean squared
error of each block output divided by the output's mean square over the calibration set (summed
over the block's outputs), or ``"cosine"``, 1 - cosine similarity over the last dimension, averaged
over the other dimensions.

Baselines: :func:`plain_vq_linear` (the k-means codebook, nearest codeword, no optimization) and
:func:`rtn_weight` (uniform, symmetric, per output channel, round to nearest).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from .vq_linear import VQLinear

PRESETS = {"w3a16": (64, 2), "w2a16": (256, 4), "w1a16": (256, 8)}
LOSSES = ("mse", "cosine")


@dataclass(frozen=True)
class VQConfig:
    """Vector quantization and its calibration. ``k`` codewords of length ``d`` per layer; the
    learning rates are Adam's: ``lr`` for the candidate logits, ``codebook_lr`` for codebook and
    bias, relative to the layer's weight RMS (the step is ``codebook_lr * rms(W)``)."""

    k: int
    d: int
    n_candidates: int = 4
    steps: int = 500
    codebook_steps: int = 100
    lr: float = 5e-2
    codebook_lr: float = 1e-3
    hull_every: int = 50
    confirm_every: int = 10
    confirm_threshold: float = 0.99
    incremental: bool = True
    batch_size: int = 32
    loss: str = "mse"
    kmeans_iters: int = 50
    seed: int = 0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = {"int": int, "float": (int, float), "str": str, "bool": bool}[f.type]
            if isinstance(value, bool) != (f.type == "bool") or not isinstance(value, expected):
                raise InputError(f"VQConfig.{f.name} must be {f.type}, got {value!r}")
        if self.k < 2 or self.k & (self.k - 1):
            raise InputError(f"VQConfig.k must be a power of two >= 2 (a code is log2 k bits), got {self.k}")
        if self.k > 256:
            raise InputError(f"VQConfig.k must be at most 256 (codes are stored in uint8), got {self.k}")
        if self.d < 1:
            raise InputError(f"VQConfig.d must be >= 1, got {self.d}")
        if not 1 <= self.n_candidates <= self.k:
            raise InputError(f"VQConfig.n_candidates must be in [1, k={self.k}], got {self.n_candidates}")
        for name in ("steps", "codebook_steps", "kmeans_iters"):
            if getattr(self, name) < 0:
                raise InputError(f"VQConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("hull_every", "confirm_every", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"VQConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or not self.codebook_lr >= 0:
            raise InputError(f"VQConfig: lr must be > 0 and codebook_lr >= 0, got {self.lr} and {self.codebook_lr}")
        if not 1 / self.n_candidates < self.confirm_threshold <= 1:
            raise InputError(f"VQConfig.confirm_threshold must be in (1/n_candidates, 1] = "
                             f"({1 / self.n_candidates:.3g}, 1] (lower confirms every sub-vector at once), "
                             f"got {self.confirm_threshold}")
        if self.loss not in LOSSES:
            raise InputError(f"VQConfig.loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")

    @property
    def bits(self) -> float:
        """Nominal bits per weight, log2(k) / d (codebook not counted)."""
        return math.log2(self.k) / self.d

    @classmethod
    def preset(cls, name: str, **overrides) -> VQConfig:
        """``w3a16`` (k=64, d=2), ``w2a16`` (k=256, d=4) or ``w1a16`` (k=256, d=8), fields overridable."""
        if name not in PRESETS:
            raise InputError(f"unknown VQ preset {name!r}; known: {', '.join(PRESETS)}")
        k, d = PRESETS[name]
        return cls(**{"k": k, "d": d, **overrides})

    @classmethod
    def from_bits(cls, bits: float, d: int, **overrides) -> VQConfig:
        """The config of ``bits`` nominal bits per weight with codewords of length d: k = 2^(bits * d)."""
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise InputError(f"d must be an int >= 1, got {d!r}")
        code = bits * d
        if code != round(code) or not 1 <= code <= 8:
            raise InputError(f"{bits} bits per weight with d={d} needs {code:g}-bit codes (k = 2^{code:g}): "
                             "a whole number of bits from 1 to 8 (k from 2 to 256) is needed")
        return cls(**{"k": 1 << round(code), "d": d, **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> VQConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"VQConfig: unknown field(s) {', '.join(unknown)}")
        missing = [n for n in ("k", "d") if n not in data]
        if missing:
            raise InputError(f"VQConfig: missing field(s) {', '.join(missing)}")
        return cls(**data)

    def check_layer(self, name: str, out_features: int, in_features: int) -> None:
        """Refuse a layer this config cannot quantize (InputError naming it)."""
        if in_features % self.d:
            raise InputError(f"layer {name}: in_features={in_features} is not divisible by the codeword length "
                             f"d={self.d} (weight {out_features}x{in_features})")
        subvectors = out_features * in_features // self.d
        if subvectors < self.k:
            raise InputError(f"layer {name}: {subvectors} sub-vectors of length {self.d} (weight "
                             f"{out_features}x{in_features}) are fewer than the k={self.k} codewords")


# --------------------------------------------------------------------------------------------
# k-means
# --------------------------------------------------------------------------------------------


def nearest_codewords(vectors: Tensor, codebook: Tensor, n: int = 1) -> tuple[Tensor, Tensor]:
    """vectors (N, d), codebook (k, d) fp32 -> (squared distances (N, n) fp32, indices (N, n) int64)
    of the n nearest codewords, nearest first. Distances as |x|^2 - 2 x.c + |c|^2 (one GEMM; exact
    ties aside, rounding can only swap codewords within ~1e-7 of |x|^2 of each other), chunked to
    at most 2^22 at a time."""
    k = codebook.shape[0]
    c2 = codebook.pow(2).sum(1)
    dists, idxs = [], []
    for part in vectors.split(max(1, (1 << 22) // k)):
        d2 = torch.addmm(c2[None], part, codebook.t(), alpha=-2.0).add_(part.pow(2).sum(1, keepdim=True))
        dist, idx = d2.clamp_(min=0.0).topk(n, dim=1, largest=False)
        dists.append(dist)
        idxs.append(idx)
    return torch.cat(dists), torch.cat(idxs)


def kmeans_pp_init(vectors: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding: vectors (N, d) fp32 -> codebook (k, d). ``generator`` is a CPU generator
    (one uniform draw per codeword, so the result does not depend on the vectors' device's RNG)."""
    n = vectors.shape[0]
    first = int(torch.randint(n, (), generator=generator))
    centers = [vectors[first]]
    min_d2 = (vectors - vectors[first]).pow(2).sum(1)
    for _ in range(1, k):
        cdf = min_d2.double().cumsum(0)
        u = float(torch.rand((), generator=generator, dtype=torch.float64)) * float(cdf[-1])
        idx = min(int(torch.searchsorted(cdf, torch.tensor([u], dtype=torch.float64, device=cdf.device),
                                         right=True)), n - 1)
        centers.append(vectors[idx])
        min_d2 = torch.minimum(min_d2, (vectors - vectors[idx]).pow(2).sum(1))
    return torch.stack(centers)


def kmeans(vectors: Tensor, k: int, iters: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """k-means++ seeding, then up to ``iters`` Lloyd steps (stopping when no assignment changes).
    An empty cluster takes the vector farthest from its codeword. vectors (N, d) -> (codebook (k, d)
    fp32, codes (N,) int64: the nearest codeword of each vector under the returned codebook)."""
    codebook = kmeans_pp_init(vectors, k, generator)
    codes = None
    for _ in range(iters):
        dist, new_codes = (t[:, 0] for t in nearest_codewords(vectors, codebook))
        if codes is not None and torch.equal(new_codes, codes):
            break
        codes = new_codes
        counts = torch.bincount(codes, minlength=k)
        sums = torch.zeros_like(codebook).index_add_(0, codes, vectors)
        codebook = sums / counts.clamp(min=1)[:, None].to(sums.dtype)
        empty = (counts == 0).nonzero().squeeze(1)
        if empty.numel():
            codebook[empty] = vectors[dist.topk(empty.numel()).indices]
    return codebook, nearest_codewords(vectors, codebook)[1][:, 0]


def _fp16(t: Tensor) -> Tensor:
    """``t`` rounded to fp16 values (fp32), the gradient passed straight through."""
    return t.detach().half().float() + (t - t.detach())


def _layer_codebook(weight: Tensor, config: VQConfig, name: str) -> tuple[Tensor, Tensor]:
    """weight (O, C) -> (sub-vectors (O*C/d, d) fp32, its k-means codebook (k, d) rounded to fp16 values)."""
    config.check_layer(name, *weight.shape)
    sub = weight.detach().float().reshape(-1, config.d)
    generator = torch.Generator().manual_seed(config.seed)
    codebook, _ = kmeans(sub, config.k, config.kmeans_iters, generator)
    return sub, codebook.half().float()


# --------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------


def plain_vq_linear(linear: nn.Linear, config: VQConfig, name: str = "linear") -> VQLinear:
    """Plain VQ: the k-means codebook and each sub-vector's nearest codeword, no optimization."""
    sub, codebook = _layer_codebook(linear.weight, config, name)
    codes = nearest_codewords(sub, codebook)[1][:, 0]
    bias = None if linear.bias is None else linear.bias.detach().float()
    return VQLinear.from_codes(codes.reshape(linear.out_features, -1), codebook, bias)


def rtn_weight(weight: Tensor, bits: int) -> Tensor:
    """Uniform symmetric per-output-channel round-to-nearest of weight (O, C) at ``bits`` bits,
    returned dequantized (fp32). bits >= 2: docs/design.md's grid, step absmax / (2^(b-1) - 1), codes
    clamped to +-(2^(b-1) - 1); bits = 1: sign(w) times the row's mean |w| (the L2-optimal scale of
    the only symmetric 1-bit grid, {-s, +s})."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise InputError(f"rtn_weight: bits must be an int in [1, 8], got {bits!r}")
    w = weight.detach().float()
    if bits == 1:
        return torch.where(w >= 0, 1.0, -1.0) * w.abs().mean(1, keepdim=True)
    qmax = 2 ** (bits - 1) - 1
    scale = (w.abs().amax(1, keepdim=True) / qmax).clamp(min=torch.finfo(torch.float32).tiny)
    return torch.clamp(torch.round(w / scale), -qmax, qmax) * scale


# --------------------------------------------------------------------------------------------
# The calibration form of a VQ linear
# --------------------------------------------------------------------------------------------


class VQLinearTrainable(nn.Module):
    """Replaces an nn.Linear during calibration: x (…, C) -> F.linear(x, reconstruct(), bias) (…, O).

    Parameters: ``codebook`` (k, d) fp32 (used rounded to fp16), ``logits`` (S, n) fp32 of each
    sub-vector's candidates, ``bias`` (O,) fp32 or None. Buffers: ``candidates`` (S, n) int64
    codeword indices, nearest first at init; ``hard`` (S,) bool, confirmed; ``hard_codes`` (S,)
    int64, the codeword of a confirmed sub-vector. S = O * C / d, sub-vector s = o * C/d + g.
    """

    def __init__(self, linear: nn.Linear, config: VQConfig, name: str = "linear"):
        super().__init__()
        self.name, self.config = name, config
        self.out_features, self.in_features = linear.out_features, linear.in_features
        sub, codebook = _layer_codebook(linear.weight, config, name)
        self.weight_rms = float(sub.pow(2).mean().sqrt())
        self.codebook = nn.Parameter(codebook)
        d2, candidates = nearest_codewords(sub, codebook, config.n_candidates)
        self.register_buffer("candidates", candidates)
        self.logits = nn.Parameter(-0.5 * torch.log(d2 + 1e-8 * d2.mean() + torch.finfo(torch.float32).tiny))
        self.register_buffer("hard", torch.zeros(sub.shape[0], dtype=torch.bool, device=sub.device))
        self.register_buffer("hard_codes", torch.zeros(sub.shape[0], dtype=torch.long, device=sub.device))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float().clone())

    def reconstruct(self) -> Tensor:
        """(O, C) fp32: confirmed sub-vectors their codeword, the others their soft combination."""
        codebook = _fp16(self.codebook)
        hard = codebook[self.hard_codes]
        if bool(self.hard.all()):
            return hard.reshape(self.out_features, self.in_features)
        weights = torch.softmax(self.logits, dim=1)
        soft = torch.einsum("sn,snd->sd", weights, codebook[self.candidates])
        return torch.where(self.hard[:, None], hard, soft).reshape(self.out_features, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.reconstruct().to(x.dtype), bias)

    @torch.no_grad()
    def confirm(self, threshold: float, fraction: float) -> tuple[int, int]:
        """Confirm the soft sub-vectors whose largest softmax weight is >= threshold, then the most
        confident others until at least ``fraction`` of all are confirmed. Returns the two counts."""
        confidence, top = torch.softmax(self.logits, dim=1).max(1)
        soft = ~self.hard
        new = soft & (confidence >= threshold)
        by_threshold = int(new.sum())
        need = math.ceil(fraction * self.hard.numel()) - int(self.hard.sum()) - by_threshold
        if need > 0:
            rest = confidence.masked_fill(~(soft & ~new), -1.0)
            new[rest.topk(need).indices] = True
        rows = new.nonzero().squeeze(1)
        self.hard_codes[rows] = self.candidates[rows, top[rows]]
        self.hard[rows] = True
        return by_threshold, max(need, 0)

    @torch.no_grad()
    def update_hull(self, moments: Sequence[Tensor] = ()) -> int:
        """Fast hull update of the soft sub-vectors (module docstring). ``moments``: optimizer state
        tensors shaped like ``logits`` (Adam's), remapped with the candidates. Returns how many
        sub-vectors changed candidates."""
        soft = (~self.hard).nonzero().squeeze(1)
        if soft.numel() == 0:
            return 0
        codebook = self.codebook.half().float()
        old = self.candidates[soft]
        p = torch.softmax(self.logits[soft], dim=1)
        recon = torch.einsum("sn,snd->sd", p, codebook[old])
        d2, new = nearest_codewords(recon, codebook, old.shape[1])
        match = new[:, :, None] == old[:, None, :]  # (s, n new, n old)
        stays = match.any(2)
        src = match.int().argmax(2)  # a staying candidate's old position
        p_new = torch.where(stays, p.gather(1, src), 0.0)
        inverse = torch.where(stays, 0.0, torch.rsqrt(d2 + 1e-8 * d2.mean() + torch.finfo(torch.float32).tiny))
        share = inverse / inverse.sum(1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
        p_new = p_new + share * (1.0 - p_new.sum(1, keepdim=True)).clamp(min=0.0)
        self.candidates[soft] = new
        self.logits[soft] = torch.log(p_new.clamp(min=1e-6))
        for moment in moments:
            moment[soft] = torch.where(stays, moment[soft].gather(1, src), 0.0)
        return int((~stays.all(1)).sum())

    def finalize(self) -> None:
        """Confirm every remaining sub-vector on its most weighted candidate."""
        self.confirm(1.0, 1.0)

    def codes(self) -> Tensor:
        """(O, C/d) int64 codes; every sub-vector must be confirmed."""
        if not bool(self.hard.all()):
            raise RuntimeError(f"{self.name}: {int((~self.hard).sum())} sub-vectors are not confirmed; call finalize()")
        return self.hard_codes.reshape(self.out_features, -1)

    def to_packed(self) -> VQLinear:
        """The runtime module: its decoded weight equals :meth:`reconstruct` exactly."""
        bias = None if self.bias is None else self.bias.detach()
        return VQLinear.from_codes(self.codes(), self.codebook.detach(), bias)

    def extra_repr(self) -> str:
        return (f"{self.in_features}->{self.out_features}, k={self.config.k}, d={self.config.d}, "
                f"n={self.config.n_candidates}, confirmed={int(self.hard.sum())}/{self.hard.numel()}")


# --------------------------------------------------------------------------------------------
# The block driver
# --------------------------------------------------------------------------------------------


@dataclass
class VQLayerReport:
    name: str
    out_features: int
    in_features: int
    nominal_bits: float
    storage_bits: float
    confirmed_by_threshold: int = 0
    confirmed_forced: int = 0
    hull_changes: int = 0


@dataclass
class VQBlockReport:
    """Losses (``VQConfig.loss``) over all calibration inputs at the soft start and at the end,
    the batch loss of every step, wall time, and per-layer figures."""

    loss_init: float
    loss_final: float
    step_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    layers: list[VQLayerReport] = field(default_factory=list)


def select_linears(block: nn.Module, name_filter: Callable[[str], bool] | None = None) -> dict[str, nn.Linear]:
    """The nn.Linear submodules of ``block`` (by qualified name) that ``name_filter`` accepts (all if None)."""
    return {name: m for name, m in block.named_modules()
            if isinstance(m, nn.Linear) and (name_filter is None or name_filter(name))}


def replace_modules(block: nn.Module, modules: dict[str, nn.Module]) -> None:
    """Set each qualified name's submodule of ``block`` to the given module."""
    for name, module in modules.items():
        parent, _, attr = name.rpartition(".")
        setattr(block.get_submodule(parent) if parent else block, attr, module)


def plain_vq_block(block: nn.Module, config: VQConfig, name_filter: Callable[[str], bool] | None = None,
                   block_name: str = "") -> dict[str, VQLinear]:
    """Baseline: the selected linears of ``block`` replaced (in place) by plain k-means VQ."""
    layers = {name: plain_vq_linear(m, config, _qualified(block_name, name))
              for name, m in select_linears(block, name_filter).items()}
    replace_modules(block, layers)
    return layers


def rtn_block(block: nn.Module, bits: int, name_filter: Callable[[str], bool] | None = None) -> list[str]:
    """Baseline: the selected linears' weights replaced (in place) by :func:`rtn_weight`; returns their names."""
    layers = select_linears(block, name_filter)
    with torch.no_grad():
        for m in layers.values():
            m.weight.copy_(rtn_weight(m.weight, bits))
    return list(layers)


def calibrate_block(block: nn.Module, float_block: nn.Module, inputs: Tensor | Sequence[Tensor], config: VQConfig,
                    *, float_inputs: Tensor | Sequence[Tensor] | None = None,
                    name_filter: Callable[[str], bool] | None = None, block_name: str = "",
                    pack: bool = True) -> VQBlockReport:
    """Vector-quantize the selected nn.Linear layers of ``block`` against ``float_block``'s outputs.

    ``inputs``: one tensor or a tuple of tensors (the block's positional arguments), samples along
    dim 0, fed to ``block``; ``float_inputs`` (default: ``inputs``) are fed to ``float_block`` for
    the targets, which are computed first (``float_block`` may be ``block`` itself). The block's
    outputs (a tensor or a tuple of tensors) must have the samples along dim 0. Every selected layer
    becomes a :class:`VQLinearTrainable` (all are built, so all are checked, before any is
    replaced); Adam trains logits, codebooks and biases, the block's other parameters stay frozen.
    With ``pack`` they end as :class:`VQLinear` modules, else as finalized trainables (all codes
    confirmed). ``block_name`` prefixes the layer names in messages and the report.
    """
    start = time.perf_counter()
    inputs = _as_tuple(inputs)
    float_inputs = inputs if float_inputs is None else _as_tuple(float_inputs)
    samples = _sample_count(inputs, float_inputs)
    with torch.no_grad():
        targets = _concat([_as_tuple(float_block(*batch)) for batch in _batches(float_inputs, config.batch_size)])
    scales = [t.float().pow(2).mean().clamp(min=torch.finfo(torch.float32).tiny) for t in targets]

    selected = select_linears(block, name_filter)
    if not selected:
        raise InputError(f"block {block_name or '(root)'}: no nn.Linear layer selected for vector quantization")
    layers = {name: VQLinearTrainable(m, config, _qualified(block_name, name)) for name, m in selected.items()}
    frozen = [p for p in block.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    replace_modules(block, layers)
    reports = {name: VQLayerReport(layer.name, layer.out_features, layer.in_features, 0.0, 0.0)
               for name, layer in layers.items()}

    def loss_of(batch_inputs, batch_targets):
        return _block_loss(_as_tuple(block(*batch_inputs)), batch_targets, scales, config.loss)

    groups = []
    for layer in layers.values():
        groups.append({"params": [layer.logits], "lr": config.lr})
        slow = [layer.codebook] + ([layer.bias] if layer.bias is not None else [])
        groups.append({"params": slow, "lr": config.codebook_lr * layer.weight_rms})
    optimizer = torch.optim.Adam(groups)
    loss_init = _full_loss(loss_of, inputs, targets, config.batch_size)
    order = _batch_indices(samples, config.batch_size, config.seed, inputs[0].device)
    step_losses = []

    def train_step():
        idx = next(order)
        loss = loss_of([t[idx] for t in inputs], [t[idx] for t in targets])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step_losses.append(float(loss.detach()))

    for step in range(1, config.steps + 1):  # soft codes (confirmed incrementally with ``incremental``)
        train_step()
        if step % config.hull_every == 0:
            for name, layer in layers.items():
                state = optimizer.state[layer.logits]
                moments = [state[key] for key in ("exp_avg", "exp_avg_sq") if key in state]
                reports[name].hull_changes += layer.update_hull(moments)
        if config.incremental and step % config.confirm_every == 0:
            for name, layer in layers.items():
                by_threshold, forced = layer.confirm(config.confirm_threshold, step / config.steps)
                reports[name].confirmed_by_threshold += by_threshold
                reports[name].confirmed_forced += forced
    for layer in layers.values():  # every code hard from here on: codebook and bias alone
        layer.finalize()
        layer.logits.requires_grad_(False)
    for _ in range(config.codebook_steps):
        train_step()
    loss_final = _full_loss(loss_of, inputs, targets, config.batch_size)

    packed = {name: layer.to_packed() for name, layer in layers.items()}
    for name, module in packed.items():
        reports[name].nominal_bits, reports[name].storage_bits = module.nominal_bits, module.storage_bits
    if pack:
        replace_modules(block, packed)
    for p in frozen:  # the block's other parameters (and the replaced linears') as they were
        p.requires_grad_(True)
    return VQBlockReport(loss_init, loss_final, step_losses, time.perf_counter() - start, list(reports.values()))


def _qualified(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _as_tuple(x) -> tuple[Tensor, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _sample_count(inputs: tuple[Tensor, ...], float_inputs: tuple[Tensor, ...]) -> int:
    counts = {t.shape[0] for t in (*inputs, *float_inputs)}
    if len(counts) != 1 or 0 in counts:
        raise InputError(f"calibrate_block: the input tensors must share a non-zero sample count along dim 0, "
                         f"got {sorted(counts)}")
    return counts.pop()


def _batches(inputs: tuple[Tensor, ...], batch_size: int) -> Iterator[list[Tensor]]:
    for lo in range(0, inputs[0].shape[0], batch_size):
        yield [t[lo:lo + batch_size] for t in inputs]


def _concat(outputs: list[tuple[Tensor, ...]]) -> list[Tensor]:
    return [torch.cat(parts) for parts in zip(*outputs)]


def _batch_indices(samples: int, batch_size: int, seed: int, device) -> Iterator[Tensor]:
    """Endless minibatches of sample indices: a seeded random permutation per epoch."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(samples, generator=generator)
        for lo in range(0, samples, batch_size):
            yield perm[lo:lo + batch_size].to(device)


def _block_loss(outputs: tuple[Tensor, ...], targets: Sequence[Tensor], scales: Sequence[Tensor],
                kind: str) -> Tensor:
    """Summed over the block's outputs: normalized MSE or 1 - cosine over the last dimension."""
    if len(outputs) != len(targets):
        raise InputError(f"calibrate_block: the block returns {len(outputs)} tensors, the float block {len(targets)}")
    total = 0.0
    for y, t, scale in zip(outputs, targets, scales):
        y, t = y.float(), t.float()
        if kind == "mse":
            total = total + (y - t).pow(2).mean() / scale
        else:
            total = total + (1.0 - F.cosine_similarity(y, t, dim=-1)).mean()
    return total


def _full_loss(loss_of, inputs: tuple[Tensor, ...], targets: list[Tensor], batch_size: int) -> float:
    """The loss over all samples (batch losses weighted by their size)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for lo in range(0, inputs[0].shape[0], batch_size):
            batch = [t[lo:lo + batch_size] for t in inputs]
            total += float(loss_of(batch, [t[lo:lo + batch_size] for t in targets])) * batch[0].shape[0]
            count += batch[0].shape[0]
    return total / count
