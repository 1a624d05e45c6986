"""The trained digits Vim, quantized W8A8 and lowered, with every fused op running its Triton
kernel (natively on a GPU, else through the Triton interpreter), against the eager quantized
model: the kernels, as the lowering composes them, compute what the simulation computes; in
fp32, and with the model moved to fp16 (the kernels rounding where its ops round).

A trained model is the fair subject: a random-weight Vim is chaotic (moving its input by 1e-6
already costs its logits ~36 dB, scripts/int8_sensitivity.py), so one fp32 rounding that flips a
single int8 code swings the whole output; the digits model is not, and the 40 dB bar applies."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import ptq4vm_fx
from ptq4vm_fx.lowering.backend import lower_graph
from ptq4vm_fx.ops import CUDA_KERNELS

from .lowering_helpers import EXPECTED, assert_agrees, dynamo_graph


def _run_triton_kernels(gm: torch.fx.GraphModule) -> int:
    """Point every custom-op call of ``gm`` at its CUDA implementation (the Triton launch); returns how many."""
    swapped = 0
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        # a module's call (torch.ops.ptq4vm.int8_linear) reaches the graph as the op's packet
        op = node.target.default if isinstance(node.target, torch._ops.OpOverloadPacket) else node.target
        if op in CUDA_KERNELS:
            node.target = CUDA_KERNELS[op]
            swapped += 1
    gm.recompile()
    return swapped


def _custom_ops_left(gm: torch.fx.GraphModule) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes
            if n.op == "call_function" and isinstance(n.target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket))
            and n.target.namespace in ("ptq4vm", "ptq4vm_fused")]


def _forward(gm, example_inputs):
    with torch.no_grad():
        return gm(*example_inputs)[0]


def _w8a8(model, calib, device, dtype=torch.float32):
    """``model`` quantized W8A8 (pts_smooth) on the calibration images ``calib``, moved to ``device``, ``dtype``."""
    prepared = ptq4vm_fx.prepare(model, calib[:1], ptq4vm_fx.QuantConfig.preset_config("w8a8", "pts_smooth"))
    with torch.no_grad():
        prepared(calib)
    return ptq4vm_fx.convert(prepared).to(device, dtype)


def _on_kernels(gm, example_inputs):
    """The logits of ``gm`` run with its ops on their kernels. A fresh thread's shallow stack: under pytest's
    deep one, CPython 3.11 maps and unmaps a frame-stack chunk on every interpreted Triton op (4x the run
    time on the CPU)."""
    with ThreadPoolExecutor(1) as worker:
        return worker.submit(_forward, gm, example_inputs).result()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_trained_vim_on_triton_kernels_matches_eager_int8(float_model, digits, device, dtype):
    qmodel = _w8a8(float_model, digits["calib"].images[:64], device, dtype)
    images = digits["test"].images[:2].to(device, dtype)  # 2 images: the interpreter runs a program at a time

    gm, example_inputs = dynamo_graph(qmodel, images)
    depth = len(float_model.layers)
    counts = lower_graph(gm)
    # fp16 delta and z: no softplus or SiLU in the GEMMs
    expected = dict(EXPECTED, linear_softplus=0, linear_silu=0) if dtype == torch.float16 else EXPECTED
    assert counts == {k: v * depth // 2 for k, v in expected.items()}  # EXPECTED is for two blocks
    # the fused ops and the remaining ptq4vm ops (in_proj / dt_proj / out_proj GEMMs) all run their kernels
    assert _run_triton_kernels(gm) >= sum(counts.values()) - counts["bidirectional_scan"]
    assert _custom_ops_left(gm) == []

    with torch.no_grad():
        expect = qmodel(images)
    assert_agrees(_on_kernels(gm, example_inputs).cpu(), expect.cpu())


def _tiny_local_vssm():
    """A random-weight LocalVSSM whose windows need padding (w3 on a 4x4 map) and whose column merge is the
    official one: (model, calibration images, test images)."""
    from ..models.test_localmamba_quant import build, images

    return build("vssm"), images(16, seed=2), images(2, seed=3)


def _tiny_local_vim():
    """A random-weight LocalVim with the middle class token (17 tokens) and windows that pad its 4x4 grid (w3):
    (model, calibration images, test images)."""
    from ..models.test_localmamba_quant import build, images

    return build("vim"), images(16, seed=2), images(2, seed=3)


def _trained_vmamba():
    """The trained digits VMamba: (model, calibration images, test images)."""
    from ptq4vm_fx.data.bundled import bundled_digits, bundled_model

    return bundled_model("vmamba_digits"), bundled_digits("calib")[0][:32], bundled_digits("test")[0][:1]


@pytest.mark.parametrize("subject", [_trained_vmamba, _tiny_local_vssm, _tiny_local_vim],
                         ids=["vmamba_digits", "local_vssm_padded", "local_vim_padded"])
def test_2d_scans_on_triton_kernels_match_eager_int8(subject, device):
    """VMamba, LocalVSSM and LocalVim W8A8, lowered: each ordered scan (VMamba's four directions summed per block,
    LocalVSSM's per direction, padded windows read as zeros, column merges; LocalVim's per direction by sequence
    step, z and the outputs through its maps, after its conv + quantize read through them) and every other
    ptq4vm op on its Triton kernel, against the eager quantized model."""
    model, calib, images = subject()
    qmodel = _w8a8(model, calib, device)
    images = images.to(device)
    gm, example_inputs = dynamo_graph(qmodel, images)
    lower_graph(gm)
    ordered = (torch.ops.ptq4vm.ordered_scan, torch.ops.ptq4vm.ordered_scan.default)
    scans = [n for n in gm.graph.nodes if n.target in ordered]
    per_block = [len(d) for d in model.config["directions"]] if "directions" in model.config else model.config["depths"]
    assert len(scans) == sum(per_block)  # VMamba: one a block; LocalVSSM: one a direction
    _run_triton_kernels(gm)
    assert _custom_ops_left(gm) == []
    with torch.no_grad():
        expect = qmodel(images)
    assert_agrees(_on_kernels(gm, example_inputs).cpu(), expect.cpu())
