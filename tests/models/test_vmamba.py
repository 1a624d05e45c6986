"""VMamba (ptq4vm_fx.models.vmamba) against the official MzeroMiko/VMamba code.

The figures in data/ were produced outside this repository from the official
``classification/models/vmamba.py`` at commit 2ed52ea (2025-03-07), imported on the CPU with
fvcore and the unused mamba2 chunk scan stubbed, its scan routed to the official pure-torch
``csms6s.selective_scan_torch`` and its cross scan / merge to the official torch
``CrossScanF`` / ``CrossMergeF`` (the CUDA and Triton versions need a GPU):

* ``vmamba_official_small.pt``: one (2, 3, 32, 48) input (``input``, fp16), and for each config in
  ``CONFIGS`` below the official model's state dict (``<tag>.sd.<key>``, fp16) and its fp32 logits
  (``<tag>.logits``). The official model was built with ``torch.manual_seed(0)``, its parameters then
  moved off their init so that every part shows in the logits (in_proj/out_proj/fc1/fc2 weights
  N(0, 1/fan_in), norm weights 1 + 0.2 N(0,1), ``Ds`` and ``dt_projs_bias`` 0.5 N(0,1), other biases
  0.1 N(0,1), ``A_logs`` + 0.3 N(0,1), the head 0.3 N(0,1)) and rounded to fp16, so the fp16 copies
  here are its exact weights. With these, scanning a direction the wrong way or in the other token
  order moves the logits by 0.7% to 6%.
* ``vmamba_official_keys.json.gz``: ``{name: [[key, shape], ...]}``, the official state dict of
  each official builder (``vmamba_tiny_s1l8()`` ...) in order.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import timm
import torch
import torch.fx
import torch.nn.functional as F

import ptq4vm_fx  # noqa: F401  (registers the models with timm)
from ptq4vm_fx.errors import InputError
from ptq4vm_fx.models.vmamba import VMAMBA_CONFIGS, VSSM, LayerNorm2d, Linear2d, VSSBlock
from ptq4vm_fx.scan import selective_scan_ref

DATA = Path(__file__).parent / "data"
_BASE = dict(patch_size=4, in_chans=3, num_classes=10, ssm_act_layer="silu", ssm_conv=3, ssm_drop_rate=0.0,
             ssm_init="v0", mlp_act_layer="gelu", mlp_drop_rate=0.0, drop_path_rate=0.1, patch_norm=True,
             norm_layer="ln2d", downsample_version="v3", patchembed_version="v2", use_checkpoint=False,
             posembed=False, imgsize=224)  # fmt: skip
CONFIGS = {
    # the released models' structure (v05_noz, d_state 1, no conv bias), toy size
    "s1": dict(_BASE, depths=[1, 1, 2, 1], dims=[8, 12, 16, 24], ssm_d_state=1, ssm_ratio=2.0, ssm_dt_rank="auto",
               ssm_conv_bias=False, forward_type="v05_noz", mlp_ratio=4.0, gmlp=False),
    # d_state 4, an explicit dt_rank, conv bias, ratio 1
    "s4": dict(_BASE, depths=[1, 2], dims=[8, 12], ssm_d_state=4, ssm_ratio=1.0, ssm_dt_rank=3,
               ssm_conv_bias=True, forward_type="v05_noz", mlp_ratio=2.0, gmlp=False),
    # v3: the SiLU z gate; gMLP, downsample v2, patch embed v1
    "v3": dict(_BASE, depths=[1, 1], dims=[8, 16], ssm_d_state=2, ssm_ratio=1.0, ssm_dt_rank="auto",
               ssm_conv_bias=True, forward_type="v3", mlp_ratio=1.0, gmlp=True, downsample_version="v2",
               patchembed_version="v1"),
}  # fmt: skip


@pytest.fixture(scope="module")
def figures() -> dict[str, torch.Tensor]:
    return torch.load(DATA / "vmamba_official_small.pt", weights_only=True)


def official_state_dict(figures, tag: str) -> dict[str, torch.Tensor]:
    prefix = f"{tag}.sd."
    return {k[len(prefix) :]: v.float() for k, v in figures.items() if k.startswith(prefix)}


def official_model(figures, tag: str) -> VSSM:
    model = VSSM(**CONFIGS[tag]).eval()
    model.load_state_dict(official_state_dict(figures, tag), strict=True)
    return model


@pytest.mark.parametrize("tag", sorted(CONFIGS))
def test_reproduces_official_logits(figures, tag):
    model = official_model(figures, tag)
    with torch.no_grad():
        logits = model(figures["input"].float())
    expected = figures[f"{tag}.logits"]
    rel = ((logits - expected).abs().max() / expected.abs().max()).item()
    assert rel <= 1e-4, f"{tag}: max relative error {rel:.2e}"


@pytest.fixture(scope="module")
def official_keys() -> dict[str, list]:
    with gzip.open(DATA / "vmamba_official_keys.json.gz", "rt") as f:
        return json.load(f)


def test_registered_variants_are_the_official_ones(official_keys):
    assert sorted(VMAMBA_CONFIGS) == sorted(official_keys)
    assert set(official_keys) <= set(timm.list_models("vmamba_*"))


@pytest.mark.parametrize("name", sorted(VMAMBA_CONFIGS))
def test_variant_state_dict_matches_official(official_keys, name):
    with torch.device("meta"):
        model = timm.create_model(name)
    ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert ours == official_keys[name]
    assert model.model_name == name and model.num_classes == 1000


def test_registered_variant_runs_with_overrides():
    model = timm.create_model("vmamba_tiny_s1l8", depths=[1, 1, 1, 1], dims=8, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 40, 24)).shape == (1, 5)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.pop("layers.0.blocks.0.op.A_logs"), "missing keys (1): layers.0.blocks.0.op.A_logs"),
        (lambda sd: sd.update({"layers.0.blocks.0.op.x_proj_bias": torch.zeros(4, 5)}),
         "unexpected keys (1): layers.0.blocks.0.op.x_proj_bias"),
        (lambda sd: sd.update({"classifier.head.weight": torch.zeros(11, 24)}),
         "wrong shapes (1): classifier.head.weight (11, 24) vs model (10, 24)"),
    ],
)  # fmt: skip
def test_mismatched_checkpoint_is_refused(figures, edit, message):
    state = official_state_dict(figures, "s1")
    edit(state)
    model = VSSM(**CONFIGS["s1"])
    with pytest.raises(InputError, match="does not fit VSSM") as info:
        model.load_state_dict(state)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_conv_1x1_weights_load(figures):
    """Checkpoints of the official code before March 2024 hold in_proj/out_proj/fc weights as (out, in, 1, 1)."""
    state = official_state_dict(figures, "v3")
    state = {k: v[:, :, None, None] if k.endswith(("proj.weight", "fc1.weight", "fc2.weight")) else v
             for k, v in state.items()}  # fmt: skip
    assert state["layers.0.blocks.0.op.in_proj.weight"].dim() == 4
    model = VSSM(**CONFIGS["v3"]).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        logits = model(figures["input"].float())
    torch.testing.assert_close(logits, figures["v3.logits"], rtol=1e-4, atol=1e-5)
    state["classifier.head.weight"] = state["classifier.head.weight"][:, :, None, None]  # an nn.Linear: refused
    with pytest.raises(InputError, match=r"wrong shapes \(1\): classifier.head.weight \(10, 16, 1, 1\)"):
        model.load_state_dict(state)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(forward_type="v2"), "forward_type='v2' is not supported; supported: v05_noz, v05"),
        (dict(forward_type="v0"), "forward_type='v0'"),
        (dict(norm_layer="ln"), "norm_layer='ln' is not supported; supported: ln2d"),
        (dict(downsample_version="v1"), "downsample_version='v1'"),
        (dict(ssm_init="v2"), "ssm_init='v2'"),
        (dict(ssm_act_layer="tanh"), "ssm_act_layer='tanh'"),
        (dict(ssm_conv=4), "ssm_conv=4"),
        (dict(use_checkpoint=True), "use_checkpoint=True"),
        (dict(dims=[8, 16]), "must have the same length"),
        (dict(window_size=7), "unknown keyword arguments: window_size"),
    ],
)  # fmt: skip
def test_unsupported_config_is_refused(kwargs, message):
    with pytest.raises(InputError, match="VSSM: ") as info:
        VSSM(**dict(CONFIGS["s1"], **kwargs))
    assert message in str(info.value)


def test_official_config_keywords_are_accepted():
    """What the official build_vssm_model passes, ssm_rank_ratio included (ignored there, as here)."""
    model = VSSM(**dict(CONFIGS["s1"], ssm_rank_ratio=2.0, norm_layer="LN2D", ssm_act_layer="SiLU"))
    assert model.config["ssm_rank_ratio"] == 2.0


def test_bad_image_batch_is_refused():
    model = VSSM(**CONFIGS["v3"]).eval()
    with pytest.raises(InputError, match=r"\(batch, 3, H, W\), got \(2, 1, 32, 32\)"):
        model(torch.randn(2, 1, 32, 32))


def test_cross_scan_reads_the_orders_the_official_copies_hold(figures):
    """SS2D's one ordered scan equals the official cross scan on copies: the row-major tokens, the transposed
    map's, each scanned forward and flipped -> scanned -> flipped back, the column outputs transposed back,
    the four summed (a non-square map, so rows and columns cannot be confused)."""
    op = official_model(figures, "s4").layers[0].blocks[0].op
    x = torch.randn(2, op.d_inner, 3, 5)
    N, R, D = op.d_state, op.dt_rank, op.d_inner

    def direction(u, k, flip):
        u = u.flip(-1) if flip else u
        x_dbl = F.linear(u.transpose(1, 2), op.x_proj_weight[k])
        delta = F.linear(x_dbl[..., :R], op.dt_projs_weight[k]).transpose(1, 2)
        A = -torch.exp(op.A_logs.view(4, D, N)[k])
        y = selective_scan_ref(u, delta, A, x_dbl[..., R : R + N].transpose(1, 2), x_dbl[..., R + N :].transpose(1, 2),
                               op.Ds.view(4, D)[k], None, op.dt_projs_bias[k], True)
        return y.flip(-1) if flip else y

    rows, cols = x.flatten(2), x.transpose(2, 3).flatten(2)
    with torch.no_grad():
        y_rows = direction(rows, 0, False) + direction(rows, 2, True)
        y_cols = direction(cols, 1, False) + direction(cols, 3, True)
        expect = y_rows.unflatten(2, (3, 5)) + y_cols.unflatten(2, (5, 3)).transpose(2, 3)
        torch.testing.assert_close(op.cross_scan(x), expect, rtol=1e-5, atol=1e-6)


def test_fx_trace_matches_eager(figures):
    """ptq4vm_fx.capture.capture takes Vim only, so this checks torch.fx.symbolic_trace directly."""
    model = official_model(figures, "s1")
    gm = torch.fx.symbolic_trace(model)
    scans = [n for n in gm.graph.nodes if n.op == "call_function" and "scan" in str(n.target)]
    assert [str(n.target) for n in scans] == ["ptq4vm.ordered_scan"] * sum(CONFIGS["s1"]["depths"])  # per block
    assert not any(n.target == "flip" or (n.target == "transpose" and n.args[1:] == (2, 3))
                   for n in gm.graph.nodes)  # no flipped or transposed copy of the scanned map
    x = torch.randn(3, 3, 24, 40)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
        torch.testing.assert_close(gm(figures["input"].float()), figures["s1.logits"], rtol=1e-4, atol=1e-5)


def test_fx_trace_keeps_linears_as_modules(figures):
    """With Linear2d and LayerNorm2d as leaves (what a quantization capture would use), every quantizable
    channel linear is one call_module node."""

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, (Linear2d, LayerNorm2d)) or super().is_leaf_module(m, qualname)

    model = official_model(figures, "s1")
    gm = torch.fx.GraphModule(model, Tracer().trace(model))
    linears = {
        n.target for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), Linear2d)
    }
    blocks = [name for name, m in model.named_modules() if isinstance(m, VSSBlock)]
    assert linears == {f"{b}.{sub}" for b in blocks for sub in ("op.in_proj", "op.out_proj", "mlp.fc1", "mlp.fc2")}
    with torch.no_grad():
        torch.testing.assert_close(gm(figures["input"].float()), figures["s1.logits"], rtol=1e-4, atol=1e-5)
