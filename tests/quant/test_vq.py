"""ViM-VQ: config, k-means, the convex-combination / incremental calibration, baselines."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ptq4vm_fx.errors import InputError
from ptq4vm_fx.quant.vq import (
    VQConfig,
    VQLinearTrainable,
    calibrate_block,
    kmeans,
    kmeans_pp_init,
    nearest_codewords,
    plain_vq_block,
    plain_vq_linear,
    rtn_weight,
)
from ptq4vm_fx.quant.vq_linear import VQLinear


class MLPBlock(nn.Module):
    """(x, residual) (N, L, 32) each -> (fc2(gelu(fc1(x))), residual + x): a block with two outputs."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 32)
        self.gain = nn.Parameter(torch.ones(32))

    def forward(self, x, residual):
        return self.fc2(F.gelu(self.fc1(x * self.gain))), residual + x


def _block_and_inputs(samples=128, seed=0):
    torch.manual_seed(seed)
    block = MLPBlock()
    g = torch.Generator().manual_seed(seed + 1)
    return block, (torch.randn(samples, 8, 32, generator=g), torch.randn(samples, 8, 32, generator=g))


def _fast(**overrides):
    kw = dict(k=16, d=4, steps=150, codebook_steps=50, hull_every=25, confirm_every=10, batch_size=64)
    return VQConfig(**{**kw, **overrides})


def _relative_error(block, float_block, inputs):
    with torch.no_grad():
        y, t = block(*inputs)[0], float_block(*inputs)[0]
    return float((y - t).pow(2).mean() / t.pow(2).mean())


# ---- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name,k,d,bits", [("w3a16", 64, 2, 3.0), ("w2a16", 256, 4, 2.0), ("w1a16", 256, 8, 1.0)])
def test_presets(name, k, d, bits):
    cfg = VQConfig.preset(name, steps=7)
    assert (cfg.k, cfg.d, cfg.bits, cfg.steps) == (k, d, bits, 7)
    assert VQConfig.from_bits(bits, d) == VQConfig(k=k, d=d)


def test_config_round_trips_and_is_frozen():
    cfg = VQConfig.preset("w2a16", loss="cosine", n_candidates=3, seed=5)
    assert VQConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.k = 16
    with pytest.raises(InputError, match="unknown field"):
        VQConfig.from_dict({**cfg.to_dict(), "group_size": 4})
    with pytest.raises(InputError, match="missing field"):
        VQConfig.from_dict({"k": 16})


@pytest.mark.parametrize("kwargs,message", [
    (dict(k=100, d=2), "power of two"),
    (dict(k=512, d=2), "at most 256"),
    (dict(k=16, d=0), "d must be >= 1"),
    (dict(k=16, d=2, n_candidates=17), "n_candidates"),
    (dict(k=16, d=2, confirm_threshold=0.25), "confirm_threshold"),  # <= 1/n_candidates
    (dict(k=16, d=2, loss="l1"), "loss must be one of"),
    (dict(k=16, d=2, hull_every=0), "hull_every"),
    (dict(k=16, d=2, steps=-1), "steps"),
    (dict(k=16, d=2, lr=0.0), "lr must be > 0"),
    (dict(k=16.0, d=2), "k must be int"),
    (dict(k=True, d=2), "k must be int"),
])
def test_config_refuses_nonsense(kwargs, message):
    with pytest.raises(InputError, match=message):
        VQConfig(**kwargs)


def test_from_bits_refuses_impossible_combinations():
    with pytest.raises(InputError, match="12-bit codes"):
        VQConfig.from_bits(3, 4)  # k = 4096
    with pytest.raises(InputError, match="4.5-bit codes"):
        VQConfig.from_bits(1.5, 3)
    with pytest.raises(InputError, match="unknown VQ preset"):
        VQConfig.preset("w4a4")


