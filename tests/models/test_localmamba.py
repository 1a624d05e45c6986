"""LocalMamba (ptq4vm_fx.models.localmamba) against the official hunto/LocalMamba code.

The figures in data/ were produced outside this repository from the official
``classification/lib/models/local_vmamba.py`` (``VSSM``) and ``local_vim.py`` (``VisionMamba`` with
``MultiMamba``) at commit 75e5d1f (2024-05-06), imported on the CPU with their CUDA pieces replaced by
pure-PyTorch stand-ins (stub modules): ``selective_scan_cuda_core.fwd`` (a sequential fp32 scan with
grouped B/C), mamba_ssm's ``mamba_inner_fn_no_out_proj`` (causal conv1d + SiLU, x_proj, dt_proj, the
scan with its z gate) and ``mamba_ssm.ops.triton.layernorm`` (RMSNorm, the fused add + norm
functions); fvcore stubbed; the official torch ``local_scan`` / ``local_reverse`` used as released:

* ``localmamba_official_small.pt``: for each config in ``CONFIGS`` below, an input (``<tag>.input``,
  fp32), the official model's state dict (``<tag>.sd.<key>``, fp16) and its fp32 logits
  (``<tag>.logits``). Each official model was built with ``torch.manual_seed(0)``, its parameters
  then moved off their init (linear/conv weights N(0, 1/fan_in), norm weights 1 + 0.2 N(0,1), other
  biases 0.1 N(0,1), dt biases -2.5 + 0.5 N(0,1), ``A_log*`` + 0.3 N(0,1), ``D*`` 0.5 N(0,1),
  pos_embed / cls_token 0.3 N(0,1), the head 0.3 N(0,1)) and rounded to fp16, loaded into the official
  model (whose K ``A_log_i`` share one storage, so they come back equal) and read back. With these
  weights, scanning each block's directions in reversed list order moves the official logits by
  40% to 117%, toggling every flip by 41% to 89%, swapping w2 and w7 by 25% to 34%; merging ``v``
  with the exact inverse of its scan instead of the official reading (see the module docstring)
  moves them by 93% (vssm), 70% (vssm_noconv) and 1.8% (vim_mid).
* ``localmamba_official_keys.json.gz``: ``{name: [[key, shape], ...]}``, the official state dict of
  each official builder (``local_vssm_tiny()`` ...; ``local_vim_small`` as registered, i.e. its second
  definition) in order.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import timm
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

import ptq4vm_fx  # noqa: F401  (registers the models with timm)
from ptq4vm_fx.errors import InputError
from ptq4vm_fx.models import load_checkpoint
from ptq4vm_fx.models.localmamba import LOCALMAMBA_CONFIGS, LocalVim, LocalVSSM

DATA = Path(__file__).parent / "data"
CONFIGS = {
    # 32x48 input: 8x12, 4x6, 2x3 and 1x2 maps (odd sides padded by the patch merging), none a multiple of 7,
    # non-square v scans, 3 to 5 directions per block
    "vssm": (LocalVSSM, dict(patch_size=4, in_chans=3, num_classes=10, depths=[1, 1, 2, 1], dims=[8, 12, 16, 24],
                             ssm_d_state=4, ssm_ratio=2.0, ssm_dt_rank="auto", ssm_act_layer="silu", ssm_conv=3,
                             ssm_conv_bias=True, drop_path_rate=0.1, patch_norm=True, norm_layer="LN",
                             directions=[["h", "v_flip", "w7", "w2_flip"], ["h_flip", "v", "w2", "w7_flip"],
                                         ["w2_flip", "h", "w7"], ["v", "v_flip", "w2", "h_flip", "w7_flip"],
                                         ["h", "w2", "v_flip", "w7_flip"]])),
    # no conv (the activation, GELU here, applied to x and z straight after in_proj), d_state "auto", explicit
    # dt_rank, no patch norm
    "vssm_noconv": (LocalVSSM, dict(patch_size=4, in_chans=3, num_classes=10, depths=[1, 1], dims=8,
                                    ssm_d_state="auto", ssm_ratio=1.0, ssm_dt_rank=2, ssm_act_layer="gelu", ssm_conv=1,
                                    patch_norm=False, norm_layer="ln",
                                    directions=[["w2", "v_flip", "h"], ["w7_flip", "v"]])),
    # local_vim_tiny's structure (RoPE, mean pooling, fused RMSNorm), 4x4 patch grid
    "vim_rope": (LocalVim, dict(img_size=32, patch_size=8, depth=2, embed_dim=16, channels=3, num_classes=10,
                                ssm_cfg=dict(d_state=4), rms_norm=True, residual_in_fp32=True, fused_add_norm=True,
                                final_pool_type="mean", if_abs_pos_embed=True, if_rope=True, if_rope_residual=True,
                                bimamba_type="v2", directions=[["h", "v_flip", "w2", "w7_flip"],
                                                               ["h_flip", "v", "w7", "w2_flip"]])),
    # the middle class token on a non-square 3x5 grid (odd token count), LayerNorm unfused, d_conv 3; its input
    # is 22x37, padded to 24x40 by the patch embedding
    "vim_mid": (LocalVim, dict(img_size=(24, 40), patch_size=8, depth=2, embed_dim=16, channels=3, num_classes=10,
                               ssm_cfg=dict(d_state=4, d_conv=3), rms_norm=False, residual_in_fp32=True,
                               fused_add_norm=False, final_pool_type="mean", if_abs_pos_embed=True, if_rope=False,
                               bimamba_type="v2", if_cls_token=True, use_middle_cls_token=True,
                               directions=[["h_flip", "v", "w2", "w7_flip"], ["v_flip", "w2_flip", "h", "w7"]])),
}  # fmt: skip


@pytest.fixture(scope="module")
def figures() -> dict[str, torch.Tensor]:
    return torch.load(DATA / "localmamba_official_small.pt", weights_only=True)


def official_state_dict(figures, tag: str) -> dict[str, torch.Tensor]:
    prefix = f"{tag}.sd."
    return {k[len(prefix) :]: v.float() for k, v in figures.items() if k.startswith(prefix)}


def official_model(figures, tag: str, **overrides) -> nn.Module:
    cls, config = CONFIGS[tag]
    model = cls(**dict(config, **overrides)).eval()
    model.load_state_dict(official_state_dict(figures, tag), strict=True)
    return model


def relative_error(logits: torch.Tensor, expected: torch.Tensor) -> float:
    return ((logits - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("tag", sorted(CONFIGS))
def test_reproduces_official_logits(figures, tag):
    model = official_model(figures, tag)
    assert list(model.state_dict()) == list(official_state_dict(figures, tag))  # the official order too
    with torch.no_grad():
        logits = model(figures[f"{tag}.input"])
    rel = relative_error(logits, figures[f"{tag}.logits"])
    assert rel <= 1e-4, f"{tag}: max relative error {rel:.2e}"


@pytest.mark.parametrize("tag", ["vssm", "vim_mid"])
def test_direction_order_matters(figures, tag):
    """The same weights scanning each block's directions in reversed order give other logits: the figures
    pin the order of the directions, not only their set."""
    directions = [list(reversed(d)) for d in CONFIGS[tag][1]["directions"]]
    model = official_model(figures, tag, directions=directions)
    with torch.no_grad():
        logits = model(figures[f"{tag}.input"])
    assert relative_error(logits, figures[f"{tag}.logits"]) > 0.05


def test_official_checkpoint_file_loads(figures, tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"model": official_state_dict(figures, "vim_rope"), "epoch": 3}, path)
    model = load_checkpoint(LocalVim(**CONFIGS["vim_rope"][1]).eval(), path)
    with torch.no_grad():
        assert relative_error(model(figures["vim_rope.input"]), figures["vim_rope.logits"]) <= 1e-4


@pytest.fixture(scope="module")
def official_keys() -> dict[str, list]:
    with gzip.open(DATA / "localmamba_official_keys.json.gz", "rt") as f:
        return json.load(f)


def test_registered_variants_are_the_official_ones(official_keys):
    assert sorted(LOCALMAMBA_CONFIGS) == sorted(official_keys)
    assert set(official_keys) <= set(timm.list_models("local_*"))


@pytest.mark.parametrize("name", sorted(LOCALMAMBA_CONFIGS))
def test_variant_state_dict_matches_official(official_keys, name):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == official_keys[name]
    assert model.model_name == name and model.num_classes == 1000


def test_registered_variants_run_with_overrides():
    vssm = timm.create_model("local_vssm_tiny", depths=[1, 1], dims=8, num_classes=5,
                             directions=[["h", "w7_flip"], ["v", "w2"]]).eval()  # fmt: skip
    vim = timm.create_model("local_vim_tiny_middle_cls_token", img_size=16, patch_size=8, depth=1, embed_dim=8,
                            num_classes=5, directions=[["w2_flip", "v"]]).eval()  # fmt: skip
    with torch.no_grad():
        assert vssm(torch.randn(1, 3, 40, 24)).shape == (1, 5)
        assert vim(torch.randn(1, 3, 16, 16)).shape == (1, 5)


@pytest.mark.parametrize("tag, key", [("vssm", "layers.2.blocks.0.op.A_logs"), ("vim_rope", "layers.1.mixer.A_log_2")])
def test_mismatched_checkpoint_is_refused(figures, tag, key):
    cls, config = CONFIGS[tag]
    model = cls(**config)
    good = official_state_dict(figures, tag)
    head = "classifier.head.weight" if tag == "vssm" else "head.weight"
    n = good[head].shape[1]
    cases = [
        ({k: v for k, v in good.items() if k != key}, f"missing keys (1): {key}"),
        (dict(good, **{f"{key}_extra": torch.zeros(3)}), f"unexpected keys (1): {key}_extra"),
        (dict(good, **{head: torch.zeros(11, n)}), f"wrong shapes (1): {head} (11, {n}) vs model (10, {n})"),
    ]
    for state, message in cases:
        with pytest.raises(InputError, match=f"state dict does not fit {cls.__name__}: ") as info:
            model.load_state_dict(state)
        assert message in str(info.value)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(directions=None), "directions=None (the direction-search supernet) is not supported"),
        (dict(directions=[["h"]] * 4), "directions has 4 lists for 5 blocks"),
        (dict(directions=[["h"], [], ["h"], ["h"], ["h"]]), "directions has 5 lists for 5 blocks"),
        (dict(directions=[["h"], ["h", "w0"], ["h"], ["h"], ["h"]]), "directions[1][1]='w0' is not supported; "
                                                                     "supported: h, v, w<k> (window size k >= 1)"),
        (dict(directions=[["h"], ["w7_flipped"], ["h"], ["h"], ["h"]]), "directions[1][0]='w7_flipped'"),
        (dict(directions=[["h"], ["h"], ["h"], ["d"], ["h"]]), "directions[3][0]='d'"),
        (dict(norm_layer="bn"), "norm_layer='bn' is not supported; supported: ln"),
        (dict(ssm_act_layer="sigmoid"), "ssm_act_layer='sigmoid' is not supported; supported: silu, gelu, relu"),
        (dict(ssm_conv=4), "ssm_conv=4 is not supported"),
        (dict(use_checkpoint=True), "use_checkpoint=True"),
        (dict(dims=[8, 16]), "must have the same length"),
        (dict(d_state=16), "unknown keyword arguments: d_state"),
    ],
)  # fmt: skip
def test_unsupported_vssm_config_is_refused(overrides, message):
    with pytest.raises(InputError, match="LocalVSSM: ") as info:
        LocalVSSM(**dict(CONFIGS["vssm"][1], **overrides))
    assert message in str(info.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(directions=None), "directions=None (the direction-search supernet) is not supported"),
        (dict(directions=[["h", "w-2"], ["h"]]), "directions[0][1]='w-2' is not supported"),
        (dict(if_cls_token=True), "if_cls_token=True, use_middle_cls_token=False is not supported"),
        (dict(use_middle_cls_token=True), "if_cls_token=False, use_middle_cls_token=True is not supported"),
        (dict(final_pool_type="max"), "final_pool_type='max' is not supported; supported: mean, none"),
        (dict(img_size=(32, 40)), "if_rope=True is not supported with if_cls_token=False, a 4x5 patch grid"),
        (dict(embed_dim=18), "embed_dim=18; supported: no class token, a square grid, embed_dim % 4 == 0"),
        (dict(ssm_cfg=dict(d_conv=5)), "ssm_cfg['d_conv']=5 is not supported; supported: 2, 3, 4"),
        (dict(ssm_cfg=dict(dt_init="constant")), "ssm_cfg keys dt_init are not supported"),
        (dict(mamba_cls=nn.Identity), "mamba_cls="),
        (dict(initializer_cfg={}), "initializer_cfg={} is not supported; supported: None"),
        (dict(img_size=4), "img_size=4 is smaller than patch_size=8"),
        (dict(stride=8), "unknown keyword arguments: stride"),
    ],
)  # fmt: skip
def test_unsupported_vim_config_is_refused(overrides, message):
    with pytest.raises(InputError, match="LocalVim: ") as info:
        LocalVim(**dict(CONFIGS["vim_rope"][1], **overrides))
    assert message in str(info.value)


def _official_scan(x: torch.Tensor, direction) -> torch.Tensor:
    """The official MultiScan's scan: (batch, C, H, W) -> (batch, C, L) in the direction's unflipped order (w<k>:
    the map zero-padded at the bottom / right to window multiples, windows row-major, row-major inside)."""
    order, window, _ = direction
    if order == "h":
        return x.flatten(2)
    if order == "v":
        return x.transpose(2, 3).flatten(2)
    x = F.pad(x, (0, (-x.shape[3]) % window, 0, (-x.shape[2]) % window))
    x = x.unflatten(3, (-1, window)).unflatten(2, (-1, window))  # (batch, C, Hg, k, Wg, k)
    return x.permute(0, 1, 2, 4, 3, 5).flatten(2)


def _official_merge(y: torch.Tensor, direction, height: int, width: int) -> torch.Tensor:
    """The official merge: (batch, C, L) in the direction's order -> (batch, C, H W) row-major, padding cropped
    (for v the official reading, the inverse of the scan only when H == W)."""
    order, window, _ = direction
    if order == "h":
        return y
    if order == "v":
        return y.unflatten(2, (height, width)).transpose(2, 3).flatten(2)
    groups_w = (width + window - 1) // window
    y = y.unflatten(2, (-1, groups_w, window, window)).permute(0, 1, 2, 4, 3, 5)
    return y.flatten(4).flatten(2, 3)[:, :, :height, :width].flatten(2)


def test_windows_pad_maps_that_are_not_window_multiples():
    """A w<k> direction on a map whose sides are not multiples of k scans the zero-padded map (length
    ceil(H/k) k ceil(W/k) k, the padded tokens zero) and merges back to the map exactly; h merges back exactly,
    v only on a square map (the official merge, reproduced); the order maps read and write the same."""
    from ptq4vm_fx.models.orders import token_orders, token_scatters

    w3, h, v = ("w", 3, False), ("h", 0, False), ("v", 0, False)
    x = torch.randn(2, 5, 4, 5) + 10  # no zeros among the real tokens
    seq = _official_scan(x, w3)
    assert seq.shape == (2, 5, 36) and (seq == 0).sum() == 2 * 5 * (36 - 20)
    torch.testing.assert_close(seq[..., :9], x[..., :3, :3].flatten(2), rtol=0, atol=0)  # the first 3x3 window
    padded_window = nn.functional.pad(x[..., :3, 3:], (0, 1))  # the next one, its third column padding
    torch.testing.assert_close(seq[..., 9:18], padded_window.flatten(2), rtol=0, atol=0)
    torch.testing.assert_close(_official_merge(seq, w3, 4, 5), x.flatten(2), rtol=0, atol=0)
    torch.testing.assert_close(_official_merge(_official_scan(x, h), h, 4, 5), x.flatten(2), rtol=0, atol=0)
    assert not torch.equal(_official_merge(_official_scan(x, v), v, 4, 5), x.flatten(2))
    square = torch.randn(2, 5, 4, 4)
    torch.testing.assert_close(_official_merge(_official_scan(square, v), v, 4, 4), square.flatten(2), rtol=0, atol=0)
    for direction in (w3, h, v):
        reads, writes = token_orders(x, (direction,))[0], token_scatters(x, (direction,))[0]
        gathered = torch.where(reads >= 0, x.flatten(2).index_select(2, reads.clamp(min=0).long()), 0)
        assert torch.equal(gathered, _official_scan(x, direction))
        merged = torch.empty_like(x.flatten(2)).index_copy_(2, writes[writes >= 0].long(), gathered[..., writes >= 0])
        assert torch.equal(merged, _official_merge(_official_scan(x, direction), direction, 4, 5))


def _official_mixer(mixer, hidden_states: torch.Tensor) -> torch.Tensor:
    """The official MultiMamba forward with materialized orders: per direction x and z scanned (pad, permute),
    the class token concatenated at step c (S - c flipped), a flipped direction flipped -> causal conv ->
    scan -> flipped back, the class token's output cut out and the rest merged, then BiAttn and the sum."""
    height, width = mixer.token_size
    c = height * width // 2
    xz = mixer.in_proj(hidden_states).transpose(1, 2)
    cls = mixer.use_middle_cls_token
    if cls:
        cls_xz, xz = xz[..., c : c + 1], torch.cat((xz[..., :c], xz[..., c + 1 :]), dim=2)
    outs = []
    for i, direction in enumerate(mixer.multi_scan.directions):
        seq = _official_scan(xz.unflatten(2, (height, width)), direction)
        q = seq.shape[2] - c if direction.flip else c
        if cls:
            seq = torch.cat((seq[..., :q], cls_xz, seq[..., q:]), dim=2)
        seq = seq.flip(-1) if direction.flip else seq
        x, z = seq.chunk(2, dim=1)
        conv = getattr(mixer, f"conv1d_{i}")
        u = F.silu(conv(x)[..., : -(mixer.d_conv - 1)])
        x_dbl = getattr(mixer, f"x_proj_{i}")(u.transpose(1, 2))
        R, N = mixer.dt_rank, mixer.d_state
        delta = getattr(mixer, f"dt_proj_{i}")(x_dbl[..., :R]).transpose(1, 2)
        A = -torch.exp(getattr(mixer, f"A_log_{i}").float())
        y = torch.ops.ptq4vm.selective_scan(u, delta, A, x_dbl[..., R : R + N].transpose(1, 2),
                                            x_dbl[..., R + N :].transpose(1, 2), getattr(mixer, f"D_{i}").float(),
                                            z, None, True, False)
        y = y.flip(-1) if direction.flip else y
        if cls:
            y_cls, y = y[..., q : q + 1], torch.cat((y[..., :q], y[..., q + 1 :]), dim=2)
        y = _official_merge(y, direction, height, width)
        if cls:
            y = torch.cat((y[..., :c], y_cls, y[..., c:]), dim=2)
        outs.append(mixer.attn(y.transpose(1, 2)))
    return mixer.out_proj(torch.stack(outs).sum(0))


