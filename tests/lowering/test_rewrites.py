"""The rewrites on the graph Dynamo hands the backend: each fires the expected number of times on a
quantized Vim, not on what it must not touch, and the rewritten graph (run eagerly, fused ops on
their reference implementations) computes what the quantized model computes."""

import copy
import operator

import pytest
import torch

from ptq4vm_fx.lowering.backend import has_quantized_ops, lower_graph
from ptq4vm_fx.lowering.fuse_linear_quantize import LINEAR as INT8_LINEAR
from ptq4vm_fx.lowering.fuse_linear_quantize import _column_range
from ptq4vm_fx.lowering.fuse_scan_quantize import FUSED as SCAN_QUANTIZE
from ptq4vm_fx.lowering.match import bind_custom, is_custom_op, is_op, op_namespace
from ptq4vm_fx.lowering.options import FUSIONS

from .lowering_helpers import (
    EXPECTED,
    FLOAT_EXPECTED,
    GEMMS_LEFT,
    assert_agrees,
    dynamo_graph,
    images,
    quantize,
    tiny_vim,
)

NONE = dict.fromkeys(FUSIONS, 0)
DT_COLUMNS = 2 + 2 * 16  # x_proj's output in the TINY model: dt_rank + 2 * d_state


def _lowered(model, x, fusions=FUSIONS):
    """Lower the Dynamo graph of ``model``; returns (counts, eager output, lowered graph's output)."""
    gm, example_inputs = dynamo_graph(model, x)
    counts = lower_graph(gm, fusions)
    with torch.no_grad():
        return counts, model(x), gm(*example_inputs)[0], gm


def _ops_left(gm, namespace):
    """The ops of ``namespace`` the graph still calls, as "namespace.name"."""
    return sorted(str(n.target).removesuffix(".default") for n in gm.graph.nodes
                  if op_namespace(n.target) == namespace)


def test_every_rewrite_fires_on_a_quantized_vim(qvim, fresh_counters):
    counts, expect, got, gm = _lowered(qvim, images(3))
    assert counts == EXPECTED
    # every quantize went into a fused op; the GEMMs no fusion takes run their own kernels
    assert _ops_left(gm, "ptq4vm") == ["ptq4vm.int8_linear"] * GEMMS_LEFT
    assert_agrees(got, expect)
    assert fresh_counters.lowering_counters() == dict({k: v for k, v in EXPECTED.items() if v}, graphs_lowered=1)
    assert fresh_counters.skipped_counters() == {}


@pytest.mark.parametrize(
    "dropped, rewrite",
    [
        (("out_proj",), "scan_quantize"),
        (("in_proj",), "add_rmsnorm_quantize"),
        (("x_proj", "x_proj_b"), "conv1d_silu_quantize"),
        (("dt_proj", "dt_proj_b"), "linear_quantize"),
    ],
)
def test_a_float_linear_is_not_fused(dropped, rewrite, fresh_counters):
    """A config that leaves a linear in float: the fusion feeding it does not fire."""
    linears = tuple(n for n in ("in_proj", "x_proj", "dt_proj", "out_proj", "x_proj_b", "dt_proj_b")
                    if n not in dropped)
    model = quantize(tiny_vim(), linears=linears)
    counts, expect, got, gm = _lowered(model, images(2))
    assert counts[rewrite] == 0
    fused_gemms = counts["linear_quantize"] + counts["linear_softplus"] + counts["linear_silu"]
    assert _ops_left(gm, "ptq4vm").count("ptq4vm.int8_linear") + fused_gemms == 2 * len(linears)
    assert counts["bidirectional_scan"] == 2
    # the float conv fusion takes only the convs its quantizing form left: those feeding a float x_proj
    assert counts["conv1d_silu"] == (4 if rewrite == "conv1d_silu_quantize" else 0)
    assert_agrees(got, expect)
    assert fresh_counters.skipped_counters() == {}


