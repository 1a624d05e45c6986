"""torch.compile(backend="ptq4vm") end to end on the CPU (fused ops on their references, the rest
through Inductor), its options, and on a GPU the Triton kernels."""

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from ptq4vm_fx import ops
from ptq4vm_fx.kernels import selective_scan as scan_kernels
from ptq4vm_fx.lowering import backend, fused_ops, report
from ptq4vm_fx.lowering.match import is_custom_op
from ptq4vm_fx.lowering.options import FUSIONS, REWRITES, BackendOptions

from .lowering_helpers import (
    EMULATES_CASTS_ON_CPU,
    EXPECTED,
    FLOAT_EXPECTED,
    assert_agrees,
    images,
    quantize,
    tiny_vim,
)
from .test_fused_ops import sample_args

BATCHES = (8, 3, 5)  # the second size makes the batch dimension dynamic; the third reuses that graph


def _compile_and_run(model, device, size=32):
    """Compile ``model`` (fullgraph) and run it on BATCHES of ``size`` x ``size`` images; returns
    (outputs, eager outputs, counters)."""
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="ptq4vm", fullgraph=True)
    outputs, expected = [], []
    with torch.no_grad():
        for batch in BATCHES:
            x = images(batch, seed=batch, size=size).to(device)
            outputs.append(compiled(x))
            expected.append(model(x))
        scan_a = []
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(scan_kernels, "_bidirectional", _recording_scan_A(scan_kernels._bidirectional, scan_a))
            compiled(x)
    stats = {"unique_graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values()),
             "applied": report.lowering_counters(), "skipped": report.skipped_counters(), "scan_A": scan_a}
    return outputs, expected, stats


def _recording_scan_A(bidirectional, seen):
    """``kernels.selective_scan._bidirectional`` (what both fused scans call at run time), appending (shape, stride)
    of A_f and A_b to ``seen``."""
    def record(kernel, u_f, delta_f, A_f, *args):
        seen.extend((tuple(a.shape), a.stride()) for a in (A_f, args[6]))
        return bidirectional(kernel, u_f, delta_f, A_f, *args)
    return record


@pytest.fixture(scope="module")
def compiled_cpu(qvim):
    return _compile_and_run(qvim, "cpu")


def test_compiled_matches_eager(compiled_cpu):
    outputs, expected, _ = compiled_cpu
    for out, ref in zip(outputs, expected):
        assert_agrees(out, ref)


def test_whole_model_in_one_graph_with_one_recompile_for_the_batch(compiled_cpu):
    _, _, stats = compiled_cpu
    assert stats["graph_breaks"] == 0
    assert stats["unique_graphs"] == 2  # batch 8 static, then one graph for any batch >= 2


def test_scan_reads_A_channel_major_without_a_copy(compiled_cpu):
    """The model computes A_f / A_b channel-major (the layout the scan kernel reads), and the
    lowered, Inductor-compiled graph keeps that layout up to the call: the kernel wrapper copies nothing."""
    _, _, stats = compiled_cpu
    assert len(stats["scan_A"]) == 2 * EXPECTED["bidirectional_scan"]
    for shape, stride in stats["scan_A"]:
        assert stride == (1, shape[0])


def test_every_rewrite_fires_in_each_compiled_graph(compiled_cpu):
    _, _, stats = compiled_cpu
    graphs = stats["unique_graphs"]
    assert stats["applied"] == dict({k: v * graphs for k, v in EXPECTED.items() if v}, graphs_lowered=graphs)
    assert stats["skipped"] == {}


def _compiled_without_inductor(model, options=None) -> list[dict]:
    """Compile and run ``model`` with the backend, Inductor's compile_fx replaced by a recorder (the
    lowered graph runs as it is): per graph {"gm", "config_patches", "cache_key_tag"}."""
    calls = []

    def record(gm, example_inputs, config_patches):
        calls.append({"gm": gm, "config_patches": config_patches,
                      "cache_key_tag": torch.compiler.config.cache_key_tag})
        return gm.forward

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backend, "compile_fx", record)
        torch._dynamo.reset()
        with torch.no_grad():
            torch.compile(model, backend="ptq4vm", options=options)(images(2))
    return calls


@pytest.mark.parametrize("autotune, tuned", [(None, True), (True, True), (False, False)])
def test_autotune_false_gives_every_gemm_fixed_tiles(qvim, autotune, tuned):
    """options={"autotune": False} reaches the INT8 GEMMs: each fused GEMM call is told not to tune."""
    gm = _compiled_without_inductor(qvim, {"autotune": autotune})[0]["gm"]
    gemms = [n for n in gm.graph.nodes if any(is_custom_op(n, op) for op in backend.GEMMS)]
    assert len(gemms) == 12  # 6 linears in each of 2 blocks
    assert all(n.kwargs.get("autotune", True) is tuned for n in gemms)


