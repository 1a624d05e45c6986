"""The vmamba family (models/vmamba.py FAMILY): canonical capture, smoothing folds, PTQ4VM end to end,
save/load, the fixed image size and the ptq4vm backend, on tiny random VSSMs (8x8 images, patch 2:
16 tokens in stage 1, 4 in stage 2)."""

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

import ptq4vm_fx
from ptq4vm_fx.capture import blocks, capture
from ptq4vm_fx.errors import InputError
from ptq4vm_fx.evaluate import sqnr_db
from ptq4vm_fx.lowering import report
from ptq4vm_fx.lowering.backend import lower_graph
from ptq4vm_fx.models.family import family_of
from ptq4vm_fx.models.vmamba import VSSM
from ptq4vm_fx.passes.fold_smoothing import fold_smoothing
from ptq4vm_fx.quant.linear import FakeQuantLinear, QuantizedLinear
from ptq4vm_fx.report.analysis import analyse

from ..conftest import randomly_smoothed
from ..lowering.lowering_helpers import dynamo_graph

TINY = dict(patch_size=2, in_chans=1, num_classes=10, depths=[1, 1], dims=[8, 16], ssm_d_state=2, ssm_ratio=1.0,
            mlp_ratio=2.0, forward_type="v05_noz", downsample_version="v3", patchembed_version="v1", imgsize=8)
# the SiLU z gate (out_proj reads out_norm(y) * z) and the gated MLP (fc2 reads x * act(z))
GATED = dict(TINY, forward_type="v3", gmlp=True, downsample_version="v2", ssm_dt_rank=2)
DIRECTION_LINEARS = [f"{kind}_{k}" for kind in ("x_proj", "dt_proj") for k in range(4)]


def tiny_vssm(seed: int = 0, **overrides) -> VSSM:
    torch.manual_seed(seed)
    return VSSM(**dict(TINY, **overrides)).eval()


def images(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def quantize(model, method: str = "pts_smooth", preset: str = "w8a8", **options):
    config = ptq4vm_fx.QuantConfig.preset_config(preset, method, **options)
    prepared = ptq4vm_fx.prepare(model, images(1), config)
    with torch.no_grad():
        prepared(images(16, seed=2))
    return prepared


@pytest.fixture(scope="module")
def prepared():
    return quantize(tiny_vssm())


@pytest.mark.parametrize("config", [TINY, GATED], ids=["noz", "gated"])
def test_canonical_capture_computes_the_model_with_per_direction_linears(config):
    model = VSSM(**config).eval()
    gm = capture(model)
    x = images(3)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-6)
    assert family_of(model).name == "vmamba" and gm.meta["img_size"] == (8, 8)
    for name, block in blocks(gm):
        linears = {n.target for n in block.graph.nodes
                   if n.op == "call_module" and isinstance(block.get_submodule(n.target), nn.Linear)}  # fmt: skip
        assert linears == {"op.in_proj", "op.out_proj", "mlp.fc1", "mlp.fc2", *(f"op.{n}" for n in DIRECTION_LINEARS)}
        assert not any(k.endswith(("x_proj_weight", "dt_projs_weight")) for k, _ in block.named_parameters())
        op = model.get_submodule(name).op
        for k in range(4):
            assert torch.equal(block.get_submodule(f"op.x_proj_{k}").weight, op.x_proj_weight[k])
            assert torch.equal(block.get_submodule(f"op.dt_proj_{k}").weight, op.dt_projs_weight[k])


@pytest.mark.parametrize("config", [TINY, GATED], ids=["noz", "gated"])
def test_smoothing_folds_exactly_into_norms_and_x_proj_rows(config):
    """in_proj into norm, fc1 into norm2, out_proj into out_norm (through its cast and the z product),
    dt_proj_k into x_proj_k's rows; x_proj_k and fc2 keep their explicit 1/m."""
    model = VSSM(**config).eval()
    x = images(8)
    gm = randomly_smoothed(model, x)
    with torch.no_grad():
        expected = model(x)
        assert fold_smoothing(gm) == 7 * 2
        torch.testing.assert_close(gm(x), expected, rtol=1e-4, atol=1e-5)
    folded = {n.rpartition(".")[2] for n, m in gm.named_modules() if isinstance(m, FakeQuantLinear) and m.input_folded}
    assert folded == {"in_proj", "out_proj", "fc1", *(f"dt_proj_{k}" for k in range(4))}


def test_integer_model_follows_the_simulation(prepared):
    qmodel, sim = ptq4vm_fx.convert(prepared), ptq4vm_fx.convert(prepared, simulate=True)
    assert qmodel.meta["packed"] == 12 * 2 and qmodel.meta["folded"] == 7 * 2
    assert all(m.tokens == 16 for n, m in qmodel.named_modules() if isinstance(m, QuantizedLinear) and "layers.0" in n)
    x = images(32, seed=3)
    with torch.no_grad():
        yq, ys = qmodel(x), sim(x)
    assert sqnr_db(ys, yq) >= 40.0
    assert torch.equal(yq.argmax(1), ys.argmax(1))


def test_ptq4vm_runs_jlss_per_vss_block():
    model = tiny_vssm()
    sim = ptq4vm_fx.convert(quantize(model, "ptq4vm", "w4a4", jlss_epochs=2, grid_samples=8), simulate=True)
    stats = sim.meta["block_stats"]
    assert list(stats) == ["layers.0.blocks.0", "layers.1.blocks.0"]
    assert all(len(s["epoch_losses"]) == 2 for s in stats.values())
    assert ptq4vm_fx.QuantConfig.from_dict(sim.meta["quant_config"]).alpha == 0.65
    x = images(32, seed=3)
    with torch.no_grad():
        assert sqnr_db(model(x), sim(x)) > 10.0


