"""The local_vssm and local_vim families (models/localmamba.py): dispatch apart from Vim and VMamba,
canonical capture, smoothing folds, PTQ4VM end to end, save/load, fixed image sizes and the ptq4vm
backend, on tiny random models (8x8 images, patch 2: a 4x4 map; a w3 direction pads it to 6x6, so its
x_proj sees 36 tokens)."""

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
from ptq4vm_fx.models.localmamba import LocalVim, LocalVSSM
from ptq4vm_fx.passes.fold_smoothing import fold_smoothing
from ptq4vm_fx.quant.linear import FakeQuantLinear, QuantizedLinear

from ..conftest import randomly_smoothed, tiny_vim
from ..lowering.lowering_helpers import dynamo_graph
from .test_vmamba_quant import _compiled, tiny_vssm

DIRECTIONS = [["h", "v_flip", "w3", "w2_flip"], ["h_flip", "v"]]
VSSM_CONFIG = dict(patch_size=2, in_chans=1, num_classes=10, depths=[1, 1], dims=[8, 16], ssm_d_state=2,
                   ssm_ratio=2.0, directions=DIRECTIONS)
VIM_CONFIG = dict(img_size=8, patch_size=2, depth=2, embed_dim=16, channels=1, num_classes=10,
                  ssm_cfg=dict(d_state=4), rms_norm=True, residual_in_fp32=True, fused_add_norm=True,
                  if_abs_pos_embed=True, if_cls_token=True, use_middle_cls_token=True, directions=DIRECTIONS)
# LayerNorm blocks, RoPE between blocks, mean pooling, no class token
VIM_ROPE = dict(VIM_CONFIG, rms_norm=False, if_cls_token=False, use_middle_cls_token=False, if_rope=True,
                if_rope_residual=True, final_pool_type="mean")
# the folds of each model: (in_proj, out_proj?, dt_proj_i) per block
FOLDED = {"local_vssm": {"in_proj", "out_proj", "dt_proj_0", "dt_proj_1", "dt_proj_2", "dt_proj_3"},
          "local_vim": {"in_proj", "dt_proj_0", "dt_proj_1", "dt_proj_2", "dt_proj_3"}}
FOLD_COUNT = {"local_vssm": 6 + 4, "local_vim": 5 + 3}


def build(kind: str, seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    cls, config = {"vssm": (LocalVSSM, VSSM_CONFIG), "vim": (LocalVim, VIM_CONFIG), "rope": (LocalVim, VIM_ROPE)}[kind]
    return cls(**dict(config, **overrides)).eval()


def images(batch: int, seed: int = 1, size: int = 8) -> torch.Tensor:
    return torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(seed))


def quantize(model, method="pts_smooth", preset="w8a8", **options):
    prepared = ptq4vm_fx.prepare(model, images(1), ptq4vm_fx.QuantConfig.preset_config(preset, method, **options))
    with torch.no_grad():
        prepared(images(16, seed=2))
    return prepared


@pytest.fixture(scope="module", params=["vssm", "vim"])
def prepared(request):
    model = build(request.param)
    return model, quantize(model)


def test_each_model_is_its_own_family():
    """LocalVim's blocks subclass Vim's Block and LocalVSSM's have VMamba's class name: dispatch is by
    the model's class, so neither is taken for the other family, nor Vim or VSSM for LocalMamba."""
    names = {"vssm": "local_vssm", "vim": "local_vim", "rope": "local_vim"}
    for kind, family in names.items():
        assert family_of(build(kind)).name == family
    assert family_of(tiny_vim()).name == "vim" and family_of(tiny_vssm()).name == "vmamba"
    gm = capture(build("vim"))
    assert [type(gm.get_submodule(name)).__name__ for name in ("layers.0", "layers.1")] == ["CapturedBlock"] * 2
    assert gm.meta["family"] == "local_vim" and capture(tiny_vim()).meta["family"] == "vim"