def test_float_vim_lowers_to_the_float_fusions(fresh_counters):
    """A float Vim has no quantized op; of the rewrites those that quantize nothing fire (the scan
    pairs, the convs), leaving no ptq4vm op; the lowered graph computes the model's logits."""
    model = tiny_vim()
    gm, _ = dynamo_graph(model, images(2))
    assert not has_quantized_ops(gm)
    counts, expect, got, gm = _lowered(model, images(2))
    assert counts == dict(NONE, **FLOAT_EXPECTED)
    assert _ops_left(gm, "ptq4vm") == []
    assert _ops_left(gm, "ptq4vm_fused") == sorted(["ptq4vm_fused.bidirectional_scan"] * 2
                                                   + ["ptq4vm_fused.conv1d_silu"] * 4)
    assert not any(is_op(n, "silu") or is_op(n, "conv1d") for n in gm.graph.nodes)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)
    assert fresh_counters.skipped_counters() == {}


class _ConvSilu(torch.nn.Module):
    """conv1d + SiLU on (batch, channels, L) in Vim's causal spelling, with the conv's groups and stride."""

    def __init__(self, channels=8, groups=8, stride=1):
        super().__init__()
        self.conv = torch.nn.Conv1d(channels, channels, 4, stride=stride, groups=groups, padding=3)

    def forward(self, x):
        return torch.nn.functional.silu(self.conv(x)[..., :-3]), torch.nn.functional.silu(x)


@pytest.mark.parametrize("groups, stride, reason", [
    (8, 1, None), (1, 1, "not a depthwise conv1d"), (8, 2, "a strided conv1d")])
def test_float_conv1d_silu_only_where_the_kernel_applies(groups, stride, reason, fresh_counters):
    """The depthwise, unit-stride conv is fused; a dense or a strided one stays, with its reason; the
    SiLU of anything else is no candidate."""
    torch.manual_seed(0)
    model = _ConvSilu(groups=groups, stride=stride).eval()
    x = torch.randn(2, 8, 12)
    gm, example_inputs = dynamo_graph(model, x)
    assert lower_graph(gm, ["conv1d_silu"]) == {"conv1d_silu": int(reason is None)}
    assert fresh_counters.skipped_counters() == ({} if reason is None else {f"conv1d_silu: {reason}": 1})
    assert sum(is_op(n, "silu") for n in gm.graph.nodes) == (1 if reason is None else 2)
    with torch.no_grad():
        for got, expect in zip(gm(*example_inputs), model(x)):
            torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)


def test_dynamic_scales_are_not_fused_with_a_reason(fresh_counters):
    """Per-row dynamic quantization: no fused kernel takes its scales (the counters say why); the
    ptq4vm ops stay, and run their own kernels, which take per-row scales (the float fusions fire)."""
    counts, expect, got, gm = _lowered(quantize(tiny_vim(), method="dynamic"), images(2))
    assert counts == dict(NONE, **FLOAT_EXPECTED, linear_softplus=4, linear_silu=2)  # the GEMM takes per-row scales
    reason = "dynamic (per-row) activation scales"
    assert fresh_counters.skipped_counters() == {
        f"add_rmsnorm_quantize: {reason}": 2,
        f"conv1d_silu_quantize: {reason}": 4,
        f"scan_quantize: {reason}": 2,
        f"linear_quantize: {reason}": 4,
    }
    assert _ops_left(gm, "ptq4vm").count("ptq4vm.int8_linear") == 12 - 4 - 2
    assert_agrees(got, expect)