def test_compiled_half_precision_vim_matches_eager(qvim):
    """A quantized Vim moved to fp16: compiled (Inductor with emulate_precision_casts, the backend's
    default) it rounds where eager rounds. Without that patch this model gives ~45 dB (torch 2.14)."""
    model = copy.deepcopy(qvim).half()
    x = images(4).half()
    torch._dynamo.reset()
    with torch.no_grad():
        got, expect = torch.compile(model, backend="ptq4vm", fullgraph=True)(x), model(x)
    assert got.dtype == torch.float16
    assert_agrees(got, expect, min_sqnr_db=80.0 if EMULATES_CASTS_ON_CPU else 40.0)


# --------------------------------------------------------------------------------------------
# a float model: lowered to the fused float ops
# --------------------------------------------------------------------------------------------


def test_compiled_float_vim_runs_the_fused_float_ops_and_matches_eager():
    """torch.compile(float_vim, backend="ptq4vm"): fullgraph, a dynamic batch, each graph's scan pairs
    and convs on the fused ops (the bidirectional scan runs), == eager to fp32 rounding."""
    outputs, expected, stats = _compile_and_run(tiny_vim(), "cpu")
    for out, ref in zip(outputs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    graphs = stats["unique_graphs"]
    assert stats["graph_breaks"] == 0 and graphs == 2
    assert stats["applied"] == dict({k: v * graphs for k, v in FLOAT_EXPECTED.items()}, graphs_lowered=graphs,
                                    float_graphs=graphs)
    assert stats["skipped"] == {}
    assert len(stats["scan_A"]) == 2 * FLOAT_EXPECTED["bidirectional_scan"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compiled_half_float_vim_rounds_like_eager(dtype):
    """A float Vim in fp16 / bf16: the fused conv and scan round where the model's ops round."""
    model, x = tiny_vim().to(dtype), images(4).to(dtype)
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad():
        got, expect = torch.compile(model, backend="ptq4vm", fullgraph=True)(x), model(x)
    assert report.lowering_counters() == dict(FLOAT_EXPECTED, graphs_lowered=1, float_graphs=1)
    assert got.dtype == dtype
    assert_agrees(got, expect, min_sqnr_db=80.0 if EMULATES_CASTS_ON_CPU else 40.0)


def test_float_vim_under_autograd_is_compiled_as_it_is():
    """Grad mode on and parameters that require grad: the fused ops have no backward, so the graph
    is not rewritten (Inductor as is, the scan's own autograd), and the counters say so."""
    model, x = tiny_vim(), images(2)
    torch._dynamo.reset()
    counters.clear()
    got = torch.compile(model, backend="ptq4vm", fullgraph=True)(x)
    assert report.lowering_counters() == {"graphs_kept_for_autograd": 1}
    assert got.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------


def test_one_rewrite_per_fusion_in_order():
    assert tuple(REWRITES) == FUSIONS


def test_options_defaults_and_patches():
    opts = BackendOptions.from_compile(None)
    assert opts.fusions == FUSIONS and opts.autotune is None and opts.cudagraphs is True
    default = {"emulate_precision_casts": True, "triton.cudagraphs": True}
    assert opts.inductor_patches(None) == default
    assert BackendOptions.from_compile({"autotune": True}).inductor_patches(None) == {**default, "max_autotune": True}
    assert BackendOptions.from_compile({"autotune": False}).inductor_patches(None) == default
    assert BackendOptions.from_compile({"cudagraphs": False}).inductor_patches(None) == {
        **default, "triton.cudagraphs": False}
    # a mode's patches come after the options, the ``inductor`` option last
    assert BackendOptions.from_compile(None).inductor_patches("max-autotune-no-cudagraphs") == {
        **default, "max_autotune": True, "coordinate_descent_tuning": True, "triton.cudagraphs": False}
    assert BackendOptions.from_compile({"inductor": {"triton.cudagraphs": True}}).inductor_patches(
        "max-autotune-no-cudagraphs")["triton.cudagraphs"] is True
    assert BackendOptions.from_compile({"inductor": {"emulate_precision_casts": False}}).inductor_patches(
        None) == {**default, "emulate_precision_casts": False}
    # the order of the names does not matter: the rewrites always run in FUSIONS order
    assert BackendOptions.from_compile({"fusions": ["linear_quantize", "bidirectional_scan"]}).fusions == (
        "bidirectional_scan", "linear_quantize")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"autotun": True}, r"unknown option\(s\) \['autotun'\]"),
        ({"fusions": ["int8_gemm"]}, r"unknown fusion\(s\) \['int8_gemm'\]"),
        ({"fusions": "linear_quantize"}, "must be a list of names"),
        ({"fusions": ["scan_quantize"]}, "enable both or neither"),
        ({"autotune": "yes"}, "must be True, False or None"),
        ({"cudagraphs": 1}, "'cudagraphs' must be a bool"),
        ({"inductor": {"max_autotun": True}}, r"unknown Inductor config \['max_autotun'\]"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        BackendOptions.from_compile(options)


def test_bad_option_through_torch_compile(qvim):
    torch._dynamo.reset()
    compiled = torch.compile(qvim, backend="ptq4vm", options={"fusion": ["linear_quantize"]})
    with pytest.raises(Exception, match=r"ptq4vm backend: unknown option\(s\) \['fusion'\]"), torch.no_grad():
        compiled(images(2))


def test_compilations_are_tagged_with_the_ops_fingerprint(qvim):
    """Inductor's caches see a hash of the op sources (stale code from an older fake implementation
    is never reused), after any tag of the user's."""
    with torch.compiler.config.patch(cache_key_tag="mine"):
        calls = _compiled_without_inductor(qvim)
    assert [c["cache_key_tag"] for c in calls] == [f"mine|{backend.ops_fingerprint()}"]
    assert backend.ops_fingerprint().startswith("ptq4vm-") and len(backend.ops_fingerprint()) == 23
    assert torch.compiler.config.cache_key_tag == ""


def test_outputs_of_cuda_graphs_are_cloned():
    """A CUDA graph's outputs are overwritten by its next replay: the backend hands out copies, except
    of outputs that alias an input (they are not in the graph's pool)."""
    pool = torch.zeros(3)

    def replay(x):  # the graph's output buffer, rewritten by every replay; and a view of the input
        pool.copy_(x)
        return (pool, 7, x[1:])

    run = backend.cloning_outputs(replay)
    x1, x2 = torch.ones(3), torch.full((3,), 2.0)
    first, constant, view = run(x1)
    second, _, _ = run(x2)
    assert torch.equal(first, x1) and torch.equal(second, x2) and constant == 7
    assert view.untyped_storage().data_ptr() == x1.untyped_storage().data_ptr()


def test_graphs_on_the_cpu_are_returned_as_compiled(qvim, monkeypatch):
    """Inductor runs CPU graphs without CUDA graphs: nothing to copy, the compiled function as is."""
    wrapped = []
    monkeypatch.setattr(backend, "cloning_outputs", lambda fn: wrapped.append(fn) or fn)
    calls = _compiled_without_inductor(qvim)
    assert [c["config_patches"]["triton.cudagraphs"] for c in calls] == [True] and wrapped == []


def test_grad_mode_is_a_clear_error(qvim):
    torch._dynamo.reset()
    with pytest.raises(Exception, match="have no gradient; call the compiled model under torch.no_grad"):
        torch.compile(qvim, backend="ptq4vm")(images(2))


# --------------------------------------------------------------------------------------------
# GPU: the compiled model runs the Triton kernels
# --------------------------------------------------------------------------------------------

KERNELS = {  # op -> the Triton kernel its CUDA implementation launches
    ops.int8_linear: "_int8_linear_kernel",
    ops.quantize_per_token: "_quantize_per_token_kernel",
    fused_ops.add_rmsnorm_quantize: "_add_rmsnorm_quantize_kernel",
    fused_ops.conv1d_silu_quantize: "_conv1d_silu_quantize_kernel",
    fused_ops.conv1d_silu: "_conv1d_silu_quantize_kernel",  # the same kernel, QUANT off
    fused_ops.bidirectional_scan: "_bidirectional_scan_kernel",
    fused_ops.bidirectional_scan_quantize: "_bidirectional_scan_kernel",
}


def _cuda_kernel_names(fn) -> str:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return " ".join(e.name for e in prof.events())


@pytest.mark.requires_cuda
def test_cuda_compiled_int8_matches_eager_and_runs_the_triton_kernels():
    model = quantize(tiny_vim(img_size=64, embed_dim=64), size=64).cuda()  # 17 tokens, d_inner 128
    outputs, expected, stats = _compile_and_run(model, "cuda", size=64)
    for out, ref in zip(outputs, expected):
        assert_agrees(out, ref)
    assert stats["skipped"] == {} and stats["graph_breaks"] == 0
    compiled = torch.compile(model, backend="ptq4vm", fullgraph=True)
    x = images(4, size=64).cuda()
    with torch.no_grad():
        names = _cuda_kernel_names(lambda: compiled(x))
    missing = sorted({k for k in KERNELS.values() if k not in names})
    assert not missing, f"Triton kernels {missing} did not run; the CUDA kernels were: {names[:2000]}"


@pytest.mark.requires_cuda
def test_cuda_graph_outputs_stay_valid_across_calls():
    """With the default CUDA graphs, outputs kept from earlier calls still hold their own results."""
    model = quantize(tiny_vim(img_size=64, embed_dim=64), size=64).cuda()
    compiled = torch.compile(model, backend="ptq4vm", fullgraph=True)
    inputs = [images(4, seed=s, size=64).cuda() for s in range(5)]  # warm-up, recording, replays
    with torch.no_grad():
        outputs = [compiled(x) for x in inputs]
        for out, x in zip(outputs, inputs):
            assert_agrees(out, model(x))


@pytest.mark.requires_cuda
def test_cuda_fused_ops_use_the_cuda_implementations():
    """On CUDA tensors the dispatcher picks the Triton implementation (not the reference)."""
    for op, kernel in KERNELS.items():
        args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in sample_args(op, 3))
        assert kernel in _cuda_kernel_names(lambda op=op, args=args: op(*args))


