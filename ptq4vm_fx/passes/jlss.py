"""Pass: PTQ4VM stages 2 and 3, block by block (docs/design.md section 5).

For block i, the target is the float block's output on its inputs in the float model; the quantized
block is fed its inputs in the model whose earlier blocks are already quantized (``jlss_inputs``
"quantized"; "float": the float model's), each found by running the captured model up to the block
(the stem, and VMamba's downsampling between stages, run as captured). A block takes any positional
tensors ((hidden, residual) in Vim, a feature map in VMamba) and its first output (its only one, or
Vim's hidden) is compared. Stage 2 grid-searches every weight row's and every token's clipping range
(``grid_inputs`` "quantized": on the quantized block inputs, in graph order, so each linear sees the
quantized producers before it; "float": on the float model's block inputs with the whole block in
float, as the official code). Stage 3 trains the step sizes and smoothing scales (their logs, or
themselves with ``jlss_param`` "linear") with AdamW, weights frozen and zero points fixed, on ``1 -
cos(y_fp, y_q)`` over channels (the family's ``channel_dim``), per token, averaged (``jlss_loss``).
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch.nn.utils import parametrize

from ..capture import blocks
from ..config import QuantConfig
from ..models.family import family_named
from ..progress import log, progress
from ..quant.grid_search import search_token_qparams, search_weight_scale
from ..quant.linear import FakeQuantLinear


class _Captured(Exception):
    pass


@torch.no_grad()
def _inputs_of(module: torch.nn.Module, calls) -> list[tuple[torch.Tensor, ...]]:
    """The positional tensor inputs ``module`` receives during each of ``calls`` (thunks); each
    call is cut short as soon as ``module`` is reached."""
    seen = []

    def grab(_, args):
        seen.append(tuple(a.detach() for a in args))
        raise _Captured

    handle = module.register_forward_pre_hook(grab)
    try:
        for call in calls:
            try:
                call()
            except _Captured:
                pass
    finally:
        handle.remove()
    return seen


def block_inputs(gm: torch.fx.GraphModule, name: str, images: torch.Tensor,
                 batch_size: int) -> tuple[torch.Tensor, ...]:
    """The positional inputs (each (N, ...)) of the block ``name`` when ``gm`` runs on ``images``
    (N, C, H, W; moved batch by batch to the model's device), each run cut short at the block."""
    device = next(gm.parameters()).device
    seen = _inputs_of(gm.get_submodule(name), [lambda b=b: gm(b.to(device)) for b in images.split(batch_size)])
    return tuple(torch.cat(parts) for parts in zip(*seen))


class BlockReplay:
    """The positional inputs of a captured model's blocks, one block after the other in graph order.

    The graph runs node by node on ``images`` (N, C, H, W; batch by batch, on the model's device) and
    stops at the block asked for, so the next block's inputs cost only the nodes in between, where
    :func:`block_inputs` runs the model from its start for each block (quadratic in depth). The same
    operations on the same batches as ``gm(batch)``: the inputs equal :func:`block_inputs`'s bit for
    bit. A block changed before the replay moves past it (JLSS on the quantized model) runs as changed.
    Values no later node reads are dropped."""

    def __init__(self, gm: torch.fx.GraphModule, images: torch.Tensor, batch_size: int):
        device = next(gm.parameters()).device
        self.interpreter = torch.fx.Interpreter(gm)
        self.nodes = list(gm.graph.nodes)
        self.position = 0  # the next node to run
        last_use = {}
        for i, node in enumerate(self.nodes):
            for used in node.all_input_nodes:
                last_use[used] = i
        self.dead_after = [[n for n in node.all_input_nodes if last_use[n] == i] for i, node in enumerate(self.nodes)]
        placeholder = next(n for n in self.nodes if n.op == "placeholder")
        self.envs = [{placeholder: batch.to(device)} for batch in images.split(batch_size)]

    @torch.no_grad()
    def inputs_of(self, name: str) -> tuple[torch.Tensor, ...]:
        """The positional inputs (each (N, ...)) of the next call of the block ``name``."""
        while not (self.nodes[self.position].op == "call_module" and self.nodes[self.position].target == name):
            node = self.nodes[self.position]
            if node.op == "output":
                raise ValueError(f"no call of {name} after the replay's position")
            for env in self.envs:
                if node.op != "placeholder":
                    self.interpreter.env = env
                    env[node] = self.interpreter.run_node(node)
                for dead in self.dead_after[self.position]:
                    del env[dead]
            self.position += 1
        block, args = self.nodes[self.position], []
        for env in self.envs:
            self.interpreter.env = env
            args.append(self.interpreter.map_nodes_to_values(block.args, block))
        return tuple(torch.cat(parts) for parts in zip(*args))


def _batches(inputs: tuple[torch.Tensor, ...], batch_size: int):
    return zip(*(t.split(batch_size) for t in inputs))


def main_output(out) -> torch.Tensor:
    """A block's output that JLSS compares: its only output, or the first of several (Vim's hidden)."""
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def _run_block(block, inputs: tuple[torch.Tensor, ...], batch_size: int) -> torch.Tensor:
    return torch.cat([main_output(block(*batch)) for batch in _batches(inputs, batch_size)])


def _linear_input(block, target: str, inputs: tuple[torch.Tensor, ...], batch_size: int) -> torch.Tensor:
    """The input (N, L, C) that the module ``target`` sees when ``block`` runs on ``inputs``."""
    calls = [lambda b=b: block(*b) for b in _batches(inputs, batch_size)]
    return torch.cat([args[0] for args in _inputs_of(block.get_submodule(target), calls)])


def fake_quant_nodes(block: torch.fx.GraphModule) -> list[str]:
    return [
        n.target for n in block.graph.nodes
        if n.op == "call_module" and isinstance(block.get_submodule(n.target), FakeQuantLinear)
    ]


@torch.no_grad()
def grid_search_block(block: torch.fx.GraphModule, inputs: tuple[torch.Tensor, ...], config: QuantConfig,
                      batch_size: int) -> None:
    """Stage 2 on one block, in graph order, from ``config.grid_samples`` calibration samples; with
    ``grid_inputs`` "float" every linear's input is the float block's (quantization off meanwhile)."""
    inputs = tuple(t[: config.grid_samples] for t in inputs)
    fqs = {target: block.get_submodule(target) for target in fake_quant_nodes(block)}
    for target, fq in fqs.items():
        fq.log_w_scale.copy_(torch.log(search_weight_scale(
            fq.effective_weight(), config.weight_bits, config.grid_candidates, config.grid_norm)))
        if fq.dynamic:
            continue
        for other in fqs.values():
            other.quant_enabled = config.grid_inputs == "quantized"
        x = _linear_input(block, target, inputs, batch_size)
        for other in fqs.values():
            other.quant_enabled = True
        scale, zero_point = search_token_qparams(
            x.reshape(-1, *x.shape[-2:]), fq.inv_smooth, config.act_bits, config.grid_candidates,
            config.grid_norm, per_token=config.granularity == "per_token", shrink=config.act_search)
        fq.log_act_scale.copy_(torch.log(scale))
        fq.act_zero_point.copy_(zero_point)


def cosine_loss(y_q: torch.Tensor, y_fp: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean over tokens of 1 - cos(y_fp, y_q) taken over the channel dim ``dim``: (…, L, C) inputs, or
    (B, C, H, W) with dim 1."""
    return (1 - F.cosine_similarity(y_q.float(), y_fp.float(), dim=dim, eps=1e-8)).mean()


def jlss_loss(y_q: torch.Tensor, y_fp: torch.Tensor, kind: str, dim: int = -1) -> torch.Tensor:
    """``kind`` "cosine" (:func:`cosine_loss`), "mse" (mean squared error over the float output's mean
    square: scale-free, as 1 - cos is) or "cosine+mse" (their sum)."""
    cos = cosine_loss(y_q, y_fp, dim) if kind != "mse" else 0.0
    if kind == "cosine":
        return cos
    y_fp = y_fp.float()
    return cos + F.mse_loss(y_q.float(), y_fp) / y_fp.square().mean().clamp(min=1e-12)


class _Log(torch.nn.Module):
    """The parametrization of a log-parameter trained as its exponential (``jlss_param`` "linear"):
    the optimizer steps the value itself (clamped above 0 to keep its log finite)."""

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        return torch.log(value.clamp(min=1e-12))

    def right_inverse(self, log_value: torch.Tensor) -> torch.Tensor:
        return torch.exp(log_value)


def _trained(fq: FakeQuantLinear) -> list[tuple[str, int]]:
    """(log-parameter name, learning-rate group: 0 weight steps, 1 activation steps, 2 smoothing)."""
    return [("log_w_scale", 0), ("log_smooth", 2)] + ([] if fq.dynamic else [("log_act_scale", 1)])


def train_block(block: torch.fx.GraphModule, inputs: tuple[torch.Tensor, ...], target, config: QuantConfig,
                desc: str, dim: int = -1) -> list[float]:
    """Stage 3 on one block; returns the mean loss of each epoch."""
    fqs = [block.get_submodule(t) for t in fake_quant_nodes(block)]
    frozen = [p for p in block.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    groups = [[], [], []]
    for fq in fqs:
        for name, group in _trained(fq):
            if config.jlss_param == "linear":
                parametrize.register_parametrization(fq, name, _Log())
                param = getattr(fq.parametrizations, name).original
            else:
                param = getattr(fq, name)
            groups[group].append(param.requires_grad_(True))
    params = [p for group in groups for p in group]
    opt = torch.optim.AdamW([{"params": g, "lr": lr} for g, lr in zip(groups, config.jlss_lrs) if g],
                            weight_decay=config.jlss_weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    history = []
    bar = progress(range(config.jlss_epochs), desc=desc)
    for _ in bar:
        total, batches = 0.0, 0
        order = torch.randperm(target.shape[0], generator=gen) if config.jlss_shuffle else torch.arange(target.shape[0])
        for idx in order.split(config.jlss_batch_size):
            loss = jlss_loss(main_output(block(*(t[idx] for t in inputs))), target[idx], config.jlss_loss, dim)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.jlss_grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, config.jlss_grad_clip)
            opt.step()
            total, batches = total + loss.item(), batches + 1
        history.append(total / batches)
        bar.set_postfix(loss=f"{history[-1]:.2e}")
    for p in frozen:
        p.requires_grad_(True)
    for fq in fqs:
        for name, _ in _trained(fq):
            if config.jlss_param == "linear":
                parametrize.remove_parametrizations(fq, name)
            getattr(fq, name).requires_grad_(False)
    return history


def run_jlss(qgm: torch.fx.GraphModule, fgm: torch.fx.GraphModule, images: torch.Tensor,
             config: QuantConfig, batch_size: int = 64) -> dict[str, dict]:
    """In place on ``qgm`` (FakeQuantLinear blocks); ``fgm`` is the float model. Returns per-block
    stats: cosine loss of the quantized block output before and after JLSS, and epoch losses."""
    dim = family_named(qgm.meta["family"]).channel_dim
    stats = {}
    float_inputs, quant_inputs = BlockReplay(fgm, images, batch_size), BlockReplay(qgm, images, batch_size)
    for name, qblock in progress(blocks(qgm), desc="JLSS blocks"):
        fp_inputs = float_inputs.inputs_of(name)
        target = _run_block(fgm.get_submodule(name), fp_inputs, batch_size)
        q_inputs = quant_inputs.inputs_of(name)
        if config.grid_search:
            grid_search_block(qblock, fp_inputs if config.grid_inputs == "float" else q_inputs, config, batch_size)
        inputs = fp_inputs if config.jlss_inputs == "float" else q_inputs
        with torch.no_grad():
            before = cosine_loss(_run_block(qblock, inputs, batch_size), target, dim).item()
        history = []
        if config.jlss:
            history = train_block(qblock, inputs, target, config, desc=f"JLSS {name}", dim=dim)
        after = cosine_loss(_run_block(qblock, inputs, batch_size), target, dim).item()
        stats[name] = {"loss_before": before, "loss_after": after, "epoch_losses": history}
        log.info("%s: 1-cos %.3e -> %.3e", name, before, after)
    return stats