@pytest.mark.parametrize("cls", [True, False])
def test_local_vim_mixer_is_the_official_one_through_maps(cls):
    """LocalVim's mixer (its convs and scans reading through the sequence maps, its outputs written to tokens)
    equals the official forward with materialized orders, flips and class-token concatenations to fp32
    rounding: a 3x5 grid (w2 pads it, v's merge is not the inverse of its order), every flip, with and
    without the class token."""
    from ptq4vm_fx.models.localmamba import MultiMamba

    torch.manual_seed(0)
    mixer = MultiMamba(8, ["h_flip", "v", "w2", "w2_flip", "v_flip"], (3, 5), cls, "directions", d_state=4,
                       d_conv=3)
    for name, p in mixer.named_parameters():
        if name.startswith(("conv1d", "dt_proj")):
            torch.nn.init.normal_(p, std=0.5)
    hidden = torch.randn(2, 15 + cls, 8)
    with torch.no_grad():
        got, expected = mixer(hidden), _official_mixer(mixer, hidden)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_image_sizes(figures):
    """LocalVSSM takes any size; LocalVim any size its patch embedding pads to the model's patch grid (the
    figures' 22x37 input on the 24x40 model), and refuses others naming the sizes it takes."""
    vssm, vim = official_model(figures, "vssm_noconv"), official_model(figures, "vim_mid")
    with torch.no_grad():
        assert vssm(torch.randn(1, 3, 29, 13)).shape == (1, 10)
        assert vim(torch.randn(1, 3, 17, 33)).shape == (1, 10)
    with pytest.raises(InputError, match=r"input image size 16x40 gives a 2x5 patch grid but the model's is 3x5: "
                                         r"expected H in \[17, 24\] and W in \[33, 40\]"):  # fmt: skip
        vim(torch.randn(1, 3, 16, 40))
    with pytest.raises(InputError, match=r"\(batch, 3, H, W\), got \(1, 1, 24, 40\)"):
        vim(torch.randn(1, 1, 24, 40))
    with pytest.raises(InputError, match=r"\(batch, 3, H, W\), got \(1, 1, 32, 32\)"):
        vssm(torch.randn(1, 1, 32, 32))


