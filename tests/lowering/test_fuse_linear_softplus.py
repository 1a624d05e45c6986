"""The scan's softplus moved into dt_proj's GEMM epilogue (lowering/fuse_linear_softplus.py): counted, exact,
and left alone where a dt_proj output has other readers or a scan takes no softplus (fp16 / bf16 dt_proj:
tests/lowering/test_rewrites.py's half-precision test)."""

import torch

from ptq4vm_fx.lowering.backend import lower_graph
from ptq4vm_fx.lowering.fuse_linear_softplus import FUSED, LINEAR, SCANS
from ptq4vm_fx.lowering.match import bind_custom, is_custom_op

from .lowering_helpers import dynamo_graph, images


def _scans(gm):
    return [(n, packet) for n in gm.graph.nodes for packet in SCANS if is_custom_op(n, packet)]


def test_the_scans_take_a_softplus_d_delta_and_the_logits_stay_exact(qvim, fresh_counters):
    """Alone (two single-direction scans a block) and after the scan fusions (one bidirectional scan): every
    dt_proj GEMM takes the softplus, no scan keeps one; on the references the logits equal eager's bit for bit."""
    x = images(3)
    for fusions, scan_ops in ((["linear_softplus"], 4), (None, 2)):
        gm, example_inputs = dynamo_graph(qvim, x)
        counts = lower_graph(gm, *([fusions] if fusions else []))
        assert counts["linear_softplus"] == 4
        assert sum(is_custom_op(n, FUSED) for n in gm.graph.nodes) == 4
        scans = _scans(gm)
        assert len(scans) == scan_ops
        for node, packet in scans:
            args = bind_custom(node, packet)
            assert args["delta_softplus"] is False
            assert all(v is None for k, v in args.items() if k.startswith("delta_bias"))
        with torch.no_grad():
            got, expect = gm(*example_inputs)[0], qvim(x)
        if fusions:  # nothing else fused: the same operations in the same order
            assert torch.equal(got, expect)
    assert fresh_counters.skipped_counters() == {}


def test_a_dt_proj_output_read_elsewhere_keeps_the_scans_softplus(qvim, fresh_counters):
    gm, example_inputs = dynamo_graph(qvim, images(2))
    first = next(n for n in gm.graph.nodes if is_custom_op(n, LINEAR) and "dt_proj" in n.name)
    with gm.graph.inserting_after(first):
        gm.graph.call_function(torch.neg, (first,))  # another reader of dt_proj's output
    counts = lower_graph(gm)
    assert counts["linear_softplus"] == 2  # the other block's pair; this block's scan keeps both
    assert fresh_counters.skipped_counters() == {"linear_softplus: dt_proj's output has other users": 1}
    assert is_custom_op(first, LINEAR) and first.graph is gm.graph
    assert [bind_custom(n, p)["delta_softplus"] for n, p in _scans(gm)] == [True, False]


def test_a_scan_without_softplus_is_left_alone(qvim, fresh_counters):
    gm, _ = dynamo_graph(qvim, images(2))
    for node, packet in _scans(gm):
        node.update_arg([a.name for a in packet.default._schema.arguments].index("delta_softplus"), False)
    assert lower_graph(gm, ["linear_softplus"]) == {"linear_softplus": 0}
    assert fresh_counters.skipped_counters() == {}
    assert not any(is_custom_op(n, FUSED) for n in gm.graph.nodes)


def test_a_delta_bias_computed_after_dt_proj_moves_the_fused_gemm(qvim, fresh_counters):
    """A scan whose delta_bias is computed after dt_proj (VMamba's ``dt_projs_bias.float()``): the fused GEMM
    goes after it, the transposes between it and the scan with it; the graph computes what it did."""
    gm, example_inputs = dynamo_graph(qvim, images(2))
    node, packet = _scans(gm)[0]
    names = [a.name for a in packet.default._schema.arguments]
    skip = node.args[names.index("D")]  # computed right before the scan, after dt_proj
    with gm.graph.inserting_before(node):
        bias = gm.graph.call_function(torch.mul, (skip, 0.25))
    example = skip.meta["example_value"]
    with example.fake_mode:
        bias.meta["example_value"] = example * 0.25
    node.update_arg(names.index("delta_bias"), bias)
    gm.recompile()
    with torch.no_grad():
        expect = gm(*example_inputs)[0]
    assert lower_graph(gm, ["linear_softplus"]) == {"linear_softplus": 4}
    assert fresh_counters.skipped_counters() == {}
    fused = next(n for n in gm.graph.nodes if is_custom_op(n, FUSED) and bias in n.args)
    order = list(gm.graph.nodes)
    assert order.index(bias) < order.index(fused) < order.index(node)
    with torch.no_grad():
        assert torch.equal(gm(*example_inputs)[0], expect)