def test_save_load_round_trip(prepared, tmp_path):
    qmodel = ptq4vm_fx.convert(prepared)
    ptq4vm_fx.save(qmodel, tmp_path / "q.pt")
    loaded = ptq4vm_fx.load(tmp_path / "q.pt")
    assert "layers.0.blocks.0.op.x_proj_3.wq" in loaded.state_dict()
    x = images(8, seed=4)
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))


def test_other_image_sizes_are_refused(prepared):
    qmodel = ptq4vm_fx.convert(prepared)
    with pytest.raises(InputError, match="input image size 12x12 does not match the model's 8x8"):
        qmodel(torch.randn(2, 1, 12, 12))
    with pytest.raises(InputError, match="input image size 16x16"):
        prepared(torch.randn(2, 1, 16, 16))  # a calibration batch
    with pytest.raises(InputError, match="example inputs are 16x16 images but VSSM is configured for 8x8"):
        ptq4vm_fx.prepare(tiny_vssm(), torch.randn(1, 1, 16, 16), "w8a8")


def _compiled(qmodel):
    """Lowering counters (applied, skipped) of compiling ``qmodel`` (fullgraph, CPU), checked against eager."""
    torch._dynamo.reset()
    counters[report.APPLIED].clear()
    counters[report.SKIPPED].clear()
    compiled = torch.compile(qmodel, backend="ptq4vm", fullgraph=True)
    x = images(6, seed=5)
    with torch.no_grad():
        out, ref = compiled(x), qmodel(x)
    assert sqnr_db(ref, out) >= 40.0 and torch.equal(out.argmax(1), ref.argmax(1))
    return report.lowering_counters(), report.skipped_counters()


def test_the_backend_lowers_vmamba(prepared):
    """x_proj's epilogue quantizes dt_proj's input (4 directions x 2 blocks); each block's cross scan is one
    ordered scan (counted: its kernel sums the four directions); no norm is an RMSNorm and no conv a
    conv1d, so nothing else matches, and no scan pair is left for the bidirectional kernel."""
    applied, skipped = _compiled(ptq4vm_fx.convert(prepared))
    assert applied == {"linear_quantize": 8, "ordered_scan": 2, "graphs_lowered": 1}
    assert skipped == {}


def test_dynamic_scales_are_left_to_the_reference_ops():
    """The rewrites on the graph Dynamo hands the backend (no Inductor): dynamic scales are named as the
    reason x_proj's epilogue does not quantize dt_proj's input; the rewritten graph still computes the model."""
    qmodel = ptq4vm_fx.convert(quantize(tiny_vssm(), "dynamic"))
    x = images(3, seed=5)
    gm, example_inputs = dynamo_graph(qmodel, x)
    counters[report.SKIPPED].clear()
    assert lower_graph(gm)["linear_quantize"] == 0
    assert report.skipped_counters()["linear_quantize: dynamic (per-row) activation scales"] == 8
    with torch.no_grad():
        torch.testing.assert_close(gm(*example_inputs)[0], qmodel(x))


def test_the_report_reads_the_canonical_linears(prepared):
    """The analysis captures the float model too, so its linears carry the quantized model's names."""
    model = tiny_vssm()
    x = images(8, seed=6)
    analysis = analyse(ptq4vm_fx.convert(prepared), model, x, model(x).argmax(1).detach())
    rows = {row["layer"]: row for row in analysis.rows}
    assert len(rows) == 24 and "layers.1.blocks.0.op.dt_proj_3" in rows
    assert all(row["output_cosine"] > 0.99 for row in rows.values())


def test_linears_are_chosen_by_name_or_family_pattern():
    model = tiny_vssm()

    def observed(linears):
        config = ptq4vm_fx.QuantConfig(method="pts", linears=linears)
        return sorted({n.rpartition(".")[2] for n, _ in ptq4vm_fx.prepare(model, images(1), config).named_modules()
                       if n.endswith("_observer")})  # fmt: skip

    assert observed(("x_proj_[0-9]*",)) == [f"x_proj_{k}_observer" for k in range(4)]
    assert observed(("dt_proj_2", "fc2")) == ["dt_proj_2_observer", "fc2_observer"]
    with pytest.raises(InputError, match=r"linears \['x_proj_b'\] are not quantizable linears of a vmamba model"):
        observed(("x_proj_b",))


def test_a_file_with_a_malformed_image_size_is_refused(prepared, tmp_path):
    ptq4vm_fx.save(ptq4vm_fx.convert(prepared), tmp_path / "q.pt")
    obj = torch.load(tmp_path / "q.pt", weights_only=True)
    assert obj["img_size"] == [8, 8]
    obj["img_size"] = [8, "8"]
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(InputError, match=r"malformed ptq4vm_fx file \(image size \[8, '8'\]\)"):
        ptq4vm_fx.load(tmp_path / "bad.pt")
    obj["img_size"] = [16, 16]  # a VSSM runs at its imgsize
    torch.save(obj, tmp_path / "other.pt")
    with pytest.raises(InputError, match="does not match the model it describes: it records image size 16x16, the "
                                         "model is built for 8x8"):
        ptq4vm_fx.load(tmp_path / "other.pt")


def test_an_image_smaller_than_a_patch_is_named():
    model = tiny_vssm()  # patch embed v1, 2x2 patches
    with pytest.raises(InputError, match="input image size 1x3 is smaller than the model's 2x2 patches"):
        model(torch.randn(1, 1, 1, 3))
    with pytest.raises(InputError, match="input image size 1x1 is smaller than the model's 2x2 patches"):
        ptq4vm_fx.prepare(model, torch.randn(1, 1, 1, 1), "w8a8")