@pytest.mark.parametrize("kind", ["vssm", "vim", "rope"])
def test_canonical_capture_computes_the_model_with_per_direction_linears(kind):
    model = build(kind)
    gm = capture(model, (8, 8))
    x = images(3)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-6)
    for (_, block), directions in zip(blocks(gm), DIRECTIONS):
        names = {n.target.rpartition(".")[2] for n in block.graph.nodes
                 if n.op == "call_module" and isinstance(block.get_submodule(n.target), nn.Linear)}  # fmt: skip
        per_direction = {f"{kind}_{i}" for kind in ("x_proj", "dt_proj") for i in range(len(directions))}
        assert names == {"in_proj", "out_proj", "global_reduce", "channel_select", *per_direction}
        assert not any(k.endswith(("x_proj_weight", "dt_projs_weight")) for k, _ in block.named_parameters())


def test_a_local_vssm_needs_its_image_size_at_capture():
    with pytest.raises(InputError, match="LocalVSSM takes any image size: capture needs the one it will run at"):
        capture(build("vssm"))


@pytest.mark.parametrize("kind", ["vssm", "vim", "rope"])
def test_smoothing_folds_exactly(kind):
    """in_proj into the block norm, dt_proj_i into x_proj_i's rows, LocalVSSM's out_proj into out_norm through
    its cast and the z product; x_proj_i (conv + SiLU) and LocalVim's out_proj (sum of gated directions) keep 1/m."""
    model = build(kind)
    family = family_of(model)
    x = images(8)
    gm = randomly_smoothed(model, x, (8, 8))
    with torch.no_grad():
        expected = model(x)
        assert fold_smoothing(gm) == FOLD_COUNT[family.name]
        torch.testing.assert_close(gm(x), expected, rtol=1e-4, atol=1e-5)
    folded = {n.rpartition(".")[2] for n, m in gm.named_modules() if isinstance(m, FakeQuantLinear) and m.input_folded}
    assert folded == FOLDED[family.name]


def test_integer_model_follows_the_simulation(prepared):
    _, calibrated = prepared
    qmodel, sim = ptq4vm_fx.convert(calibrated), ptq4vm_fx.convert(calibrated, simulate=True)
    tokens = {n.rpartition(".")[2]: m.tokens for n, m in qmodel.named_modules()
              if isinstance(m, QuantizedLinear) and n.startswith("layers.0")}  # fmt: skip
    extra = 1 if family_of(prepared[0]).name == "local_vim" else 0  # the class token
    # w3 on 4x4 is padded to 6x6: LocalVim's x_proj_2 runs on the padded sequence, LocalVSSM's on the 16 tokens
    # (its ordered scan reads the padded tokens as zeros)
    assert tokens["x_proj_2"] == tokens["dt_proj_2"] == (36 + extra if extra else 16)
    assert tokens["x_proj_0"] == tokens["in_proj"] == 16 + extra
    x = images(32, seed=3)
    with torch.no_grad():
        yq, ys = qmodel(x), sim(x)
    assert sqnr_db(ys, yq) >= 40.0
    assert torch.equal(yq.argmax(1), ys.argmax(1))


@pytest.mark.parametrize("kind", ["vssm", "rope"])
def test_ptq4vm_runs_jlss_per_block(kind):
    model = build(kind)
    sim = ptq4vm_fx.convert(quantize(model, "ptq4vm", "w4a4", jlss_epochs=2, grid_samples=8), simulate=True)
    stats = sim.meta["block_stats"]
    assert list(stats) == (["layers.0.blocks.0", "layers.1.blocks.0"] if kind == "vssm" else ["layers.0", "layers.1"])
    assert all(len(s["epoch_losses"]) == 2 for s in stats.values())
    x = images(32, seed=3)
    with torch.no_grad():
        assert sqnr_db(model(x), sim(x)) > 10.0


def test_save_load_round_trip(prepared, tmp_path):
    _, calibrated = prepared
    qmodel = ptq4vm_fx.convert(calibrated)
    ptq4vm_fx.save(qmodel, tmp_path / "q.pt")
    loaded = ptq4vm_fx.load(tmp_path / "q.pt")
    assert loaded.meta["family"] == qmodel.meta["family"] and loaded.meta["img_size"] == (8, 8)
    x = images(8, seed=4)
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))


def test_sizes_the_float_model_takes_are_refused_once_captured(prepared):
    """LocalVSSM runs any size in float and LocalVim any size with its patch grid (7x7 pads to 8x8's
    grid); once captured, only the calibration size runs (a window or token count would change)."""
    model, calibrated = prepared
    other = 12 if isinstance(model, LocalVSSM) else 7
    with torch.no_grad():
        model(torch.randn(2, 1, other, other))
    for quantized in (calibrated, ptq4vm_fx.convert(calibrated)):
        with pytest.raises(InputError, match=f"input image size {other}x{other} does not match the model's 8x8"):
            quantized(torch.randn(2, 1, other, other))