def test_layers_that_do_not_fit_are_refused_by_name():
    cfg = VQConfig(k=16, d=4)
    with pytest.raises(InputError, match=r"layer mixer.dt_proj: in_features=6 is not divisible .* d=4 \(weight 8x6\)"):
        VQLinearTrainable(nn.Linear(6, 8), cfg, "mixer.dt_proj")
    with pytest.raises(InputError, match=r"layer tiny: 12 sub-vectors .* fewer than the k=16"):
        plain_vq_linear(nn.Linear(8, 6), cfg, "tiny")
    block = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 2))  # "2": 32 sub-vectors of 4 < k = 64
    with pytest.raises(InputError, match=r"layer blocks.3.2: 32 sub-vectors"):
        calibrate_block(block, copy.deepcopy(block), torch.randn(8, 32), _fast(k=64), block_name="blocks.3")
    assert isinstance(block[0], nn.Linear) and isinstance(block[2], nn.Linear)  # all checked before replacing


# ---- k-means ----------------------------------------------------------------------------------


def test_kmeans_pp_seeding_is_reproducible_and_picks_data_points():
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(0))
    a = kmeans_pp_init(x, 16, torch.Generator().manual_seed(1))
    b = kmeans_pp_init(x, 16, torch.Generator().manual_seed(1))
    c = kmeans_pp_init(x, 16, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a[:, None, :] == x[None]).all(-1).any(1).all()
    assert len({tuple(r.tolist()) for r in a}) == 16  # D^2 sampling never picks a chosen point twice


