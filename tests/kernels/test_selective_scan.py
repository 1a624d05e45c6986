import math

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ptq4vm_fx.errors import InputError
from ptq4vm_fx.kernels import selective_scan as scan_kernels
from ptq4vm_fx.kernels.quantize import quantize_per_token_ref
from ptq4vm_fx.kernels.selective_scan import (
    _silu,
    _softplus,
    bc_row_align,
    bidirectional_scan,
    bidirectional_scan_quantize,
    bidirectional_scan_quantize_ref,
    bidirectional_scan_ref,
    selective_scan,
    selective_scan_ref,
)


def _inputs(Bsz, Dm, L, N, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(Bsz, Dm, L, generator=g).to(dtype)
    delta = (torch.randn(Bsz, Dm, L, generator=g) * 0.5 - 1.0).to(dtype)
    A = -(torch.rand(Dm, N, generator=g) * 2 + 0.1)
    B = torch.randn(Bsz, N, L, generator=g).to(dtype)
    C = torch.randn(Bsz, N, L, generator=g).to(dtype)
    D = torch.randn(Dm, generator=g)
    z = torch.randn(Bsz, Dm, L, generator=g).to(dtype)
    delta_bias = torch.randn(Dm, generator=g) * 0.5
    return u, delta, A, B, C, D, z, delta_bias


def _to(args, device):
    return [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]


def _tol(dtype):
    return {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}


# --------------------------------------------------------------------------------------------
# reference self-checks
# --------------------------------------------------------------------------------------------


def test_ref_matches_scalar_definition():
    """The vectorized reference against a literal float64 transcription of the recurrence."""
    u, delta, A, B, C, D, z, db = _inputs(1, 2, 5, 3, seed=1)
    for reverse in (False, True):
        out = selective_scan_ref(u, delta, A, B, C, D, z, db, True, reverse)
        for d in range(2):
            h = [0.0] * 3
            ts = range(4, -1, -1) if reverse else range(5)
            for t in ts:
                dt = float(delta[0, d, t]) + float(db[d])
                dt = math.log1p(math.exp(dt)) if dt <= 20 else dt
                y = 0.0
                for n in range(3):
                    h[n] = math.exp(dt * float(A[d, n])) * h[n] + dt * float(u[0, d, t]) * float(B[0, n, t])
                    y += h[n] * float(C[0, n, t])
                y += float(D[d]) * float(u[0, d, t])
                zz = float(z[0, d, t])
                y *= zz / (1 + math.exp(-zz))
                assert abs(out[0, d, t].item() - y) <= 1e-5 * (1 + abs(y))


def test_ref_reverse_is_flip_of_forward():
    u, delta, A, B, C, D, z, db = _inputs(2, 3, 6, 4, seed=2)
    rev = selective_scan_ref(u, delta, A, B, C, D, z, db, True, reverse=True)
    f = [t.flip(-1) for t in (u, delta, B, C, z)]
    fwd = selective_scan_ref(f[0], f[1], A, f[2], f[3], D, f[4], db, True, reverse=False)
    assert torch.equal(rev, fwd.flip(-1))


# --------------------------------------------------------------------------------------------
# the scan's softplus and SiLU (series log1p, approximate division)
# --------------------------------------------------------------------------------------------


@triton.jit
def _softplus_silu_kernel(x_ptr, sp_ptr, silu_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(sp_ptr + offs, _softplus(x), mask=offs < n)
    tl.store(silu_ptr + offs, _silu(x), mask=offs < n)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",  # the interpreter's numpy at +-inf
                            "ignore:invalid value encountered:RuntimeWarning")
def test_softplus_and_silu_match_torch(device):
    """Over the whole fp32 range the reference's softplus (log1p(exp(x)), x above 20) and SiLU
    (x / (1 + exp(-x))) are met to a few ulp plus the exp2 argument's rounding: the series log1p's
    truncation stays below that, x above 20 comes back exactly, and infinities and NaN come out
    as torch's do."""
    x = torch.cat([torch.linspace(-110, 110, 4001), torch.tensor(
        [0.0, -0.0, 1e-8, -1e-8, 19.999, 20.0, 20.001, 30.0, -20.0, 87.0, -87.0, 89.0, -89.0,
         float("inf"), float("-inf"), float("nan")])])
    sp, silu = torch.empty_like(x), torch.empty_like(x)
    dev = _to([x, sp, silu], device)
    _softplus_silu_kernel[(1,)](*dev, x.numel(), BLOCK=triton.next_power_of_2(x.numel()))
    sp, silu = dev[1].cpu(), dev[2].cpu()
    x64 = x.double()
    sp_ref = torch.where(x64 <= 20, torch.log1p(torch.exp(x64)), x64).float()
    silu_ref = (x64 / (1 + torch.exp(-x64))).float()
    for got, ref in ((sp, sp_ref), (silu, silu_ref)):
        finite = x.isfinite() & ref.isfinite()
        torch.testing.assert_close(got[~finite], ref[~finite], rtol=0, atol=0, equal_nan=True)
        err = (got[finite].double() - ref[finite].double()).abs()
        # exp(v) = exp2(v log2(e)): rounding log2(e) and v log2(e) costs up to ~|v| 1e-7 relative (so
        # on a GPU before: tl.exp is ex2.approx of v log2(e) there)
        bound = (3e-7 + 1e-7 * x[finite].abs().double()) * ref[finite].double().abs() + 1e-30
        assert (err <= bound).all(), f"worst at x={x[finite][(err / bound).argmax()].item()}"
    above = x > 20
    assert torch.equal(sp[above], x[above])


# --------------------------------------------------------------------------------------------
# selective_scan
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("Bsz,Dm,L", [(1, 5, 1), (2, 12, 7), (1, 64, 4), (1, 40, 3)])  # 64, 40: 2 blocks of 32
@pytest.mark.parametrize("N", [16, 5])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("full", [True, False])
def test_selective_scan_fp32(device, Bsz, Dm, L, N, reverse, full):
    u, delta, A, B, C, D, z, db = _inputs(Bsz, Dm, L, N, seed=Bsz + Dm + L + N)
    if not full:
        D = z = db = None
        delta = delta.abs() * 0.3  # no softplus: keep dt positive
    args = (u, delta, A, B, C, D, z, db)
    out = selective_scan(*_to(args, device), delta_softplus=full, reverse=reverse)
    ref = selective_scan_ref(*args, delta_softplus=full, reverse=reverse)
    assert out.shape == (Bsz, Dm, L) and out.dtype == torch.float32
    torch.testing.assert_close(out.cpu(), ref, **_tol(torch.float32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_selective_scan_half(device, dtype):
    args = _inputs(2, 12, 7, 16, seed=9, dtype=dtype)
    out = selective_scan(*_to(args, device), delta_softplus=True)
    ref = selective_scan_ref(*args, delta_softplus=True)
    assert out.dtype == dtype
    torch.testing.assert_close(out.cpu().float(), ref.float(), **_tol(dtype))


def test_selective_scan_strided_bc(device):
    """B and C as channel slices of one projection (Vim's x_dbl split), u as a transposed view."""
    Bsz, Dm, L, N, R = 2, 6, 7, 16, 3
    g = torch.Generator().manual_seed(5)
    x_dbl = torch.randn(Bsz, R + 2 * N, L, generator=g)
    B, C = x_dbl[:, R:R + N], x_dbl[:, R + N:]
    u = torch.randn(Bsz, L, Dm, generator=g).transpose(1, 2)
    _, delta, A, _, _, D, z, db = _inputs(Bsz, Dm, L, N, seed=5)
    args = (u, delta, A, B, C, D, z, db)
    out = selective_scan(*_to(args, device), delta_softplus=True, reverse=True)
    ref = selective_scan_ref(*[a.contiguous() for a in args], delta_softplus=True, reverse=True)
    torch.testing.assert_close(out.cpu(), ref, **_tol(torch.float32))


def test_bc_rows_align_only_where_every_stride_allows():
    """Elements per 16 bytes when B / C's batch and token strides are multiples of it (a promise on
    every row offset the kernel then vectorizes on), else 1: x_proj's output rows of Vim-S (56 columns)
    and Vim-B (80) in fp32 and fp16; Vim-T's 44 columns in fp16 (88 bytes) and an odd width are not."""
    tokens = 197
    assert bc_row_align(4, tokens * 56, 56) == 4 and bc_row_align(2, tokens * 56, 56) == 8
    assert bc_row_align(4, tokens * 80, 80, tokens * 80, 80) == 4
    assert bc_row_align(4, tokens * 44, 44) == 4 and bc_row_align(2, tokens * 44, 44) == 1
    assert bc_row_align(4, tokens * 57, 57) == 1
    assert bc_row_align(4, 56 * 6, 56, 57 * 6, 57) == 1  # C's strides count too


@pytest.mark.parametrize("R", [8, 7])  # x_dbl 40 columns (rows aligned: vector loads) or 39 (scalar)
def test_selective_scan_on_vim_rows_with_and_without_vector_loads(device, monkeypatch, R):
    """B and C as column slices of x_proj's token-major (batch, L, R + 2N) output: the launch proves
    their rows 16-byte aligned when the row width allows it, and the result is the reference's either way."""
    Bsz, Dm, L, N = 2, 12, 5, 16
    g = torch.Generator().manual_seed(R)
    x_dbl = torch.randn(Bsz, L, R + 2 * N, generator=g)
    B, C = x_dbl[..., R:R + N].transpose(1, 2), x_dbl[..., R + N:].transpose(1, 2)
    u, delta, A, _, _, D, z, db = _inputs(Bsz, Dm, L, N, seed=R)
    aligns = []
    monkeypatch.setattr(scan_kernels, "bc_row_align", lambda *a: aligns.append(bc_row_align(*a)) or aligns[-1])
    args = (u, delta, A, B, C, D, z, db)
    out = selective_scan(*_to(args, device), delta_softplus=True)
    assert aligns == [4 if (R + 2 * N) % 4 == 0 else 1]
    ref = selective_scan_ref(*args, delta_softplus=True)
    torch.testing.assert_close(out.cpu(), ref, **_tol(torch.float32))


def test_selective_scan_parameters_in_any_float_dtype(device):
    """A, D and delta_bias are used in fp32 whatever their dtype (a model moved to fp16 holds them so):
    the result of their fp32 values, from the kernel and the reference."""
    u, delta, A, B, C, D, z, db = _inputs(2, 6, 5, 8, seed=3)
    A, D, db = A.half().float(), D.half().float(), db.half().float()  # fp16-exact
    expect = selective_scan_ref(u, delta, A, B, C, D, z, db, True)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        args = (u, delta, A.to(dtype), B, C, D.to(dtype), z, db.to(dtype))
        if dtype != torch.bfloat16:  # not bf16-exact
            assert torch.equal(selective_scan_ref(*args, True), expect)
        out = selective_scan(*_to(args, device), True)
        ref = selective_scan_ref(*args, True)
        torch.testing.assert_close(out.cpu(), ref, **_tol(torch.float32))


def test_selective_scan_bad_inputs():
    u, delta, A, B, C, D, z, db = _inputs(2, 4, 5, 8, seed=0)
    with pytest.raises(ValueError, match="A must be a tensor"):
        selective_scan(u, delta, None, B, C)
    with pytest.raises(ValueError, match="A must have shape"):
        selective_scan(u, delta, A[:3], B, C)
    with pytest.raises(ValueError, match="A must be 2-D"):
        selective_scan(u, delta, A[0], B, C)
    with pytest.raises(ValueError, match="B must have shape"):
        selective_scan(u, delta, A, B[:, :4], C)
    with pytest.raises(ValueError, match="C must have dtype"):
        selective_scan(u, delta, A, B, C.double())
    with pytest.raises(ValueError, match="delta must have shape"):
        selective_scan(u, delta[..., :4], A, B, C)
    with pytest.raises(ValueError, match="u must be 3-D"):
        selective_scan(u[0], delta, A, B, C)
    with pytest.raises(ValueError, match="u must have dtype"):
        selective_scan(u.double(), delta, A, B, C)
    with pytest.raises(ValueError, match="z must have shape"):
        selective_scan(u, delta, A, B, C, D, z[:1])
    with pytest.raises(ValueError, match="D must have shape"):
        selective_scan(u, delta, A, B, C, D[:3])
    with pytest.raises(ValueError, match="delta_softplus"):
        selective_scan(u, delta, A, B, C, delta_softplus="yes")
    with pytest.raises(ValueError, match="reverse"):
        selective_scan(u, delta, A, B, C, reverse=1)
    with pytest.raises(ValueError, match="delta_bias"):
        selective_scan(u, delta, A, B, C, delta_bias=db[:2])
    with pytest.raises(ValueError, match="delta_bias"):
        selective_scan_ref(u, delta, A, B, C, delta_bias=db[:2])
    with pytest.raises(ValueError, match="A must have shape"):
        selective_scan_ref(u, delta, A[:3], B, C)


# --------------------------------------------------------------------------------------------
# bidirectional_scan, bidirectional_scan_quantize
# --------------------------------------------------------------------------------------------


def _bidir_inputs(Bsz, Dm, L, N, seed, dtype=torch.float32):
    uf, df, Af, Bf, Cf, Df, z, dbf = _inputs(Bsz, Dm, L, N, seed, dtype)
    ub, db_, Ab, Bb, Cb, Db, _, dbb = _inputs(Bsz, Dm, L, N, seed + 1, dtype)
    return (uf, df, Af, Bf, Cf, Df, dbf, ub, db_, Ab, Bb, Cb, Db, dbb), z


def _out_qparams(Dm, L, seed, smooth=True):
    """(inv_smooth (Dm,) or None, scale (L,), zero_point (L,) int32) for the scan's output."""
    g = torch.Generator().manual_seed(seed)
    inv_scale = 127.0 / ((torch.rand(L, generator=g) + 0.5) * 2.0)
    zp = torch.randint(-10, 11, (L,), dtype=torch.int32, generator=g)
    inv_smooth = torch.rand(Dm, generator=g) + 0.5 if smooth else None
    return inv_smooth, 1 / inv_scale, zp


@pytest.mark.parametrize("Bsz,Dm,L,N", [(1, 5, 1, 16), (2, 12, 7, 16), (1, 9, 6, 5), (2, 64, 5, 16), (1, 40, 4, 16)])
@pytest.mark.parametrize("with_z", [True, False])
def test_bidirectional_fp32(device, Bsz, Dm, L, N, with_z):
    branches, z = _bidir_inputs(Bsz, Dm, L, N, seed=Dm * L + N)
    z = z if with_z else None
    out = bidirectional_scan(*_to(branches, device), z if z is None else z.to(device), True)
    ref = bidirectional_scan_ref(*branches, z, True)
    assert out.shape == (Bsz, Dm, L) and out.dtype == torch.float32
    torch.testing.assert_close(out.cpu(), ref, **_tol(torch.float32))
    # the spec itself: (forward scan + reverse scan) / 2
    uf, df, Af, Bf, Cf, Df, dbf, ub, db_, Ab, Bb, Cb, Db, dbb = branches
    two = (selective_scan_ref(uf, df, Af, Bf, Cf, Df, z, dbf, True)
           + selective_scan_ref(ub, db_, Ab, Bb, Cb, Db, z, dbb, True, reverse=True)) / 2
    torch.testing.assert_close(ref, two, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("N", [16, 8, 4, 32])
def test_bidirectional_reads_x_proj_slices_and_any_A_layout(device, N):
    """B and C as x_proj's output slices (C's rows right after B's: the launch reads C at B's row + N), A
    channel-major for one direction and a misaligned view for the other (the launch copies A row-major,
    16-byte aligned, where it reads A's rows as vectors): the same output as contiguous inputs give."""
    Bsz, Dm, L, R = 2, 40, 7, 3
    branches, z = _bidir_inputs(Bsz, Dm, L, N, seed=11)
    uf, df, Af, Bf, Cf, Df, dbf, ub, db_, Ab, Bb, Cb, Db, dbb = branches
    ref = bidirectional_scan_ref(*branches, z, True)
    sliced = []
    for B, C in ((Bf, Cf), (Bb, Cb)):
        x_dbl = torch.randn(Bsz, L, R + 2 * N)
        x_dbl[..., R:R + N], x_dbl[..., R + N:] = B.transpose(1, 2), C.transpose(1, 2)
        sliced.append((x_dbl[..., R:R + N].transpose(1, 2), x_dbl[..., R + N:].transpose(1, 2)))
    (Bf2, Cf2), (Bb2, Cb2) = sliced
    Af2 = Af.t().contiguous().t()  # channel-major
    Ab2 = torch.empty(Dm * N + 1)[1:].view(Dm, N).copy_(Ab)  # rows 4 bytes off 16-byte alignment
    args = (uf, df, Af2, Bf2, Cf2, Df, dbf, ub, db_, Ab2, Bb2, Cb2, Db, dbb)
    out = bidirectional_scan(*_to(args, device), z.to(device), True)
    torch.testing.assert_close(out.cpu(), ref, **_tol(torch.float32))


def _silu_on_kernel(z, device):
    """z's SiLU as the kernels compute it (``_common._silu``), on ``device``."""
    x = z.contiguous().to(device).flatten()
    out, unused = torch.empty_like(x), torch.empty_like(x)
    _softplus_silu_kernel[(1,)](x, unused, out, x.numel(), BLOCK=triton.next_power_of_2(x.numel()))
    return out.reshape(z.shape)


@pytest.mark.parametrize("L", [6, 7])  # the middle token peeled or not
@pytest.mark.parametrize("quant", [False, True])
def test_bidirectional_gate_from_an_activated_z(device, L, quant):
    """z_silu=True on the kernels' silu(z) (what in_proj's epilogue stores) equals the scan computing silu(z)
    itself, bit for bit (stored output and codes); the references agree the same way with torch's SiLU."""
    branches, z = _bidir_inputs(2, 40, L, 16, seed=L)
    z = z * 4  # past SiLU's bend on both sides
    dev = _to(branches, device)
    qparams = (*_to(_out_qparams(40, L, seed=3), device), 8) if quant else ()
    op, ref = (bidirectional_scan_quantize, bidirectional_scan_quantize_ref) if quant else (bidirectional_scan,
                                                                                          bidirectional_scan_ref)
    tail = (True,) if quant else ()  # store_out, then z_silu
    before = op(*dev, z.to(device), True, *qparams)
    after = op(*dev, _silu_on_kernel(z, device), True, *qparams, *tail, True)
    for b, a in zip(*(t if quant else (t,) for t in (before, after))):
        assert torch.equal(b, a)
    qparams = tuple(t.cpu() if isinstance(t, torch.Tensor) else t for t in qparams)
    expect = ref(*branches, z, True, *qparams)
    got = ref(*branches, F.silu(z), True, *qparams, *tail, True)
    for e, g in zip(*(t if quant else (t,) for t in (expect, got))):
        assert torch.equal(e, g)


def test_z_silu_needs_a_z():
    branches, _ = _bidir_inputs(1, 4, 5, 8, seed=0)
    for op in (bidirectional_scan, bidirectional_scan_ref):
        with pytest.raises(ValueError, match="z_silu"):
            op(*branches, None, True, True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bidirectional_ref_rounds_like_the_unfused_graph(dtype):
    """In fp16 / bf16 each direction's output, their sum and the average are rounded to the dtype,
    as two ptq4vm::selective_scan calls, an add and a halving compute it."""
    branches, z = _bidir_inputs(2, 12, 9, 16, seed=4, dtype=dtype)
    uf, df, Af, Bf, Cf, Df, dbf, ub, db_, Ab, Bb, Cb, Db, dbb = branches
    two = (selective_scan_ref(uf, df, Af, Bf, Cf, Df, z, dbf, True)
           + selective_scan_ref(ub, db_, Ab, Bb, Cb, Db, z, dbb, True, reverse=True)) / 2
    assert two.dtype == dtype
    assert torch.equal(bidirectional_scan_ref(*branches, z, True), two)


def test_bidirectional_branches_share_a_dtype():
    branches, z = _bidir_inputs(1, 4, 5, 8, seed=0)
    bad = list(branches)
    bad[7] = bad[7].half()  # u_b
    with pytest.raises(ValueError, match="u_b must have u_f's dtype"):
        bidirectional_scan(*bad, None, False)


@pytest.mark.parametrize("dtype,smooth,bits", [(torch.float32, True, 8), (torch.float16, False, 8),
                                               (torch.bfloat16, True, 4)])
def test_bidirectional_quantized(device, dtype, smooth, bits):
    Bsz, Dm, L, N = 2, 12, 7, 16
    branches, z = _bidir_inputs(Bsz, Dm, L, N, seed=21, dtype=dtype)
    # no D / delta_bias on the backward branch: exercises the optional arguments
    branches = branches[:12] + (None, None)
    qp = _out_qparams(Dm, L, seed=22, smooth=smooth)
    out, xq = bidirectional_scan_quantize(*_to(branches, device), z.to(device), True, *_to(qp, device), bits)
    out_ref, xq_ref = bidirectional_scan_quantize_ref(*branches, z, True, *qp, bits)
    out, xq = out.cpu(), xq.cpu()
    assert out.dtype == dtype and xq.dtype == torch.int8 and xq.shape == (Bsz, L, Dm)
    torch.testing.assert_close(out.float(), out_ref.float(), **_tol(dtype))
    assert torch.equal(out_ref, bidirectional_scan_ref(*branches, z, True))  # the float output is the scan's
    # codes: exactly the quantization of the kernel's own (stored) output ...
    own = quantize_per_token_ref(out.transpose(1, 2), *qp, bits)
    assert torch.equal(xq, own)
    # ... and the reference's codes wherever the outputs agree
    same = (out == out_ref).transpose(1, 2)
    assert torch.equal(xq[same], xq_ref[same])
    assert (xq.int() - xq_ref.int()).abs().max() <= 1


def test_bidirectional_codes_without_the_float_output(device):
    """store_out=False: the same codes, no float output written (an empty tensor comes back)."""
    branches, z = _bidir_inputs(2, 40, 7, 16, seed=31, dtype=torch.float16)
    qp = _out_qparams(40, 7, seed=32)
    args = (*_to(branches, device), z.to(device), True, *_to(qp, device), 8)
    out, xq = bidirectional_scan_quantize(*args)
    none, xq_only = bidirectional_scan_quantize(*args, store_out=False)
    assert none.numel() == 0 and none.dtype == out.dtype
    assert torch.equal(xq_only, xq)
    ref_none, ref_xq = bidirectional_scan_quantize_ref(*branches, z, True, *qp, 8, store_out=False)
    assert ref_none.numel() == 0
    assert torch.equal(ref_xq, bidirectional_scan_quantize_ref(*branches, z, True, *qp, 8)[1])
    with pytest.raises(ValueError, match="store_out must be a bool"):
        bidirectional_scan_quantize(*branches, z, True, *qp, 8, store_out=0)


def test_bidirectional_bad_inputs():
    branches, z = _bidir_inputs(2, 4, 5, 8, seed=0)
    qp = _out_qparams(4, 5, seed=0)
    bad = list(branches)
    bad[7] = bad[7][:, :, :4]  # u_b shorter
    with pytest.raises(ValueError, match="backward"):
        bidirectional_scan(*bad, None, False)
    bad = list(branches)
    bad[9] = bad[9][:3]  # A_b
    with pytest.raises(ValueError, match="backward A must have shape"):
        bidirectional_scan(*bad, z, False)
    bad = list(branches)
    bad[3] = bad[3].double()  # B_f
    with pytest.raises(ValueError, match="B must have dtype"):
        bidirectional_scan_ref(*bad, z, False)
    with pytest.raises(ValueError, match="z must have shape"):
        bidirectional_scan(*branches, z[:1], True)
    with pytest.raises(ValueError, match="delta_softplus"):
        bidirectional_scan(*branches, z, "yes")
    with pytest.raises(ValueError, match="scale"):
        bidirectional_scan_quantize(*branches, z, True, qp[0], None, qp[2], 8)
    with pytest.raises(ValueError, match="zero_point"):
        bidirectional_scan_quantize(*branches, z, True, qp[0], qp[1], None, 8)
    with pytest.raises(ValueError, match="inv_smooth"):
        bidirectional_scan_quantize(*branches, z, True, qp[0][:3], qp[1], qp[2], 8)
    with pytest.raises(ValueError, match="bits"):
        bidirectional_scan_quantize(*branches, z, True, *qp, 9)
    with pytest.raises(InputError, match="the input has 5 tokens"):  # scales calibrated for L = 4
        bidirectional_scan_quantize(*branches, z, True, qp[0], qp[1][:4], qp[2][:4], 8)
    with pytest.raises(InputError, match="the input has 5 tokens"):
        bidirectional_scan_quantize_ref(*branches, z, True, qp[0], qp[1][:4], qp[2][:4], 8)


def test_bidirectional_quantized_epilogue_rounds_ties_to_even(device):
    """delta = 0 freezes the state at 0, so each direction's output is D * u: u on .5 steps of the
    output quantizer puts every value on a tie; the epilogue rounds them half to even, as the
    reference (quant/integer.py) does."""
    u = torch.tensor([[[0.5, 1.5, 2.5, -0.5, -1.5, -2.5]]])  # (batch 1, D 1, L 6)
    zeros, A = torch.zeros(1, 1, 6), -torch.ones(1, 1)
    B = C = torch.zeros(1, 1, 6)
    branch = (u, zeros, A, B, C, torch.ones(1), None)
    args = (*branch, *branch, None, False, None, torch.ones(6), torch.zeros(6, dtype=torch.int32), 8)
    out, xq = bidirectional_scan_quantize(*_to(args, device))
    out_ref, xq_ref = bidirectional_scan_quantize_ref(*args)
    assert out_ref.flatten().tolist() == u.flatten().tolist()
    assert xq_ref.flatten().tolist() == [0, 2, 2, 0, -2, -2]
    assert torch.equal(xq.cpu(), xq_ref) and torch.equal(out.cpu(), out_ref)


# --------------------------------------------------------------------------------------------
# the ordered scan: K directions reading the tokens through order maps, summed
# --------------------------------------------------------------------------------------------


def _ordered_inputs(K, Bsz, Dm, L, N, seed, dtype=torch.float32):
    """u, deltas, A (K, Dm, N), Bs, Cs, D (K, Dm), z, delta_bias (K, Dm): K directions' scan inputs."""
    per = [_inputs(Bsz, Dm, L, N, seed + k, dtype) for k in range(K)]
    u, z = per[0][0], per[0][6]
    return (u, [p[1] for p in per], torch.stack([p[2] for p in per]), [p[3] for p in per], [p[4] for p in per],
            torch.stack([p[5] for p in per]), z, torch.stack([p[7] for p in per]))


def _cross_and_windows(height, width):
    """VMamba's four directions of a (height, width) map, and LocalMamba's padded 2x2 windows both ways with
    its column-major merge (models/orders.py): (orders, scatters or None) per case."""
    from ptq4vm_fx.models.orders import token_orders, token_scatters

    x = torch.empty(1, 1, height, width)
    cross = (("h", 0, False), ("v", 0, False), ("h", 0, True), ("v", 0, True))
    windows = (("w", 2, False), ("w", 2, True))
    columns = (("v", 0, True),)
    return [(token_orders(x, cross), None), (token_orders(x, windows), token_scatters(x, windows)),
            (token_orders(x, columns), token_scatters(x, columns))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", [0, 1, 2], ids=["cross", "windows", "columns"])
def test_ordered_scan_matches_reference(device, dtype, case):
    """Non-square 3x5 map (odd sizes, windows that need padding, a column merge that is no inverse), every
    optional input present, against the reference."""
    order, scatter = _cross_and_windows(3, 5)[case]
    args = _ordered_inputs(order.shape[0], 2, 5, 15, 3, seed=4, dtype=dtype)
    out = scan_kernels.ordered_scan(*_to(args, device), order.to(device), _to([scatter], device)[0], True)
    ref = scan_kernels.ordered_scan_ref(*args, order, scatter, True)
    assert out.stride(1) == 1 and out.dtype == dtype
    torch.testing.assert_close(out.cpu().float(), ref.float(), **_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_ordered_scan_is_the_single_scan_on_gathered_copies(device, dtype):
    """Bit for bit: each direction equals the single-direction kernel on the zero-padded, gathered copies
    its order describes, scattered back; the directions sum as ``y_0 + y_1 + ...`` in the output dtype."""
    order, scatter = _cross_and_windows(3, 5)[1]
    u, deltas, A, Bs, Cs, D, z, db = _to(_ordered_inputs(2, 2, 5, 15, 3, seed=6, dtype=dtype), device)
    order, scatter = order.to(device), scatter.to(device)
    expect = 0
    for k in range(2):
        valid, index = order[k] >= 0, order[k].clamp(min=0).long()

        def gathered(t, valid=valid, index=index):
            return torch.where(valid, t.index_select(-1, index), 0)

        y = selective_scan(gathered(u), gathered(deltas[k]), A[k], gathered(Bs[k]), gathered(Cs[k]), D[k], gathered(z),
                           db[k], True)
        merged = torch.empty_like(u).index_copy_(-1, scatter[k][valid].long(), y[..., valid])
        expect = expect + merged
        one = scan_kernels.ordered_scan(u, deltas[k : k + 1], A[k : k + 1], Bs[k : k + 1], Cs[k : k + 1],
                                        D[k : k + 1], z, db[k : k + 1], order[k : k + 1], scatter[k : k + 1], True)
        assert torch.equal(one, merged)
    both = scan_kernels.ordered_scan(u, deltas, A, Bs, Cs, D, z, db, order, scatter, True)
    assert torch.equal(both, expect)


def test_ordered_scan_ref_reads_padding_as_the_official_zeros():
    """A -1 step is a zero-padded token (u = B = C = z = 0, raw delta 0, so delta = softplus(delta_bias)):
    it still decays the state, and its output is dropped."""
    u, deltas, A, Bs, Cs, D, z, db = _ordered_inputs(1, 1, 3, 4, 2, seed=8)
    order = torch.tensor([[0, -1, 1, 2, -1, 3]])
    padded = [F.pad(t, (0, 2))[..., [0, 4, 1, 2, 5, 3]] for t in (u, deltas[0], Bs[0], Cs[0], z)]
    y = selective_scan_ref(padded[0], padded[1], A[0], padded[2], padded[3], D[0], padded[4], db[0], True)
    out = scan_kernels.ordered_scan_ref(u, deltas, A, Bs, Cs, D, z, db, order, None, True)
    assert torch.equal(out, y[..., [0, 2, 3, 5]])
    without_pad = selective_scan_ref(u, deltas[0], A[0], Bs[0], Cs[0], D[0], z, db[0], True)
    assert not torch.allclose(out[..., 1:], without_pad[..., 1:])  # the padded step decayed the state


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("direction", [("w", 2, True), ("v", 0, False)])
def test_ordered_scan_with_z_order_is_the_sequence_scan_merged(device, dtype, direction):
    """LocalVim's scan (z_order): u, delta, B, C in sequence order (S = 25 steps of a padded 3x5 grid and its
    class token, walked backwards when flipped; 16 for v, whose merge is not its order's inverse), z read
    through its map from the T = 16 natural tokens (zeros at -1), the output written through the scatter map:
    bit for bit the single-direction kernel on the gathered z, merged by a copy; the reference to rounding."""
    from ptq4vm_fx.models.orders import sequence_maps, sequence_scan_maps

    x = torch.empty(1, 1, 16)
    reads, writes = sequence_maps(x, direction, 3, 5, True)
    maps = sequence_scan_maps(x, direction, 3, 5, True)
    S = reads.shape[0]
    u, deltas, A, Bs, Cs, D, _, db = _ordered_inputs(1, 2, 5, S, 3, seed=11, dtype=dtype)
    z = _inputs(2, 10, 16, 3, 12, dtype)[0][:, 5:]  # a strided half, as LocalVim's xz
    args = (u, deltas, A, Bs, Cs, D, z, db, maps[:1], maps[2:], True, maps[1:2])
    out = scan_kernels.ordered_scan(*_to(args, device))
    assert out.shape == (2, 5, 16) and out.stride(1) == 1 and out.dtype == dtype
    z_seq = torch.where(reads >= 0, z.index_select(-1, reads.clamp(min=0).long()), 0)
    y = selective_scan(*_to((u, deltas[0], A[0], Bs[0], Cs[0], D[0], z_seq, db[0], True, direction[2]), device))
    merged = torch.empty_like(out).index_copy_(-1, writes[writes >= 0].long().to(device), y[..., writes >= 0])
    assert torch.equal(out, merged)
    ref = scan_kernels.ordered_scan_ref(*args)
    torch.testing.assert_close(out.cpu().float(), ref.float(), **_tol(dtype))
    assert torch.equal(torch.ops.ptq4vm.ordered_scan(*args), ref)
    with pytest.raises(ValueError, match="its -1 \\(padding\\) entries where z_order has them"):  # a token dropped
        scan_kernels.ordered_scan_ref(*args[:9], torch.where(maps[1:2] == 0, -1, maps[2:]), True, maps[1:2])


def test_ordered_scan_bad_inputs():
    args = _ordered_inputs(2, 1, 3, 4, 2, seed=9)
    order = torch.stack([torch.arange(4), torch.arange(4).flip(0)]).int()
    for bad, message in ((order[:1], "order must be a \\(2, S\\)"), (order.float(), "int32 / int64")):
        with pytest.raises(ValueError, match=message):
            scan_kernels.ordered_scan(*args, bad, None, True)
    with pytest.raises(ValueError, match="scatter must be an int32 / int64 tensor of order's shape"):
        scan_kernels.ordered_scan(*args, order, order[:, :3], True)
    u, deltas, A, Bs, Cs, D, z, db = args
    with pytest.raises(ValueError, match="2 deltas need 2 Bs"):
        scan_kernels.ordered_scan(u, deltas, A, Bs[:1], Cs, D, z, db, order, None, True)
    with pytest.raises(ValueError, match="direction 1 delta must have shape"):
        scan_kernels.ordered_scan(u, [deltas[0], deltas[1][..., :3]], A, Bs, Cs, D, z, db, order, None, True)
    for bad, message in ((torch.tensor([[0, 1, 1, 2], [0, 1, 2, 3]]), "direction 0 does not write each"),
                         (torch.tensor([[0, 1, 2, 4], [0, 1, 2, 3]]), "entries must lie in \\[-1, 4\\)"),
                         (torch.tensor([[0, 1, 2, 3, -1], [0, 1, 2, 3, -1]]), None)):
        if message is None:  # padding steps are fine
            scan_kernels.ordered_scan_ref(*args, bad, None, True)
            continue
        with pytest.raises(ValueError, match=message):
            scan_kernels.ordered_scan_ref(*args, bad, None, True)
    with pytest.raises(ValueError, match="scatter must have order's shape and its -1"):
        scan_kernels.ordered_scan_ref(*args, torch.tensor([[0, 1, 2, 3, -1]] * 2), torch.tensor([[0, 1, 2, -1, 3]] * 2),
                                      True)