def test_summed_but_not_averaged_scans_are_not_fused(fresh_counters):
    counts, expect, got, gm = _lowered(quantize(tiny_vim(if_divide_out=False)), images(2))
    assert counts["bidirectional_scan"] == counts["scan_quantize"] == 0
    # out_proj's input is quantized on its own (the quantize op's kernel)
    assert _ops_left(gm, "ptq4vm").count("ptq4vm.quantize_per_token") == 2
    assert counts["linear_quantize"] == counts["linear_softplus"] == 4  # the softplus of each single scan
    assert fresh_counters.skipped_counters() == {
        "bidirectional_scan: the two directions are summed but not averaged": 2}
    assert_agrees(got, expect)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_vim_in_half_precision_lowers_completely(qvim, dtype, fresh_counters):
    """``qmodel.to(fp16 / bf16)``: norms, convs and scans run in half on an fp32 residual. Every
    rewrite but the softplus and SiLU ones still fire, and the fused ops round where the model's ops round: same
    logits. dt_proj stores delta and in_proj z in half, where the scan takes its softplus and SiLU in fp32: both
    stay in the scan."""
    model = copy.deepcopy(qvim).to(dtype)
    counts, expect, got, gm = _lowered(model, images(3).to(dtype))
    assert counts == dict(EXPECTED, linear_softplus=0, linear_silu=0)
    assert _ops_left(gm, "ptq4vm") == ["ptq4vm.int8_linear"] * (GEMMS_LEFT + 4 + 2)
    name = str(dtype).removeprefix("torch.")
    assert fresh_counters.skipped_counters() == {
        f"linear_softplus: dt_proj's output is {name}: softplus(delta) stored in it would be rounded where the "
        "scan keeps fp32": 2,
        f"linear_silu: in_proj's output is {name}: silu(z) stored in it would be rounded where the scan keeps "
        "fp32": 2}
    assert got.dtype == dtype
    assert_agrees(got, expect, min_sqnr_db=80.0)


class _Norm(torch.nn.Module):
    """An RMSNorm whose input is rounded to ``in_dtype`` and output to ``out_dtype``, then quantized."""

    def __init__(self, in_dtype, out_dtype, channels=8, tokens=4):
        super().__init__()
        self.in_dtype, self.out_dtype = in_dtype, out_dtype
        self.weight = torch.nn.Parameter(torch.rand(channels) + 0.5)
        self.register_buffer("inv_smooth", torch.ones(channels))
        self.register_buffer("scale", torch.full((tokens,), 0.02))
        self.register_buffer("zero_point", torch.zeros(tokens, dtype=torch.int32))

    def forward(self, x):
        xf = x.to(self.in_dtype).float()
        y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)) * self.weight
        return torch.ops.ptq4vm.quantize_per_token(y.to(self.out_dtype), self.inv_smooth, self.scale,
                                                   self.zero_point, 8)


@pytest.mark.parametrize("in_dtype, out_dtype, fused", [
    (torch.float16, torch.float16, True),
    (torch.bfloat16, torch.bfloat16, True),
    (torch.float16, torch.float32, False),
    (torch.float32, torch.bfloat16, False),
])
def test_a_norm_rounded_at_one_end_only_is_not_fused(in_dtype, out_dtype, fused, fresh_counters):
    """The kernel rounds the norm's input and output to one dtype: both or neither."""
    model = _Norm(in_dtype, out_dtype).eval()
    x = torch.randn(2, 4, 8)
    gm, example_inputs = dynamo_graph(model, x)
    assert lower_graph(gm, ["add_rmsnorm_quantize"]) == {"add_rmsnorm_quantize": int(fused)}
    reason = f"the norm rounds its input to {in_dtype} but its output to {out_dtype}"
    assert fresh_counters.skipped_counters() == ({} if fused else {f"add_rmsnorm_quantize: {reason}": 1})
    with torch.no_grad():
        assert torch.equal(gm(*example_inputs)[0], model(x))


def test_the_scan_stores_its_float_output_only_when_something_reads_it(qvim):
    """Vim reads the averaged scan output only through out_proj's quantizer: the fused scan writes
    just the codes. Give block 0's average another reader and that block's scan stores it too."""
    x = images(2)
    gm, example_inputs = dynamo_graph(qvim, x)
    averages = [n for n in gm.graph.nodes if is_op(n, "div")]  # (y_f + y_b) / 2, one per block
    assert len(averages) == 2
    with gm.graph.inserting_after(averages[0]):
        extra = gm.graph.call_method("sum", (averages[0],))
    output = next(n for n in gm.graph.nodes if n.op == "output")
    output.args = ((*output.args[0], extra),)
    gm.recompile()
    with torch.no_grad():
        expect_total = gm(*example_inputs)[1]  # the unlowered graph: the reference ops
    lower_graph(gm)
    scans = [n for n in gm.graph.nodes if is_custom_op(n, SCAN_QUANTIZE)]
    assert [bind_custom(n, SCAN_QUANTIZE)["store_out"] for n in scans] == [True, False]
    with torch.no_grad():
        logits, total = gm(*example_inputs)
    assert_agrees(logits, qvim(x))
    torch.testing.assert_close(total, expect_total)  # the stored float output is the average


