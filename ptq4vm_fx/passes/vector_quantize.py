"""Pass: the weight methods (``rtn``, ``vq_kmeans``, ``vq_convex``, ``vimvq``), block by block
(docs/design.md section 13).

For each block in order the target is the float block's output on its inputs in the float model, and
the quantized block is fed its inputs in the model whose earlier blocks are already quantized (both
found from the recorded calibration images, as JLSS finds them). The planned linears
(:func:`weight_layers`) become :class:`VQLinear` (``vq_kmeans``: the k-means codebook and nearest
codewords; ``vq_convex`` / ``vimvq``: :func:`ptq4vm_fx.quant.vq.calibrate_block` against the float
block) or get round-to-nearest weights (``rtn``, data-free; they stay ``nn.Linear``, a simulation).

With activations quantized too (``w2a8``), ``quantize_linears`` has made every observed linear a
FakeQuantLinear: a planned one keeps its per-token static quantizer of x / m in front of an
``nn.Linear`` holding W * m while its codebook is calibrated, and ends as a :class:`VQActLinear`;
the others go back to their float ``nn.Linear``.
"""

from __future__ import annotations

import copy
import dataclasses
import time

import torch
import torch.fx
from torch import Tensor, nn

from ..capture import blocks
from ..config import QuantConfig
from ..errors import InputError
from ..models.family import family_named
from ..progress import log, progress
from ..quant.fake_quant import fake_quant_act
from ..quant.linear import FakeQuantLinear
from ..quant.vq import PRESETS as VQ_PRESETS
from ..quant.vq import VQConfig, calibrate_block, plain_vq_block, rtn_block
from ..quant.vq_linear import VQActLinear
from .insert_observers import quantizable_linears
from .jlss import block_inputs, cosine_loss, main_output


def _fit_codebook(config: QuantConfig) -> VQConfig | None:
    """The codebook whose fit decides which layers a default plan quantizes: the config's (VQ methods),
    the VQ preset of the same bits (rtn at 1-3 bits: the methods of one preset quantize the same
    layers), or None (rtn at more bits: every layer)."""
    if config.vector_quantized:
        return config.vq
    preset = f"w{config.weight_bits}a16"
    return VQConfig.preset(preset) if preset in VQ_PRESETS else None


def weight_layers(gm: torch.fx.GraphModule, config: QuantConfig, explicit: bool) -> tuple[list[str], dict[str, str]]:
    """(qualified names of the linears the weight method quantizes, {name: why it stays float}) for the
    captured float model ``gm``. A linear the codebook does not fit (in_features not divisible by d,
    fewer than k sub-vectors: Vim's dt_proj, in_features = dt_rank) stays float; where the user named
    the linears (``explicit``) it is an InputError instead (rtn takes any layer named)."""
    codebook = None if explicit and config.method == "rtn" else _fit_codebook(config)
    layers, kept = [], {}
    for prefix, block in blocks(gm):
        for node in quantizable_linears(block, config.linears):
            name, linear = f"{prefix}.{node.target}", block.get_submodule(node.target)
            try:
                if codebook is not None:
                    codebook.check_layer(name, linear.out_features, linear.in_features)
            except InputError as exc:
                if explicit:
                    raise InputError(f"{exc}; linears {list(config.linears)} names it: leave it out (by default such "
                                     "layers stay float) or give vq a d that divides in_features") from None
                kept[name] = str(exc)
                continue
            layers.append(name)
    if not layers:
        raise InputError(f"nothing to quantize: no linear named one of {list(config.linears)} in a block fits "
                         f"{config.name}" + (f" ({next(iter(kept.values()))})" if kept else ""))
    return layers, kept


class ActQuantized(nn.Module):
    """Calibration form of a layer with quantized activations: x (…, L, C) -> ``linear`` of the per-token
    static fake quantization of x / m (FakeQuantLinear's codes, straight-through); ``linear`` holds
    W * m (fp32), and calibrate_block replaces it by the VQ weight."""

    def __init__(self, fq: FakeQuantLinear):
        super().__init__()
        self.a_bits = fq.a_bits
        self.register_buffer("smooth", fq.smooth.detach().clone())
        self.register_buffer("scale", torch.exp(fq.log_act_scale.detach()))
        self.register_buffer("zero_point", fq.act_zero_point.detach().clone())
        self.linear = nn.Linear(fq.in_features, fq.out_features, bias=fq.bias is not None).to(fq.weight.device)
        with torch.no_grad():
            self.linear.weight.copy_(fq.effective_weight())
            if fq.bias is not None:
                self.linear.bias.copy_(fq.bias)

    def forward(self, x: Tensor) -> Tensor:
        xq = fake_quant_act(x, torch.reciprocal(self.smooth), self.scale, self.zero_point, self.a_bits)
        return self.linear(xq.to(x.dtype))

    def packed(self) -> VQActLinear:
        """The runtime module, once ``linear`` is a VQLinear."""
        return VQActLinear.from_parts(self.linear, self.smooth, self.scale, self.zero_point, self.a_bits)


