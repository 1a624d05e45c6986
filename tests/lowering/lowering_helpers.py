"""Helpers for the lowering tests: tiny quantized Vims, the Dynamo graph of a model, agreement of logits."""

import torch

import ptq4vm_fx
from ptq4vm_fx.evaluate import sqnr_db
from ptq4vm_fx.models import create_vim

# depth 2, 32x32 images, patch 16: 5 tokens (4 patches + the class token), d_model 32, d_inner 64
TINY = {"depth": 2, "img_size": 32, "embed_dim": 32, "num_classes": 10}
# the rewrites on a TINY model: per block 6 quantized linears, 1 norm, 2 convs, 1 scan pair,
# 1 scan epilogue, the 2 dt_proj inputs quantized by x_proj's epilogue, the scan's softplus in
# the 2 dt_proj epilogues and its SiLU(z) in in_proj's; none is left for the standalone quantizer, and no conv
# for the float conv fusion
EXPECTED = {
    "bidirectional_scan": 2,
    "scan_quantize": 2,
    "add_rmsnorm_quantize": 2,
    "conv1d_silu_quantize": 4,
    "conv1d_silu": 0,
    "linear_quantize": 4,
    "linear_softplus": 4,
    "linear_silu": 2,
}
# the float TINY model: of the rewrites only those that quantize nothing fire
FLOAT_EXPECTED = {"bidirectional_scan": 2, "conv1d_silu": 4}
GEMMS_LEFT = 2  # the ptq4vm::int8_linear calls no fusion takes (out_proj): their own kernel


# Inductor's CPU code generator keeps fp16 / bf16 round trips under emulate_precision_casts (the
# backend's default) in torch 2.14, so a compiled half model equals its eager run there; torch 2.11's
# ignores it (the tiny Vim: 49.4 dB, the digits Vim: 36.8 dB, same top-1); its Triton one (GPUs) honours it
EMULATES_CASTS_ON_CPU = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 14)


def tiny_vim(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_vim("vim_tiny_patch16_224", **dict(TINY, **overrides)).eval()


def images(batch: int, seed: int = 1, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def quantize(model: torch.nn.Module, method: str = "pts_smooth", size: int = 32, **config) -> torch.fx.GraphModule:
    """The integer model of ``model`` (W8A8), calibrated on 8 random ``size`` x ``size`` images."""
    cfg = ptq4vm_fx.QuantConfig.preset_config("w8a8", method, **config)
    prepared = ptq4vm_fx.prepare(model, images(1, size=size), cfg)
    with torch.no_grad():
        prepared(images(8, seed=2, size=size))
    return ptq4vm_fx.convert(prepared)


def dynamo_graph(model, x: torch.Tensor, dynamic_batch: bool = False):
    """(GraphModule, example inputs) as Dynamo hands them to a backend (fullgraph, no_grad)."""
    graphs = []

    def capture(gm, example_inputs):
        graphs.append((gm, list(example_inputs)))
        return gm.forward

    torch._dynamo.reset()  # a fresh cache: no automatic dynamic shapes from earlier captures
    if dynamic_batch:
        torch._dynamo.mark_dynamic(x, 0)
    with torch.no_grad():
        torch.compile(model, backend=capture, fullgraph=True)(x)
    assert len(graphs) == 1
    return graphs[0]


def assert_agrees(out: torch.Tensor, ref: torch.Tensor, min_sqnr_db: float = 40.0) -> None:
    """Logits of a lowered / compiled quantized model against its eager run: integer-level agreement
    (the fused ops compute the same codes up to float rounding) shows as SQNR >= 40 dB, same argmax."""
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert sqnr_db(ref, out) >= min_sqnr_db
    assert torch.equal(out.argmax(-1), ref.argmax(-1))