@pytest.mark.parametrize("simulate", [False, True])
def test_a_local_vssm_file_at_another_size_runs_into_its_token_counts(simulate, tmp_path):
    """A LocalVSSM runs at the size its file records (the model fixes none): a file claiming another size
    than its scales were calibrated for loads, and its first quantized linear refuses that size's tokens."""
    ptq4vm_fx.save(ptq4vm_fx.convert(quantize(build("vssm")), simulate=simulate), tmp_path / "q.pt")
    obj = torch.load(tmp_path / "q.pt", weights_only=True)
    obj["img_size"] = [12, 12]
    torch.save(obj, tmp_path / "q12.pt")
    with pytest.raises(InputError, match="36 tokens but the .*calibrated for 16"):
        ptq4vm_fx.load(tmp_path / "q12.pt")(images(2, size=12))


def test_an_image_smaller_than_a_patch_is_named():
    with pytest.raises(InputError, match="input image size 1x1 is smaller than the model's 2x2 patches"):
        build("vssm")(torch.randn(1, 1, 1, 1))


def test_local_vim_is_lowered_by_the_backend(fresh_counters):
    """torch.compile on the CPU == eager; per block the add + RMSNorm quantize (in_proj), per direction the
    ordered conv1d + SiLU quantize (x_proj_i), x_proj_i's epilogue quantize (dt_proj_i), dt_proj_i's epilogue
    softplus (its scan's) and one counted ordered scan; nothing skipped (no two scans are summed: each
    direction is gated by BiAttn first)."""
    qmodel = ptq4vm_fx.convert(quantize(build("vim")))
    torch._dynamo.reset()
    compiled = torch.compile(qmodel, backend="ptq4vm", fullgraph=True)
    x = images(6, seed=5)
    with torch.no_grad():
        out, ref = compiled(x), qmodel(x)
    assert sqnr_db(ref, out) >= 40.0 and torch.equal(out.argmax(1), ref.argmax(1))
    assert fresh_counters.lowering_counters() == {"add_rmsnorm_quantize": 2, "conv1d_silu_quantize": 6,
                                                   "linear_quantize": 6, "linear_softplus": 6, "ordered_scan": 6,
                                                   "graphs_lowered": 1}
    assert fresh_counters.skipped_counters() == {}


@pytest.mark.parametrize("kind, applied", [("vssm", {"linear_quantize": 6}), ("rope", {"conv1d_silu_quantize": 6,
                                                                                      "linear_quantize": 6,
                                                                                      "linear_softplus": 6})])
def test_the_rewrites_on_local_mamba_graphs(kind, applied, fresh_counters):
    """The rewrites on the graph Dynamo hands the backend, run eagerly: LocalVSSM's 2D convs and LayerNorms and
    LocalVim's LayerNorm blocks match no norm or conv fusion; the lowered graph computes the model."""
    qmodel = ptq4vm_fx.convert(quantize(build(kind)))
    x = images(3, seed=5)
    gm, example_inputs = dynamo_graph(qmodel, x)
    counts = lower_graph(gm)
    assert {k: v for k, v in counts.items() if v} == applied
    assert fresh_counters.skipped_counters() == {}
    with torch.no_grad():
        torch.testing.assert_close(gm(*example_inputs)[0], qmodel(x))


def test_local_vssm_is_lowered_by_the_backend():
    """torch.compile on the CPU == eager; per direction x_proj_i's epilogue quantizes dt_proj_i's input and the
    scan is one counted ordered scan (padded w3 windows, a column merge), the 2D convs and LayerNorms match
    no fusion; nothing skipped."""
    applied, skipped = _compiled(ptq4vm_fx.convert(quantize(build("vssm"))))
    assert applied == {"linear_quantize": 6, "ordered_scan": 6, "graphs_lowered": 1}
    assert skipped == {}


@pytest.fixture
def fresh_counters():
    counters[report.APPLIED].clear()
    counters[report.SKIPPED].clear()
    return report
