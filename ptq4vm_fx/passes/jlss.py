"""Pass: PTQ4VM stages 2 and 3, block by block (docs/design.md section 5).

For block i, the target is the float block's output on float inputs; the quantized block is fed
the outputs of the already-quantized blocks before it. Stage 2 grid-searches every weight row's
and every token's clipping range (in graph order, so each linear sees the quantized producers
before it). Stage 3 trains log step sizes and log smoothing scales with AdamW, weights frozen and
zero points fixed, on ``1 - cos(y_fp, y_q)`` over channels, per token, averaged.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F

from ..capture import blocks
from ..config import QuantConfig
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


def first_block_inputs(gm: torch.fx.GraphModule, images: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, ...]:
    """Run the stem of ``gm`` on ``images`` (N, C, H, W; moved batch by batch to the model's device);
    returns the first block's (hidden, residual), each (N, L, D)."""
    _, first = blocks(gm)[0]
    device = next(gm.parameters()).device
    seen = _inputs_of(first, [lambda b=b: gm(b.to(device)) for b in images.split(batch_size)])
    return torch.cat([args[0] for args in seen]), torch.cat([args[1] for args in seen])


@torch.no_grad()
def _run_block(block, hidden, residual, batch_size):
    outs = [block(h, r) for h, r in zip(hidden.split(batch_size), residual.split(batch_size))]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def _linear_input(block, target: str, hidden, residual, batch_size: int) -> torch.Tensor:
    """The input (N, L, C) that the module ``target`` sees when ``block`` runs on (hidden, residual)."""
    calls = [lambda h=h, r=r: block(h, r) for h, r in zip(hidden.split(batch_size), residual.split(batch_size))]
    return torch.cat([args[0] for args in _inputs_of(block.get_submodule(target), calls)])


def fake_quant_nodes(block: torch.fx.GraphModule) -> list[str]:
    return [
        n.target for n in block.graph.nodes
        if n.op == "call_module" and isinstance(block.get_submodule(n.target), FakeQuantLinear)
    ]


@torch.no_grad()
def grid_search_block(block: torch.fx.GraphModule, hidden, residual, config: QuantConfig, batch_size: int) -> None:
    """Stage 2 on one block, in graph order, from ``config.grid_samples`` calibration samples."""
    hidden, residual = hidden[: config.grid_samples], residual[: config.grid_samples]
    for target in fake_quant_nodes(block):
        fq: FakeQuantLinear = block.get_submodule(target)
        fq.log_w_scale.copy_(torch.log(search_weight_scale(
            fq.effective_weight(), config.weight_bits, config.grid_candidates, config.grid_norm)))
        if fq.dynamic:
            continue
        x = _linear_input(block, target, hidden, residual, batch_size)
        scale, zero_point = search_token_qparams(
            x.reshape(-1, *x.shape[-2:]), fq.inv_smooth, config.act_bits, config.grid_candidates,
            config.grid_norm, per_token=config.granularity == "per_token")
        fq.log_act_scale.copy_(torch.log(scale))
        fq.act_zero_point.copy_(zero_point)


def cosine_loss(y_q: torch.Tensor, y_fp: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of 1 - cos(y_fp, y_q) taken over channels; (…, L, C) inputs."""
    return (1 - F.cosine_similarity(y_q.float(), y_fp.float(), dim=-1, eps=1e-8)).mean()


def train_block(block: torch.fx.GraphModule, hidden, residual, target, config: QuantConfig, desc: str) -> list[float]:
    """Stage 3 on one block; returns the mean loss of each epoch."""
    fqs = [block.get_submodule(t) for t in fake_quant_nodes(block)]
    frozen = [p for p in block.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    params = []
    for fq in fqs:
        params += [fq.log_smooth, fq.log_w_scale] + ([] if fq.dynamic else [fq.log_act_scale])
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=config.jlss_lr, weight_decay=config.jlss_weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    history = []
    bar = progress(range(config.jlss_epochs), desc=desc)
    for _ in bar:
        total, batches = 0.0, 0
        for idx in torch.randperm(hidden.shape[0], generator=gen).split(config.jlss_batch_size):
            loss = cosine_loss(block(hidden[idx], residual[idx])[0], target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, batches = total + loss.item(), batches + 1
        history.append(total / batches)
        bar.set_postfix(loss=f"{history[-1]:.2e}")
    for p in frozen:
        p.requires_grad_(True)
    for p in params:
        p.requires_grad_(False)
    return history


def run_jlss(qgm: torch.fx.GraphModule, fgm: torch.fx.GraphModule, images: torch.Tensor,
             config: QuantConfig, batch_size: int = 64) -> dict[str, dict]:
    """In place on ``qgm`` (FakeQuantLinear blocks); ``fgm`` is the float model. Returns per-block
    stats: cosine loss of the quantized block output before and after JLSS, and epoch losses."""
    hidden_fp, residual_fp = first_block_inputs(fgm, images, batch_size)
    hidden_q, residual_q = hidden_fp, residual_fp
    stats = {}
    for name, qblock in progress(blocks(qgm), desc="JLSS blocks"):
        fblock = fgm.get_submodule(name)
        target, target_res = _run_block(fblock, hidden_fp, residual_fp, batch_size)
        if config.grid_search:
            grid_search_block(qblock, hidden_q, residual_q, config, batch_size)
        with torch.no_grad():
            before = cosine_loss(_run_block(qblock, hidden_q, residual_q, batch_size)[0], target).item()
        history = []
        if config.jlss:
            history = train_block(qblock, hidden_q, residual_q, target, config, desc=f"JLSS {name}")
        hidden_q, residual_q = _run_block(qblock, hidden_q, residual_q, batch_size)
        after = cosine_loss(hidden_q, target).item()
        stats[name] = {"loss_before": before, "loss_after": after, "epoch_losses": history}
        log.info("%s: 1-cos %.3e -> %.3e", name, before, after)
        hidden_fp, residual_fp = target, target_res
    return stats