@pytest.mark.parametrize("tag", ["vssm", "vim_mid"])
def test_fx_trace_matches_eager(figures, tag):
    """One ordered scan node per direction per block, no padded, transposed, flipped, gathered or concatenated
    copy of an activation in a mixer's graph (LocalVim: its convs read through the order maps too); the traced
    graph equals eager (LocalVSSM at another size too)."""
    model = official_model(figures, tag)
    gm = torch.fx.symbolic_trace(model)
    scans = [str(n.target) for n in gm.graph.nodes if str(n.target).startswith("ptq4vm.") and "_scan" in str(n.target)]
    assert scans == ["ptq4vm.ordered_scan"] * sum(len(d) for d in CONFIGS[tag][1]["directions"])
    mixer = torch.fx.symbolic_trace(model.layers[0].blocks[0].op if tag == "vssm" else model.layers[0].mixer)
    copies = (F.pad, "flip", torch.cat, torch.flip, "index_select", torch.index_select, "index_copy")
    assert not any(n.target in copies or (n.target == "transpose" and n.args[1:] == (2, 3))
                   for n in mixer.graph.nodes)
    if tag == "vim_mid":
        convs = [n for n in mixer.graph.nodes if str(n.target) == "ptq4vm.ordered_conv1d_silu"]
        assert len(convs) == len(CONFIGS[tag][1]["directions"][0])
    x = figures[f"{tag}.input"]
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
        if tag == "vssm":
            other = torch.randn(1, 3, 20, 36)
            torch.testing.assert_close(gm(other), model(other), rtol=0, atol=0)


def test_fx_trace_keeps_linears_as_modules(figures):
    """Every quantizable linear of the mixers is one call_module node."""
    model = official_model(figures, "vim_rope")
    gm = torch.fx.symbolic_trace(model)
    called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    linears = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert linears <= called
    assert {"layers.1.mixer.x_proj_3", "layers.1.mixer.dt_proj_3", "layers.0.mixer.attn.channel_select"} <= linears
