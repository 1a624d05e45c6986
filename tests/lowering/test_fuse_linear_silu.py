"""The scan's SiLU(z) moved into in_proj's GEMM epilogue (lowering/fuse_linear_silu.py): counted, exact on the
references and on the Triton kernels, and left alone where z's columns have other readers (fp16 / bf16 in_proj:
tests/lowering/test_rewrites.py's half-precision test)."""

import operator

import pytest
import torch

from ptq4vm_fx.lowering.backend import lower_graph
from ptq4vm_fx.lowering.fuse_linear_silu import FUSED, LINEAR, SCANS
from ptq4vm_fx.lowering.match import bind_custom, is_custom_op
from ptq4vm_fx.lowering.options import FUSIONS

from .lowering_helpers import assert_agrees, dynamo_graph, images
from .test_kernels_end_to_end import _on_kernels, _run_triton_kernels

WITHOUT = [f for f in FUSIONS if f != "linear_silu"]


def _scans(gm):
    return [(n, packet) for n in gm.graph.nodes for packet in SCANS if is_custom_op(n, packet)]


def _in_projs(gm):
    return [n for n in gm.graph.nodes if is_custom_op(n, LINEAR) and "in_proj" in n.name]


def test_in_proj_takes_the_scans_silu_and_the_logits_stay_exact(qvim, fresh_counters, device):
    """Each block's in_proj becomes int8_linear_silu from z's first column (d_inner), its scan reads z with
    z_silu; on the references and on the Triton kernels (interpreter) the logits equal the lowering's without
    this rewrite bit for bit, and eager's to >= 40 dB with the same argmax."""
    x = images(3)
    gm, example_inputs = dynamo_graph(qvim, x)
    base, base_inputs = dynamo_graph(qvim, x)
    d_inner = _in_projs(gm)[0].meta["example_value"].shape[-1] // 2
    assert lower_graph(base, WITHOUT)["bidirectional_scan"] == 2
    assert lower_graph(gm)["linear_silu"] == 2
    fused = [n for n in gm.graph.nodes if is_custom_op(n, FUSED)]
    assert len(fused) == 2 and not _in_projs(gm)
    assert [bind_custom(n, FUSED)["silu_start"] for n in fused] == [d_inner] * 2
    assert [bind_custom(n, p)["z_silu"] for n, p in _scans(gm)] == [True, True]
    assert fresh_counters.skipped_counters() == {}
    with torch.no_grad():
        got, expect = gm(*example_inputs)[0], base(*base_inputs)[0]
        assert torch.equal(got, expect)
        assert_agrees(got, qvim(x))
    _run_triton_kernels(gm)
    _run_triton_kernels(base)
    on = [[t.to(device) if isinstance(t, torch.Tensor) else t for t in inputs] for inputs in (example_inputs,
                                                                                            base_inputs)]
    assert torch.equal(_on_kernels(gm, on[0]), _on_kernels(base, on[1]))


@pytest.mark.parametrize("where", ["z", "z transposed", "in_proj"])
def test_z_read_elsewhere_keeps_the_scans_silu(qvim, fresh_counters, where):
    """Another reader of z (its column chunk, its transpose) or of in_proj's whole output: that block's in_proj
    stays, its scan computes silu(z), with the reason counted; the other block's pair is fused."""
    gm, _ = dynamo_graph(qvim, images(2))
    in_proj = _in_projs(gm)[0]
    chunk = next(iter(in_proj.users))
    z = next(n for n in chunk.users if n.args[1] == 1)
    reader = {"z": z, "z transposed": next(iter(z.users)), "in_proj": in_proj}[where]
    with gm.graph.inserting_after(reader):
        gm.graph.call_function(torch.neg, (reader,))
    assert lower_graph(gm)["linear_silu"] == 1
    assert fresh_counters.skipped_counters() == {"linear_silu: in_proj's z columns have other users": 1}
    assert is_custom_op(in_proj, LINEAR) and in_proj.graph is gm.graph
    assert [bind_custom(n, p)["z_silu"] for n, p in _scans(gm)] == [False, True]


def test_z_sliced_to_the_end_is_taken_and_a_slice_into_z_is_not(qvim, fresh_counters):
    """in_proj's output split by slices (``xz[..., :D]``, ``xz[..., D:]``) instead of chunk: the same rewrite;
    with the x slice reaching into z's columns (``xz[..., :D + 1]``, or ``xz[..., :-1]``: a negative stop), none."""
    for x_end, applied in ((lambda d: d, 2), (lambda d: d + 1, 0), (lambda d: -1, 0)):
        gm, example_inputs = dynamo_graph(qvim, images(2))
        with torch.no_grad():
            expect = gm(*example_inputs)[0]
        for in_proj in _in_projs(gm):
            chunk = next(iter(in_proj.users))
            d_inner = in_proj.meta["example_value"].shape[-1] // 2
            for part in list(chunk.users):
                x_stop = x_end(d_inner)
                index = (Ellipsis, slice(None, x_stop) if part.args[1] == 0 else slice(d_inner, None))
                with gm.graph.inserting_before(part):
                    sliced = gm.graph.call_function(operator.getitem, (in_proj, index))
                example = in_proj.meta["example_value"]
                with example.fake_mode:
                    sliced.meta["example_value"] = example[index]
                reaches = x_stop != d_inner and part.args[1] == 0
                if reaches:  # the conv still reads D columns
                    with gm.graph.inserting_after(sliced):
                        cut = gm.graph.call_function(operator.getitem, (sliced, (Ellipsis, slice(None, d_inner))))
                    with example.fake_mode:
                        cut.meta["example_value"] = sliced.meta["example_value"][..., :d_inner]
                part.replace_all_uses_with(cut if reaches else sliced)
                gm.graph.erase_node(part)
            gm.graph.erase_node(chunk)
        gm.recompile()
        assert lower_graph(gm)["linear_silu"] == applied
        reason = {} if applied else {"linear_silu: in_proj's z columns have other users": 2}
        assert fresh_counters.skipped_counters() == reason
        with torch.no_grad():
            assert torch.equal(gm(*example_inputs)[0], expect)
        torch._dynamo.utils.counters[fresh_counters.SKIPPED].clear()