def _float_linear(fq: FakeQuantLinear) -> nn.Linear:
    """The float linear a FakeQuantLinear was made from (its unsmoothed weight and bias)."""
    linear = nn.Linear(fq.in_features, fq.out_features, bias=fq.bias is not None).to(fq.weight.device)
    with torch.no_grad():
        linear.weight.copy_(fq.weight)
        if fq.bias is not None:
            linear.bias.copy_(fq.bias)
    return linear


@torch.no_grad()
def _outputs(block, inputs: tuple[Tensor, ...], batch_size: int) -> Tensor:
    """The block's main output (JLSS's) on ``inputs`` (each (N, ...)), run in batches."""
    return torch.cat([main_output(block(*batch)) for batch in zip(*(t.split(batch_size) for t in inputs))])


def _quantize_block(block: torch.fx.GraphModule, float_block: nn.Module, chosen, inputs, float_inputs,
                    config: QuantConfig, name: str) -> dict | None:
    """In place on ``block``: the linears ``chosen`` accepts (by their name in ``block``) quantized by
    ``config``'s method; returns calibrate_block's report as a dict (vq_convex, vimvq) or None."""
    if config.method == "rtn":
        rtn_block(block, config.weight_bits, chosen)
        return None
    if config.method == "vq_kmeans":
        plain_vq_block(block, config.vq, chosen, block_name=name)
        return None
    report = dataclasses.asdict(calibrate_block(block, float_block, inputs, config.vq, float_inputs=float_inputs,
                                                name_filter=chosen, block_name=name))
    for layer in report["layers"]:
        layer["name"] = layer["name"].removesuffix(".linear")
    return report


def quantize_weights(qgm: torch.fx.GraphModule, fgm: torch.fx.GraphModule, images: Tensor, config: QuantConfig,
                     layers: list[str], batch_size: int = 64) -> dict[str, dict]:
    """In place on ``qgm``; ``fgm`` is the float model, ``images`` (N, C, H, W) the recorded calibration
    images, ``layers`` the planned linears (:func:`weight_layers`). Returns per-block stats: the
    cosine loss (1 - cos over the family's channel dim, as JLSS) of the block output with the
    initial (k-means; rtn / vq_kmeans: the final) weights and after, the seconds it took, and for
    vq_convex / vimvq calibrate_block's report (its own loss, every step's, per-layer counts)."""
    dim = family_named(qgm.meta["family"]).channel_dim
    planned = set(layers)
    stats = {}
    for name, qblock in progress(blocks(qgm), desc=f"{config.method} blocks"):
        start = time.perf_counter()
        targets = []
        for node in qblock.graph.nodes:
            module = qblock.get_submodule(node.target) if node.op == "call_module" else None
            if not isinstance(module, (nn.Linear, FakeQuantLinear)):
                continue
            if f"{name}.{node.target}" in planned:
                targets.append(node.target)
                if isinstance(module, FakeQuantLinear):
                    qblock.set_submodule(node.target, ActQuantized(module))
            elif isinstance(module, FakeQuantLinear):  # observed, but the codebook does not fit: float
                qblock.set_submodule(node.target, _float_linear(module))
        if not targets:
            continue
        float_block = fgm.get_submodule(name)
        float_inputs = block_inputs(fgm, name, images, batch_size)
        inputs = block_inputs(qgm, name, images, batch_size)
        target = _outputs(float_block, float_inputs, batch_size)
        # the names calibrate_block sees: an ActQuantized layer's nn.Linear is its "linear"
        chosen = {f"{t}.linear" if isinstance(qblock.get_submodule(t), ActQuantized) else t for t in targets}
        before = None
        if config.method in ("vq_convex", "vimvq"):  # the k-means start, on a copy
            start_block = copy.deepcopy(qblock)
            plain_vq_block(start_block, config.vq, chosen.__contains__, block_name=name)
            before = cosine_loss(_outputs(start_block, inputs, batch_size), target, dim).item()
            del start_block
        report = _quantize_block(qblock, float_block, chosen.__contains__, inputs, float_inputs, config, name)
        for t in targets:
            module = qblock.get_submodule(t)
            if isinstance(module, ActQuantized):
                qblock.set_submodule(t, module.packed())
        after = cosine_loss(_outputs(qblock, inputs, batch_size), target, dim).item()
        stats[name] = {"loss_before": after if before is None else before, "loss_after": after, "epoch_losses": [],
                       "seconds": time.perf_counter() - start, "layers": [f"{name}.{t}" for t in targets]}
        if report is not None:
            stats[name]["vq"] = report
        log.info("%s: %s, 1-cos %.3e -> %.3e (%.1f s)", name, config.name, stats[name]["loss_before"], after,
                 stats[name]["seconds"])
    return stats
