"""What quantization did, layer by layer: the quantized model against its float model on the same images.

For each quantized linear (``QuantizedLinear`` or ``FakeQuantLinear``), with x (B, L, C) its input
in the quantized model and x̃ = x · inv_smooth the quantizer's input (x / m, m the smoothing scale):

* weight SQNR: the smoothed float weight ``W_eff = W · m`` (O, C) against the dequantized weight;
* activation SQNR: x̃ against its quantized-dequantized value (per-token static, or dynamic);
* clipped: the share of x̃'s values outside the quantizer's range;
* output cosine: cos over output channels of the layer's output and of the float layer on the same
  input, ``F.linear(x̃, W_eff, bias)``, averaged over tokens and images.

Vector-quantized layers (``VQLinear``, ``VQActLinear``) expose the same facts; a weight-only one has
no activation quantizer (x̃ = x, nothing clipped, no activation SQNR). Their rows add the nominal
bits per weight (log2 k / d), the stored bits (packed codes and the fp16 codebook over the weights)
and the codebook usage: codewords used, the entropy of the code distribution (bits per code) and the
count of each codeword (``codebook_usage``, largest first).

``W_eff`` is the float model's weight in the layer's coordinates, from what the layer records
(its smoothing scale m and ``row_fold``, the consumer's 1/m folded into x_proj's dt rows); both
forms of quantized linear expose the same attributes, so nothing here asks which one it holds.
The float model's own linears give the activations before smoothing; it is captured first, so its
linears have the quantized model's names (a family's canonical form: VMamba's ``op.x_proj_0``, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..capture import blocks, capture
from ..config import QuantConfig
from ..errors import InputError
from ..evaluate import power_ratio_db, sqnr_db, topk_accuracy
from ..progress import progress
from ..quant import integer
from ..quant.fake_quant import dynamic_act_qparams
from ..quant.linear import QUANTIZED_LINEARS
from ..quant.vq_linear import VQ_LINEARS

REPORTED = (*QUANTIZED_LINEARS, *VQ_LINEARS)

HISTOGRAM_BINS = 101
SAMPLES_PER_BATCH = 1 << 16  # values kept per layer and batch for the detail block's histograms


def quantized_layers(qmodel: torch.fx.GraphModule) -> list[tuple[str, nn.Module]]:
    """(full name, module) of every quantized linear of ``qmodel``, in execution order."""
    found = []
    for prefix, block in blocks(qmodel):
        for node in block.graph.nodes:
            if node.op == "call_module" and isinstance(block.get_submodule(node.target), REPORTED):
                found.append((f"{prefix}.{node.target}", block.get_submodule(node.target)))
    return found


def detail_block(qmodel: torch.fx.GraphModule, index: int | None = None) -> str:
    """The block the plots look into: ``layers.<index>``, else the block JLSS left worst
    (largest 1 - cos after), else the middle block."""
    names = [name for name, _ in blocks(qmodel)]
    if index is not None:
        if not 0 <= index < len(names):
            raise InputError(f"block {index} does not exist: the model has blocks 0..{len(names) - 1}")
        return names[index]
    stats = qmodel.meta.get("block_stats") or {}
    if stats:
        return max(stats, key=lambda name: stats[name]["loss_after"])
    return names[len(names) // 2]


@torch.no_grad()
def smoothed_float_weights(qmodel: torch.fx.GraphModule, float_model: nn.Module) -> dict[str, Tensor]:
    """{layer: (O, C) fp32 float weight in the quantized layer's coordinates}: the float model's weight
    W with the layer's own record of what the passes did, ``diag(row_fold) · W · diag(m)``."""
    weights = {}
    for name, module in quantized_layers(qmodel):
        w = float_model.get_submodule(name).weight.double()
        weights[name] = (module.row_fold.double()[:, None] * w * module.smooth.double()).float()
    return weights


def _act_qparams(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(scale, signed zero point) broadcastable to x.shape[:-1]: (L,) static or (B, L) dynamic."""
    if module.dynamic:
        return dynamic_act_qparams(x, module.inv_smooth, module.a_bits)
    return module.static_act_qparams()


def codebook_usage(module: nn.Module) -> dict:
    """Nominal and stored bits per weight and codebook usage of a VQ layer (module docstring)."""
    counts = module.code_counts()
    p = counts[counts > 0].double() / counts.sum()
    return {"nominal_bits": module.nominal_bits, "stored_bits": module.storage_bits, "k": module.k, "d": module.d,
            "codewords_used": int((counts > 0).sum()), "code_entropy_bits": float(-(p * p.log2()).sum()),
            "codebook_usage": sorted(counts.tolist(), reverse=True)}


def _samples(x: Tensor) -> Tensor:
    flat = x.flatten()
    return flat[:: max(1, flat.numel() // SAMPLES_PER_BATCH)].clone()


@dataclass
class _LayerTally:
    """Running sums for one quantized linear over the report's batches."""

    module: nn.Module
    w_eff: Tensor  # (O, C)
    detail: bool
    # sum of x̃², of (x̃ - dequantized)², of token cosines; token count; clipped values
    sums: Tensor = field(default_factory=lambda: torch.zeros(5, dtype=torch.float64))
    values: int = 0
    x_min: float = float("inf")
    x_max: float = float("-inf")
    token_min: Tensor | None = None  # (L,)
    token_max: Tensor | None = None
    smoothed_absmax: Tensor | None = None  # (C,)
    float_absmax: Tensor | None = None  # (C,)
    smoothed_samples: list[Tensor] = field(default_factory=list)
    float_samples: list[Tensor] = field(default_factory=list)

    def add_quantized(self, x: Tensor, y: Tensor) -> None:
        """x (B, L, C) the layer's input, y (B, L, O) its output, in the quantized model."""
        xs = x.float() * self.module.inv_smooth
        if self.module.a_bits is None:  # float activations: nothing quantized, nothing clipped
            raw, lo, hi, x_dq = xs, -math.inf, math.inf, xs
        else:
            scale, zero_point = _act_qparams(self.module, x)
            lo, hi = integer.act_range(self.module.a_bits)
            raw = integer.unclamped_codes(xs, None, integer.reciprocal_scale(scale), zero_point)
            x_dq = (raw.clamp(lo, hi) - zero_point[..., None]) * scale[..., None]
        y_ref = F.linear(xs, self.w_eff, self.module.bias)
        cos = F.cosine_similarity(y.float(), y_ref, dim=-1)
        self.sums += torch.tensor(
            [
                xs.double().pow(2).sum(),
                (xs - x_dq).double().pow(2).sum(),
                cos.double().sum(),
                cos.numel(),
                ((raw < lo) | (raw > hi)).sum(),
            ],
            dtype=torch.float64,
        )
        self.values += xs.numel()
        self.x_min, self.x_max = min(self.x_min, xs.min().item()), max(self.x_max, xs.max().item())
        if self.detail:
            t_min, t_max, c_max = xs.amin((0, 2)), xs.amax((0, 2)), xs.abs().amax((0, 1))
            self.token_min = t_min if self.token_min is None else torch.minimum(self.token_min, t_min)
            self.token_max = t_max if self.token_max is None else torch.maximum(self.token_max, t_max)
            self.smoothed_absmax = (
                c_max if self.smoothed_absmax is None else torch.maximum(self.smoothed_absmax, c_max)
            )
            self.smoothed_samples.append(_samples(xs))

    def add_float(self, x: Tensor) -> None:
        """x (B, L, C) the same layer's input in the float model."""
        c_max = x.float().abs().amax((0, 1))
        self.float_absmax = c_max if self.float_absmax is None else torch.maximum(self.float_absmax, c_max)
        self.float_samples.append(_samples(x.float()))

    def row(self, name: str) -> dict:
        signal, noise, cos, tokens, clipped = self.sums.tolist()
        w_dq = self.module.dequantized_weight()
        vq = isinstance(self.module, VQ_LINEARS)
        a_bits = self.module.a_bits or 16
        row = {
            "layer": name,
            "bits": f"VQ{self.module.nominal_bits:g}A{a_bits}" if vq else f"W{self.module.w_bits}A{a_bits}",
            "act_min": self.x_min,
            "act_max": self.x_max,
            "clipped_pct": None if self.module.a_bits is None else 100.0 * clipped / self.values,
            "weight_sqnr_db": sqnr_db(self.w_eff, w_dq),
            "act_sqnr_db": None if self.module.a_bits is None else power_ratio_db(signal, noise),
            "output_cosine": cos / tokens,
        }
        return {**row, **codebook_usage(self.module)} if vq else row

    def static_range(self) -> tuple[list[float], list[float]] | None:
        """Per-token (min, max) of the values the quantizer represents; None when dynamic or float."""
        if self.module.dynamic or self.module.a_bits is None:
            return None
        scale, zero_point = self.module.static_act_qparams()
        lo, hi = integer.act_range(self.module.a_bits)
        return ((lo - zero_point) * scale).tolist(), ((hi - zero_point) * scale).tolist()


def _histograms(smoothed: Tensor, original: Tensor) -> dict[str, list[float]]:
    """Counts of v / max|v| on ``HISTOGRAM_BINS`` equal bins of [-1, 1], before and after smoothing."""
    edges = torch.linspace(-1, 1, HISTOGRAM_BINS + 1)

    def counts(v: Tensor) -> list[float]:
        return torch.histogram(v / v.abs().max().clamp(min=1e-30), bins=edges).hist.tolist()

    return {"edges": edges.tolist(), "float": counts(original), "smoothed": counts(smoothed)}


@dataclass
class Analysis:
    """Everything the report shows; plain lists and dicts (it is written as report.json)."""

    summary: dict
    rows: list[dict]  # one per quantized linear, execution order
    detail_block: str
    token_ranges: dict[str, dict[str, list[float] | None]]  # layer -> x_min, x_max, quant_min, quant_max (L,)
    channel_absmax: dict[str, dict[str, list[float]]]  # layer -> float, smoothed (C,)
    histograms: dict[str, dict[str, list[float]]]  # layer -> edges (bins + 1), float, smoothed (bins)
    blocks: dict[str, dict]  # block -> cos_before, cos_after, epoch_losses, vq_step_losses

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@torch.no_grad()
def analyse(
    qmodel: torch.fx.GraphModule,
    float_model: nn.Module,
    images: Tensor,
    labels: Tensor,
    block: int | None = None,
    batch_size: int = 64,
) -> Analysis:
    """Run both models on images (N, C, H, W) with labels (N,) and measure every quantized linear."""
    layers = quantized_layers(qmodel)
    if not layers:
        raise InputError("the model has no quantized linears: give the result of ptq4vm_fx.convert or load")
    focus = detail_block(qmodel, block)
    float_model = capture(float_model, qmodel.meta["img_size"])
    w_eff = smoothed_float_weights(qmodel, float_model)
    tallies = {
        name: _LayerTally(module, w_eff[name], detail=name.startswith(focus + ".")) for name, module in layers
    }
    hooks = []
    for name, module in layers:
        tally = tallies[name]
        hooks.append(
            module.register_forward_hook(lambda m, args, out, t=tally: t.add_quantized(args[0], out))
        )
        if tally.detail:
            hooks.append(
                float_model.get_submodule(name).register_forward_hook(
                    lambda m, args, out, t=tally: t.add_float(args[0])
                )
            )
    float_logits, quant_logits = [], []
    try:
        for batch in progress(images.split(batch_size), desc="report", unit="batch"):
            float_logits.append(float_model(batch).float())
            quant_logits.append(qmodel(batch).float())
    finally:
        for hook in hooks:
            hook.remove()
    float_logits, quant_logits = torch.cat(float_logits), torch.cat(quant_logits)
    config = QuantConfig.from_dict(qmodel.meta["quant_config"])
    summary = {
        "model": qmodel.meta.get("model_name"),
        "config": config.name,
        "method": config.method,
        "stage": qmodel.meta.get("stage"),
        "images": len(images),
        "float_top1": topk_accuracy(float_logits, labels),
        "quant_top1": topk_accuracy(quant_logits, labels),
        "logits_sqnr_db": sqnr_db(float_logits, quant_logits),
        "quantized_linears": len(layers),
    }
    vq = [m for _, m in layers if isinstance(m, VQ_LINEARS)]
    if vq:  # bits per weight over every VQ layer (codebooks included)
        weights = sum(m.in_features * m.out_features for m in vq)
        summary["vq_nominal_bits"] = sum(m.nominal_bits * m.in_features * m.out_features for m in vq) / weights
        summary["vq_stored_bits"] = sum(m.storage_bits * m.in_features * m.out_features for m in vq) / weights
    detail = {name: t for name, t in tallies.items() if t.detail}
    token_ranges = {}
    for name, t in detail.items():
        quant_min, quant_max = t.static_range() or (None, None)
        token_ranges[name] = {
            "x_min": t.token_min.tolist(),
            "x_max": t.token_max.tolist(),
            "quant_min": quant_min,
            "quant_max": quant_max,
        }
    stats = qmodel.meta.get("block_stats") or {}
    return Analysis(
        summary=summary,
        rows=[t.row(name) for name, t in tallies.items()],
        detail_block=focus,
        token_ranges=token_ranges,
        channel_absmax={
            name: {"float": t.float_absmax.tolist(), "smoothed": t.smoothed_absmax.tolist()}
            for name, t in detail.items()
        },
        histograms={
            name: _histograms(torch.cat(t.smoothed_samples), torch.cat(t.float_samples))
            for name, t in detail.items()
        },
        blocks={
            name: {
                "cos_before": 1.0 - s["loss_before"],
                "cos_after": 1.0 - s["loss_after"],
                "epoch_losses": list(s["epoch_losses"]),
                "vq_step_losses": list(s.get("vq", {}).get("step_losses", [])),
            }
            for name, s in stats.items()
        },
    )