def test_kmeans_error_decreases():
    x = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([3.0, 0.5])
    errors = []
    for iters in (0, 1, 3, 30):
        codebook, codes = kmeans(x, 32, iters, torch.Generator().manual_seed(0))
        assert torch.equal(codes, nearest_codewords(x, codebook)[1][:, 0])
        errors.append(float((x - codebook[codes]).pow(2).sum(1).mean()))
    assert all(b <= a * (1 + 1e-6) for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 0.8 * errors[0]


def test_kmeans_with_fewer_distinct_points_than_codewords():
    x = torch.tensor([[0.0, 0.0], [1.0, 2.0], [-3.0, 1.0]]).repeat(10, 1)
    codebook, codes = kmeans(x, 4, 10, torch.Generator().manual_seed(0))
    assert torch.equal(codebook[codes], x)


# ---- the calibration form -------------------------------------------------------------------


def _linear(seed):
    torch.manual_seed(seed)
    return nn.Linear(16, 12)


def _trainable(n=2, seed=0):
    return VQLinearTrainable(_linear(seed), VQConfig(k=16, d=2, n_candidates=n, seed=seed))


def test_initial_state_is_the_nearest_codewords():
    layer = _trainable(n=3)
    sub = _linear(0).weight.detach().reshape(-1, 2)
    codebook = layer.codebook.detach()
    assert torch.equal(layer.candidates, nearest_codewords(sub, codebook, 3)[1])
    p = torch.softmax(layer.logits, 1)
    assert (p[:, :-1] >= p[:, 1:]).all()  # nearer candidates weigh more
    plain = plain_vq_linear(_linear(0), VQConfig(k=16, d=2, seed=0))  # plain VQ = the nearest candidates
    assert torch.equal(plain.codebook.float(), codebook)
    assert torch.equal(plain.code_indices().reshape(-1), layer.candidates[:, 0])


def test_confirm_by_threshold_then_most_confident():
    layer = _trainable()
    with torch.no_grad():
        layer.logits.zero_()
        layer.logits[:5, 1] = 10.0  # confident on the second candidate
        layer.logits[5:, 0] = torch.linspace(0.0, 3.0, layer.logits.shape[0] - 5)
    by_threshold, forced = layer.confirm(0.99, 0.5)
    total = layer.hard.numel()
    assert by_threshold == 5 and forced == total // 2 - 5
    assert torch.equal(layer.hard_codes[:5], layer.candidates[:5, 1])
    confidence = torch.softmax(layer.logits, 1).max(1).values
    assert confidence[layer.hard].min() >= confidence[~layer.hard].max()
    assert torch.equal(layer.hard_codes[layer.hard][5:], layer.candidates[layer.hard][5:, 0])
    with pytest.raises(RuntimeError, match="not confirmed"):
        layer.codes()
    layer.finalize()
    assert layer.hard.all()


def test_hull_update_keeps_staying_weights():
    layer = _trainable(n=2)
    with torch.no_grad():
        layer.hard[0] = True
        layer.hard_codes[0] = 3
        before = (layer.candidates.clone(), layer.logits.clone())
        layer.codebook.mul_(1.5).add_(0.05)  # moves codewords: some nearest sets change
    moment = torch.arange(layer.logits.numel(), dtype=torch.float32).reshape(layer.logits.shape) + 1
    old_moment = moment.clone()
    changed = layer.update_hull([moment])
    assert changed > 0
    codebook = layer.codebook.detach().half().float()
    old_c, old_logits = before
    p_old, p_new = torch.softmax(old_logits, 1), torch.softmax(layer.logits.detach(), 1)
    soft_old = torch.einsum("sn,snd->sd", p_old, codebook[old_c])
    assert torch.equal(layer.candidates[0], old_c[0]) and torch.equal(layer.logits[0], old_logits[0])  # hard: untouched
    assert torch.equal(layer.candidates[1:], nearest_codewords(soft_old[1:], codebook, 2)[1])
    for s in range(1, layer.hard.numel()):
        for j in range(2):
            hit = (old_c[s] == layer.candidates[s, j]).nonzero()
            if hit.numel():  # a staying candidate keeps its weight and its moment
                assert p_new[s, j] == pytest.approx(float(p_old[s, hit[0, 0]]), rel=1e-4, abs=2e-6)
                assert moment[s, j] == old_moment[s, hit[0, 0]]
            else:
                assert moment[s, j] == 0
    assert torch.allclose(p_new.sum(1), torch.ones(p_new.shape[0]))


# ---- the block driver -----------------------------------------------------------------------


def test_convex_combination_beats_plain_vq_and_codebook_only():
    block, inputs = _block_and_inputs()
    plain = copy.deepcopy(block)
    plain_vq_block(plain, _fast())
    codebook_only = copy.deepcopy(block)
    calibrate_block(codebook_only, block, inputs, _fast(steps=0, codebook_steps=200))
    vimvq = copy.deepcopy(block)
    report = calibrate_block(vimvq, block, inputs, _fast())
    e_plain, e_cb, e_vq = (_relative_error(m, block, inputs) for m in (plain, codebook_only, vimvq))
    assert e_vq < 0.75 * e_cb and e_cb < e_plain
    assert report.loss_final == pytest.approx(e_vq, rel=1e-4)  # second output (residual) exact
    assert report.loss_final < report.loss_init
    assert len(report.step_losses) == 200 and [r.name for r in report.layers] == ["fc1", "fc2"]
    assert all(r.confirmed_by_threshold + r.confirmed_forced == r.out_features * r.in_features // 4
               for r in report.layers)
    assert report.layers[0].hull_changes > 0
    assert isinstance(vimvq.fc1, VQLinear) and isinstance(vimvq.fc2, VQLinear)
    assert report.layers[0].nominal_bits == 1.0
    assert report.layers[0].storage_bits == (64 * 8 * 4 + 16 * 4 * 16) / (64 * 32)


def test_incremental_vq_ends_hard_and_equals_the_packed_weights():
    block, inputs = _block_and_inputs(64)
    report = calibrate_block(block, copy.deepcopy(block), inputs, _fast(steps=40, codebook_steps=10, hull_every=15,
                                                                        confirm_every=7, n_candidates=3),
                             pack=False)
    assert len(report.step_losses) == 50
    for layer in (block.fc1, block.fc2):
        assert isinstance(layer, VQLinearTrainable) and layer.hard.all()
        packed = layer.to_packed()
        assert torch.equal(layer.reconstruct(), packed.weight())
        assert packed.codebook.dtype == torch.float16
        x = torch.randn(3, layer.in_features)
        assert torch.allclose(layer(x), packed(x), rtol=1e-5, atol=1e-6)


def test_reproducible_and_name_filter():
    runs = []
    for _ in range(2):
        block, inputs = _block_and_inputs(64)
        gain = block.gain.detach().clone()
        calibrate_block(block, copy.deepcopy(block), inputs, _fast(steps=20, codebook_steps=5),
                        name_filter=lambda name: name == "fc2")
        assert isinstance(block.fc1, nn.Linear) and isinstance(block.fc2, VQLinear)
        assert torch.equal(block.gain, gain) and block.gain.requires_grad and block.fc1.weight.requires_grad
        runs.append(block.fc2.state_dict())
    assert all(torch.equal(runs[0][key], runs[1][key]) for key in runs[0])


def test_cosine_loss():
    block, inputs = _block_and_inputs()
    plain = copy.deepcopy(block)
    plain_vq_block(plain, _fast())
    vimvq = copy.deepcopy(block)
    report = calibrate_block(vimvq, block, inputs, _fast(loss="cosine"))
    with torch.no_grad():
        t = block(*inputs)[0]
        cos = {name: float((1 - F.cosine_similarity(m(*inputs)[0], t, dim=-1)).mean())
               for name, m in (("plain", plain), ("vimvq", vimvq))}
    assert report.loss_final == pytest.approx(cos["vimvq"], rel=1e-4)
    assert cos["vimvq"] < 0.75 * cos["plain"]


def test_calibrate_block_refuses_bad_inputs():
    block, (x, r) = _block_and_inputs(16)
    with pytest.raises(InputError, match="sample count"):
        calibrate_block(block, copy.deepcopy(block), (x, r[:8]), _fast())
    with pytest.raises(InputError, match="no nn.Linear layer selected"):
        calibrate_block(block, copy.deepcopy(block), (x, r), _fast(), name_filter=lambda name: False)


# ---- baselines ------------------------------------------------------------------------------


def test_rtn_weight():
    w = torch.randn(6, 40, generator=torch.Generator().manual_seed(0))
    errors = [float((rtn_weight(w, b) - w).pow(2).mean()) for b in range(2, 9)]
    assert all(b < a for a, b in zip(errors, errors[1:]))  # (2 bits: ternary {-s, 0, s}, s = absmax)
    one = rtn_weight(w, 1)
    assert torch.equal(one.abs(), w.abs().mean(1, keepdim=True).expand_as(w)) and torch.equal(one.sign(), w.sign())
    three = rtn_weight(w, 3)
    scale = w.abs().amax(1, keepdim=True) / 3
    assert torch.allclose(three / scale, torch.round(three / scale), atol=1e-5)
    assert all(len(row.unique()) <= 7 for row in three)
    with pytest.raises(InputError, match="bits must be an int"):
        rtn_weight(w, 0)


def test_plain_vq_is_the_nearest_codeword():
    lin = _linear(3)
    packed = plain_vq_linear(lin, VQConfig(k=16, d=2))
    sub = lin.weight.detach().reshape(-1, 2)
    codebook = packed.codebook.float()
    decoded = packed.weight().reshape(-1, 2)
    assert torch.equal(decoded, codebook[nearest_codewords(sub, codebook)[1][:, 0]])
    assert torch.equal(packed.bias, lin.bias.detach())


def test_without_incremental_confirmation_every_code_stays_soft_until_the_end():
    block, inputs = _block_and_inputs(64)
    report = calibrate_block(block, copy.deepcopy(block), inputs,
                             _fast(steps=40, codebook_steps=0, confirm_every=5, incremental=False), pack=False)
    assert all(r.confirmed_by_threshold == r.confirmed_forced == 0 for r in report.layers)
    assert all(layer.hard.all() for layer in (block.fc1, block.fc2))  # hardened at the end
    assert report.layers[0].hull_changes > 0
    with pytest.raises(InputError, match="incremental must be bool"):
        VQConfig(k=16, d=2, incremental=1)