def test_only_the_enabled_fusions_run(qvim):
    counts, expect, got, gm = _lowered(qvim, images(2), fusions=["linear_quantize"])
    assert counts == {"linear_quantize": 4}
    assert _ops_left(gm, "ptq4vm").count("ptq4vm.quantize_per_token") == 12 - 4
    assert_agrees(got, expect)


def test_parameters_as_get_attr_nodes(qvim, fresh_counters):
    """Module state as ``get_attr`` nodes placed at their first use (older Dynamo, or
    inline_inbuilt_nn_modules=False) instead of placeholders: same rewrites, same result."""
    x = images(2)
    gm, example_inputs = dynamo_graph(qvim, x)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for i, (node, value) in enumerate(zip(placeholders[1:], example_inputs[1:])):
        gm.register_buffer(f"state_{i}", value)
        with gm.graph.inserting_before(min(node.users, key=_position(gm))):
            attr = gm.graph.get_attr(f"state_{i}")
        attr.meta = dict(node.meta)
        node.replace_all_uses_with(attr)
        gm.graph.erase_node(node)
    gm.recompile()
    assert lower_graph(gm) == EXPECTED
    with torch.no_grad():
        assert_agrees(gm(x)[0], qvim(x))


def _position(gm):
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    return order.__getitem__


def test_batch_is_symbolic_and_tokens_static(qvim):
    """With a dynamic batch the fused ops take a symbolic batch and the static token count."""
    gm, example_inputs = dynamo_graph(qvim, images(3), dynamic_batch=True)
    assert lower_graph(gm) == EXPECTED
    fused = [n for n in gm.graph.nodes if op_namespace(n.target) == "ptq4vm_fused"]
    for node in fused:
        out = node.meta["example_value"]
        # every output but the scan's unused float output (stored nowhere, empty: store_out=False)
        outputs = [t for t in (out if isinstance(out, tuple) else (out,)) if t.dim() > 1]
        assert outputs
        for t in outputs:
            assert isinstance(t.shape[0], torch.SymInt)
            assert all(isinstance(s, int) for s in t.shape[1:])
    getitems = [n for n in gm.graph.nodes if n.target is operator.getitem and n.args[0] in fused]
    assert all("example_value" in n.meta for n in getitems)
    # the graph takes the batch size as an input of its own, before the images
    x = images(5)
    args = [5 if isinstance(a, (int, torch.SymInt)) else x if a.shape == (3, 3, 32, 32) else a for a in example_inputs]
    with torch.no_grad():
        assert_agrees(gm(*args)[0], qvim(x))


@pytest.mark.parametrize("index, columns", [
    ((Ellipsis, slice(None, 2, None)), (0, 2)),
    ((slice(None), slice(None), slice(2, 6, 1)), (2, 6)),
    ((Ellipsis, slice(-4, None, None)), (DT_COLUMNS - 4, DT_COLUMNS)),
    ((Ellipsis, slice(None, 100, None)), (0, DT_COLUMNS)),
    ((Ellipsis, slice(0, 4, 2)), None),  # strided
    ((Ellipsis, slice(3, 3, None)), None),  # empty
    ((slice(None), slice(0, 2), slice(None)), None),  # a token range, not a column range
    ((slice(None), slice(None, 2)), None),  # the second dim of three
])
def test_linear_quantize_reads_the_column_range(qvim, index, columns):
    """The slices of an INT8 linear's output that its epilogue can quantize: step-1 column ranges."""
    gm, _ = dynamo_graph(qvim, images(2))
    sliced = next(n for n in gm.graph.nodes if n.target is operator.getitem and is_custom_op(n.args[0], INT8_LINEAR))
    sliced.args = (sliced.args[0], index)
    assert _column_range(sliced) == columns
