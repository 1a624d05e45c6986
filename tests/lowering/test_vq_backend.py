"""torch.compile(backend="ptq4vm") on vector-quantized Vims: recognised as quantized, every
ptq4vm::vq_linear call counted, compiled == eager on the CPU (fullgraph, dynamic batch), and the
lowered graph with every op on its Triton kernel (interpreter) against the eager model."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import ptq4vm_fx
from ptq4vm_fx.lowering.backend import has_quantized_ops, lower_graph, ptq4vm_backend
from ptq4vm_fx.ops import CUDA_KERNELS

from .lowering_helpers import assert_agrees, dynamo_graph, images, tiny_vim

# per TINY block: in_proj, x_proj, x_proj_b, out_proj (dt_proj(_b): in_features 2, not a multiple of d = 4)
VQ_LINEARS_PER_BLOCK = 4


def vq_model(preset: str) -> torch.fx.GraphModule:
    config = ptq4vm_fx.QuantConfig.preset_config(preset, "vq_kmeans")
    prepared = ptq4vm_fx.prepare(tiny_vim(), images(1), config)
    with torch.no_grad():
        prepared(images(8, seed=2))
    return ptq4vm_fx.convert(prepared)


@pytest.fixture(scope="module")
def vq_models():
    return {preset: vq_model(preset) for preset in ("w2a16", "w2a8")}


@pytest.mark.parametrize("preset, rewrites", [
    ("w2a16", {"bidirectional_scan": 2, "conv1d_silu": 4}),  # weight-only: the float fusions
    # VQ behind A8: the norm, the convs and the scan quantize out_proj's input (dt_proj stays float)
    ("w2a8", {"bidirectional_scan": 2, "scan_quantize": 2, "add_rmsnorm_quantize": 2, "conv1d_silu_quantize": 4}),
])
def test_compiled_vq_model_equals_eager(vq_models, fresh_counters, preset, rewrites):
    qmodel = vq_models[preset]
    x = images(3, seed=5)
    torch._dynamo.reset()
    torch._dynamo.mark_dynamic(x, 0)
    compiled = torch.compile(qmodel, backend=ptq4vm_backend, fullgraph=True)
    with torch.no_grad():
        got, expect = compiled(x), qmodel(x)
        assert torch.equal(compiled(images(5, seed=6)).argmax(-1), qmodel(images(5, seed=6)).argmax(-1))
    assert_agrees(got, expect, min_sqnr_db=80.0)
    counts = fresh_counters.lowering_counters()
    assert counts["vq_linear"] == 2 * VQ_LINEARS_PER_BLOCK and counts["graphs_lowered"] == 1
    assert "float_graphs" not in counts  # recognised as quantized, not as a float model
    assert {k: v for k, v in counts.items() if k in rewrites or v and k not in ("vq_linear", "graphs_lowered")} \
        == rewrites


def test_vq_graph_is_quantized_and_refuses_grad(vq_models):
    gm, example_inputs = dynamo_graph(vq_models["w2a16"], images(2))
    assert has_quantized_ops(gm)
    x = images(2).requires_grad_(True)
    with pytest.raises(RuntimeError, match="no gradient"):
        ptq4vm_backend(gm, [x if isinstance(t, torch.Tensor) and t.shape == x.shape else t for t in example_inputs])


def _run_triton_kernels(gm: torch.fx.GraphModule) -> dict[str, int]:
    """Point every custom-op call of ``gm`` at its CUDA implementation (the Triton launch); returns
    how many of each op. A module's call of ``torch.ops.ptq4vm.vq_linear`` reaches the graph as the
    op's packet, the rewrites' as the overload: both are swapped."""
    swapped = {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        op = node.target.default if isinstance(node.target, torch._ops.OpOverloadPacket) else node.target
        if op in CUDA_KERNELS:
            swapped[op.name()] = swapped.get(op.name(), 0) + 1
            node.target = CUDA_KERNELS[op]
    gm.recompile()
    return swapped


def _forward(gm, example_inputs):
    with torch.no_grad():
        return gm(*example_inputs)[0]


def test_trained_vim_vq_on_triton_kernels_matches_eager(float_model, digits, device):
    """The bundled digits Vim, 2-bit VQ weights (k-means: the kernel does not care how the codes were
    found), lowered, every op on its Triton kernel (the VQ GEMM included) against the eager model
    (the VQ op's reference). Measured under the interpreter: 131 dB, the same top-1 on every image."""
    config = ptq4vm_fx.QuantConfig.preset_config("w2a16", "vq_kmeans")
    calib = digits["calib"].images[:32]
    prepared = ptq4vm_fx.prepare(float_model, calib[:1], config)
    with torch.no_grad():
        prepared(calib)
    qmodel = ptq4vm_fx.convert(prepared).to(device)
    x = digits["test"].images[:2].to(device)  # 2 images: the interpreter runs a program at a time
    gm, example_inputs = dynamo_graph(qmodel, x)
    lower_graph(gm)
    swapped = _run_triton_kernels(gm)
    assert swapped["ptq4vm::vq_linear"] == 4 * VQ_LINEARS_PER_BLOCK  # 4 blocks
    assert swapped["ptq4vm_fused::bidirectional_scan"] == 4 and swapped["ptq4vm_fused::conv1d_silu"] == 8
    with torch.no_grad():
        expect = qmodel(x)
    with ThreadPoolExecutor(1) as worker:  # a shallow stack for the interpreter (test_kernels_end_to_end.py)
        got = worker.submit(_forward, gm, example_inputs).result()
    assert_agrees(got.cpu(), expect.cpu(), min_sqnr_db=60.0)
