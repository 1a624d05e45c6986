import pytest
import torch

from ptq4vm_fx.quant import grid_search
from ptq4vm_fx.quant.fake_quant import act_qparams, fake_quant_act, fake_quant_weight
from ptq4vm_fx.quant.grid_search import _act_error, search_token_qparams, search_weight_scale


def test_weight_search_beats_absmax_on_long_tails():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 256, generator=g)
    w[:, 0] = 20.0  # one outlier per row
    absmax = w.abs().amax(1) / 7
    best = search_weight_scale(w, 4)
    err = lambda s: (fake_quant_weight(w, s, 4) - w).abs().pow(2.4).sum(1)  # noqa: E731
    assert torch.all(err(best) <= err(absmax))
    assert torch.all(best <= absmax + 1e-12)


def test_token_search_is_per_token_and_never_worse_than_minmax():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 5, 64, generator=g) * torch.tensor([0.1, 1, 10, 1, 0.5])[None, :, None]
    x[0, 2, 0] = 500.0
    ones = torch.ones(64)
    scale, zp = search_token_qparams(x, ones, 4)
    s0, z0 = act_qparams(x.amin((0, 2)), x.amax((0, 2)), 4)
    err = lambda s, z: (fake_quant_act(x, ones, s, z, 4) - x).abs().pow(2.4).sum((0, 2))  # noqa: E731
    assert torch.all(err(scale, zp) <= err(s0, z0))
    assert scale[2] < s0[2]  # the outlier token got clipped
    per_tensor, _ = search_token_qparams(x, ones, 4, per_token=False)
    assert torch.all(per_tensor == per_tensor[0])


def test_token_search_error_is_the_fake_quant_error_bit_for_bit():
    """The search's in-place error equals sum |fake_quant_act(x) - x * inv_smooth|^2.4 exactly, clipped
    tokens and a smoothing vector included."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, 32, generator=g) * torch.linspace(0.1, 5, 6)[None, :, None]
    inv_smooth = torch.rand(32, generator=g) + 0.5
    v = x * inv_smooth
    s, z = act_qparams(v.amin((0, 2)) * 0.6, v.amax((0, 2)) * 0.6, 8)
    expected = (fake_quant_act(x, inv_smooth, s, z, 8) - v).abs().pow(2.4).sum((0, 2))
    assert torch.equal(_act_error(v, s, z, 8, 2.4, torch.empty_like(v)), expected)


def _plain_token_search(x, inv_smooth, bits, per_token):
    """The token search written plainly: every candidate on the whole tensor through fake_quant_act."""
    v = x * inv_smooth
    dims = (0, 2) if per_token else (0, 1, 2)
    lo, hi = v.amin(dims), v.amax(dims)
    best_err = torch.full((x.shape[1],), float("inf"))
    best_s, best_z = (t.expand(x.shape[1]) for t in act_qparams(lo, hi, bits))
    for i in range(100):
        s, z = (t.expand(x.shape[1]) for t in act_qparams(lo * (1 - i / 100), hi * (1 - i / 100), bits))
        err = (fake_quant_act(x, inv_smooth, s, z, bits) - v).abs().pow(2.4).sum((0, 2))
        if not per_token:
            err = err.sum().expand(x.shape[1])
        better = err < best_err
        best_err, best_s, best_z = (torch.where(better, a, b) for a, b in ((err, best_err), (s, best_s), (z, best_z)))
    return best_s, best_z


@pytest.mark.parametrize("per_token", [True, False])
@pytest.mark.parametrize("chunk_floats", [1, 3 * 8 * 16, 1 << 17])
def test_token_search_by_token_slices_is_the_plain_search(monkeypatch, per_token, chunk_floats):
    """One token, three tokens or all tokens at a time: the same scales and zero points, bit for bit."""
    monkeypatch.setattr(grid_search, "_CHUNK_FLOATS", chunk_floats)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 7, 16, generator=g) * torch.linspace(0.2, 4, 7)[None, :, None]
    x[0, 3, 5] = 40.0
    inv_smooth = torch.rand(16, generator=g) + 0.5
    got = search_token_qparams(x, inv_smooth, 4, per_token=per_token)
    expected = _plain_token_search(x, inv_smooth, 4, per_token)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_midpoint_search_shrinks_both_ends_and_both_takes_the_better():
    """"midpoint" ranges are [lo + a w, hi - a w] for a < 1/2, never the full range (as the official code);
    "both" keeps, per token, the lower error of the two searches."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 4, 32, generator=g) + torch.tensor([0.0, 3.0, -2.0, 0.5])[None, :, None]
    ones = torch.ones(32)
    err = lambda s, z: (fake_quant_act(x, ones, s, z, 4) - x).abs().pow(2.4).sum((0, 2))  # noqa: E731
    lo, hi = x.amin((0, 2)), x.amax((0, 2))
    full_scale, _ = act_qparams(lo, hi, 4)
    results = {shrink: search_token_qparams(x, ones, 4, shrink=shrink) for shrink in ("zero", "midpoint", "both")}
    assert torch.all(results["midpoint"][0] < full_scale)
    candidates = [act_qparams(lo + (hi - lo) * i / 100, hi - (hi - lo) * i / 100, 4) for i in range(1, 50)]
    best = torch.stack([err(s.expand(4), z.expand(4)) for s, z in candidates]).amin(0)
    assert torch.equal(err(*results["midpoint"]), best)
    expected = torch.minimum(err(*results["zero"]), err(*results["midpoint"]))
    assert torch.equal(err(*results["both"]), expected)
