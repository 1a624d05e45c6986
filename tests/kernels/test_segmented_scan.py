"""The small-batch scan (kernels/segmented_scan.py) against the one scan reference, under the Triton
interpreter on tiny shapes: both directions, with and without z / D / delta_bias (and softplus), fp32,
fp16 and bf16 inputs, lengths that leave the last segments partly or wholly empty; Vim's bidirectional
scan (+ quantize) by segments; and the ops' choice of it. The ops' CUDA implementations (selective_scan,
the bidirectional launch) run it where use_segmented says so: on a GPU at batches up to 8; the tests say
so under the interpreter too."""

import pytest
import torch

from ptq4vm_fx.kernels import segmented_scan as seg
from ptq4vm_fx.kernels.selective_scan import (
    bidirectional_scan,
    bidirectional_scan_quantize,
    bidirectional_scan_quantize_ref,
    bidirectional_scan_ref,
    selective_scan,
)
from ptq4vm_fx.scan import selective_scan_ref


def _inputs(batch, d, length, n, full, dtype, seed):
    """(u, delta, A, B, C, D, z, delta_bias, delta_softplus); ``full`` False: no D, z, delta_bias, softplus
    (delta then positive, as a softplus'd one is)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, d, length, generator=g).to(dtype)
    delta = torch.randn(batch, d, length, generator=g) * 0.5 - 1.0
    delta = (delta if full else delta.abs()).to(dtype)
    A = -(torch.rand(d, n, generator=g) * 2 + 0.1)
    B = torch.randn(batch, n, length, generator=g).to(dtype)
    C = torch.randn(batch, n, length, generator=g).to(dtype)
    D = torch.randn(d, generator=g) if full else None
    z = torch.randn(batch, d, length, generator=g).to(dtype) if full else None
    delta_bias = torch.randn(d, generator=g) * 0.5 if full else None
    return u, delta, A, B, C, D, z, delta_bias, full


def _to(args, device):
    return [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]


@pytest.fixture
def segmented(monkeypatch):
    """selective_scan (the op's CUDA implementation) running the segmented kernel at any batch; counts its
    launches."""
    launches = []
    launch = seg.launch_segmented_scan
    monkeypatch.setattr(seg, "use_segmented", lambda batch: True)
    monkeypatch.setattr(seg, "launch_segmented_scan", lambda *a: launches.append(a[1].shape[0]) or launch(*a))
    return launches


def _assert_rounding_close(got, ref):
    """Equal to the reference up to fp32 rounding of the state (fp16: of the output's last bit)."""
    assert got.shape == ref.shape and got.dtype == ref.dtype and got.transpose(1, 2).is_contiguous()  # token-major
    scale = ref.float().abs().max()
    bound = {torch.float32: 2e-6, torch.float16: 2 ** -10, torch.bfloat16: 2 ** -7}[ref.dtype]
    assert (got.float() - ref.float()).abs().max() <= bound * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("full", [True, False])
@pytest.mark.parametrize("shape", [(1, 33, 13, 4), (2, 8, 5, 16), (1, 40, 1, 3)])
def test_matches_the_scan_reference(device, segmented, dtype, reverse, full, shape):
    """(batch, D, L, N): 33 channels (a partial block), 13 tokens in 4 segments of 4 (the last one partial),
    5 tokens (the last segment empty), one token; N = 3 (a partial state block)."""
    args = _inputs(*shape, full, dtype, seed=sum(shape))
    got = selective_scan(*_to(args, device), reverse).cpu()
    assert segmented == [shape[0]]
    _assert_rounding_close(got, selective_scan_ref(*args, reverse))


def test_the_gpu_configuration_and_strided_inputs(device, segmented, monkeypatch):
    """The GPU's launch (16 segments of 8 channels, 4 warps: here 23 tokens in segments of 2) on Vim's
    layouts: token-major u, delta and z, B and C column slices of one (batch, L, 2N) tensor."""
    monkeypatch.setattr(seg, "interpret_mode", lambda: False)
    assert seg.segment_config(2, 24, 16, 23) == (8, 16, 16, 4)
    u, delta, A, _, _, D, z, delta_bias, _ = _inputs(2, 24, 23, 16, True, torch.float32, seed=3)
    x_dbl = torch.randn(2, 23, 32, generator=torch.Generator().manual_seed(4))
    B, C = x_dbl[..., :16].transpose(1, 2), x_dbl[..., 16:].transpose(1, 2)
    u, delta, z = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (u, delta, z))
    args = (u, delta, A, B, C, D, z, delta_bias, True)
    for reverse in (False, True):
        got = selective_scan(*_to(args, device), reverse).cpu()
        _assert_rounding_close(got, selective_scan_ref(*args, reverse))
    assert segmented == [2, 2]


def test_the_op_runs_it_for_small_batches_on_a_gpu(device, monkeypatch):
    """use_segmented: batches up to 8 on a GPU; under the interpreter (tests/conftest.py) never, so the
    one-pass kernel keeps its tests. selective_scan follows it."""
    launches = []
    launch = seg.launch_segmented_scan
    monkeypatch.setattr(seg, "launch_segmented_scan", lambda *a: launches.append(a[1].shape[0]) or launch(*a))
    for batch in (1, 9):
        args = _to(_inputs(batch, 8, 3, 4, True, torch.float32, seed=batch), device)
        selective_scan(*args, False)
    assert launches == [] and not seg.use_segmented(1)
    monkeypatch.setattr(seg, "interpret_mode", lambda: False)
    assert [seg.use_segmented(b) for b in (1, seg.MAX_BATCH, seg.MAX_BATCH + 1)] == [True, True, False]
    for batch in (1, 9):
        args = _inputs(batch, 8, 3, 4, True, torch.float32, seed=batch)
        _assert_rounding_close(selective_scan(*_to(args, device), False).cpu(), selective_scan_ref(*args, False))
    assert launches == [1]


def _branch(batch, d, length, n, dtype, g):
    """(u, delta, A, B, C, D, delta_bias) of one direction."""
    return (torch.randn(batch, d, length, generator=g).to(dtype),
            (torch.randn(batch, d, length, generator=g) * 0.5 - 1.0).to(dtype),
            -(torch.rand(d, n, generator=g) * 2 + 0.1), torch.randn(batch, n, length, generator=g).to(dtype),
            torch.randn(batch, n, length, generator=g).to(dtype), torch.randn(d, generator=g),
            torch.randn(d, generator=g) * 0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("store_out", [True, False])
@pytest.mark.parametrize("shape", [(2, 33, 13, 4), (1, 8, 1, 16)])
def test_the_bidirectional_op_by_segments(device, segmented, dtype, store_out, shape):
    """Vim's bidirectional scan + quantize (the op's CUDA implementation) by segments at small batches: each
    direction segmented, then their average stored and quantized per token, against the reference: the
    output to rounding, the codes within one step (a rounding at a tie apart at most)."""
    g = torch.Generator().manual_seed(sum(shape))
    fwd, bwd = _branch(*shape, dtype, g), _branch(*shape, dtype, g)
    batch, d, length, _ = shape
    z = torch.randn(batch, d, length, generator=g).to(dtype)
    qparams = (torch.rand(d, generator=g) + 0.5, torch.rand(length, generator=g) * 0.05 + 0.01,
               torch.randint(-5, 6, (length,), generator=g, dtype=torch.int32), 8)
    args = (*fwd, *bwd, z, True, *qparams, store_out)
    y, codes = (t.cpu() for t in bidirectional_scan_quantize(*_to(args, device)))
    y_ref, codes_ref = bidirectional_scan_quantize_ref(*args)
    assert segmented == [batch, batch]  # one launch per direction
    assert codes.dtype == torch.int8 and codes.shape == codes_ref.shape
    assert (codes.int() - codes_ref.int()).abs().max() <= 1 and (codes != codes_ref).float().mean() <= 0.01
    if store_out:
        _assert_rounding_close(y, y_ref)
    else:
        assert y.numel() == 0
    _assert_rounding_close(bidirectional_scan(*_to(args[:16], device)).cpu(), bidirectional_scan_ref(*args[:16]))


def test_the_bidirectional_op_by_segments_gates_with_an_activated_z(device, segmented):
    """z_silu=True (z holds silu(z): in_proj's epilogue computed it) by segments: each direction multiplies by z
    as it is, so the output equals the reference's on the same activated z to rounding, and is not the output
    gated by silu(silu(z))."""
    g = torch.Generator().manual_seed(5)
    shape = (2, 33, 13, 4)
    fwd, bwd = _branch(*shape, torch.float32, g), _branch(*shape, torch.float32, g)
    z = torch.nn.functional.silu(torch.randn(*shape[:3], generator=g) * 3)
    args = (*fwd, *bwd, z, True, True)
    y = bidirectional_scan(*_to(args, device)).cpu()
    assert segmented == [2, 2]
    _assert_rounding_close(y, bidirectional_scan_ref(*args))
    assert not torch.allclose(y, bidirectional_scan_ref(*args[:16]), rtol=1e-3)
