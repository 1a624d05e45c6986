"""The custom ops: the ptq4vm_fused ops' reference implementations == the eager ptq4vm ops they
replace; for every op (ptq4vm and ptq4vm_fused) the CUDA implementation (Triton kernels; the
interpreter on the CPU) == the reference, and the fake implementations are consistent (opcheck)."""

import pytest
import torch
import torch.nn.functional as F

from ptq4vm_fx import ops
from ptq4vm_fx.lowering import fused_ops
from ptq4vm_fx.models.vim import RMSNorm

L, C, N, D, S, W = 5, 24, 40, 16, 4, 4  # tokens, channels, linear outputs, d_inner, d_state, conv width


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _qparams(channels, seed, tokens=L, amax=3.0):
    """(inv_smooth (channels,), scale (L,), zero_point (L,) int32) that put N(0, 1) data in range."""
    g = _gen(seed)
    inv_smooth = torch.rand(channels, generator=g) + 0.5
    scale = (torch.rand(tokens, generator=g) + 0.5) * amax / 127
    zero_point = torch.randint(-40, 41, (tokens,), dtype=torch.int32, generator=g)
    return inv_smooth, scale, zero_point


def _linear_args(batch, seed=0, bias=True):
    g = _gen(seed)
    xq = torch.randint(-128, 128, (batch, L, C), dtype=torch.int8, generator=g)
    wq = torch.randint(-127, 128, (N, C), dtype=torch.int8, generator=g)
    _, x_scale, x_zp = _qparams(C, seed)
    w_scale = torch.rand(N, generator=g) * 0.01 + 1e-3
    b = torch.randn(N, generator=g) if bias else None
    return xq, x_scale, x_zp, wq, w_scale, wq.to(torch.int32).sum(1), b


def _scan_branch(batch, g):
    """u, delta, A, B, C, D, delta_bias with Vim's layouts: B / C are transposed views."""
    u = torch.randn(batch, D, L, generator=g)
    delta = torch.randn(batch, D, L, generator=g) * 0.5
    A = -torch.exp(torch.randn(D, S, generator=g) * 0.5)
    x_dbl = torch.randn(batch, L, 2 * S, generator=g)
    B, C_ = x_dbl[..., :S].transpose(1, 2), x_dbl[..., S:].transpose(1, 2)
    return u, delta, A, B, C_, torch.randn(D, generator=g), torch.randn(D, generator=g) * 0.1


def sample_args(op, batch, seed=0):
    """Arguments of ``op`` shaped like a Vim block's (``batch`` images, ``L`` tokens)."""
    g = _gen(seed + 100)
    if op is ops.int8_linear:
        return (*_linear_args(batch, seed), torch.float32)
    if op is fused_ops.int8_linear_softplus:  # dt_proj with the scan's delta_bias and softplus
        return (*_linear_args(batch, seed), torch.randn(N, generator=g), torch.float32)
    if op is fused_ops.int8_linear_silu:  # in_proj with the scan's SiLU on its z half
        return (*_linear_args(batch, seed), N // 2, torch.float32)
    if op is fused_ops.int8_linear_quantize:  # dt_proj's input: the first columns of x_proj's output
        return (*_linear_args(batch, seed), torch.float32, 0, C, *_qparams(C, seed, amax=0.5), 8)
    if op is ops.quantize_per_token:
        x_dbl = torch.randn(batch, L, C + 8, generator=g)  # a column slice, as dt_proj's input
        return (x_dbl[..., :C], *_qparams(C, seed), 8)
    if op is fused_ops.add_rmsnorm_quantize:
        x, residual = torch.randn(batch, L, C, generator=g), torch.randn(batch, L, C, generator=g)
        return (x, residual, torch.rand(C, generator=g) + 0.5, 1e-5, torch.ones(C), *_qparams(C, seed)[1:], 8,
                torch.float32)
    if op in (fused_ops.conv1d_silu_quantize, fused_ops.conv1d_silu):
        xz = torch.randn(batch, L, 2 * D, generator=g)  # in_proj's output, x half transposed
        conv = (xz[..., :D].transpose(1, 2), torch.randn(D, 1, W, generator=g) * 0.5, torch.randn(D, generator=g))
        if op is fused_ops.conv1d_silu:
            return (*conv, bool(seed % 2))
        return (*conv, *_qparams(D, seed, amax=1.5), 8, bool(seed % 2))
    z = torch.randn(batch, L, 2 * D, generator=g)[..., D:].transpose(1, 2)
    args = (*_scan_branch(batch, g), *_scan_branch(batch, g), z, True)
    if op is fused_ops.bidirectional_scan:
        return args
    return (*args, *_qparams(D, seed, amax=1.0), 8)


ALL_OPS = [ops.quantize_per_token, ops.int8_linear, fused_ops.int8_linear_quantize, fused_ops.int8_linear_softplus,
           fused_ops.int8_linear_silu,
           fused_ops.add_rmsnorm_quantize, fused_ops.conv1d_silu_quantize, fused_ops.conv1d_silu,
           fused_ops.bidirectional_scan, fused_ops.bidirectional_scan_quantize]


def test_every_op_has_its_kernel_registered():
    others = {torch.ops.ptq4vm.selective_scan.default, torch.ops.ptq4vm.ordered_scan.default,
              torch.ops.ptq4vm.vq_linear.default, torch.ops.ptq4vm.ordered_conv1d_silu.default}  # tests/kernels/
    assert {op._opoverload for op in ALL_OPS} | others == set(ops.CUDA_KERNELS)


def _close(a, b):
    """Integer outputs equal, float outputs to fp32 rounding."""
    if not a.dtype.is_floating_point:
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# reference implementation == the eager ops it replaces
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("q_start,q_cols", [(0, 12), (30, 10)])
def test_int8_linear_quantize_equals_int8_linear_then_quantize(out_dtype, q_start, q_cols):
    args = _linear_args(3)
    qparams = _qparams(q_cols, seed=1, amax=0.5)
    y = torch.ops.ptq4vm.int8_linear(*args, out_dtype)
    expect = torch.ops.ptq4vm.quantize_per_token(y[..., q_start:q_start + q_cols].float(), *qparams, 8)
    got_y, got_q = fused_ops.int8_linear_quantize(*args, out_dtype, q_start, q_cols, *qparams, 8)
    assert torch.equal(got_y, y) and torch.equal(got_q, expect)
    assert 0 < (expect.abs() == 127).sum() < expect.numel() / 2  # codes spread over the range, few clamped


@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("norm_dtype", [torch.float32, torch.float16])
def test_add_rmsnorm_quantize_equals_eager(with_residual, norm_dtype):
    """Vim's block: the norm (in fp32, or in fp16 on the fp32 residual) and the quantize of its output."""
    x, residual, weight, eps, inv_smooth, scale, zp, bits, _ = sample_args(fused_ops.add_rmsnorm_quantize, 3)
    norm = RMSNorm(C, eps=eps).to(norm_dtype)
    norm.weight.data.copy_(weight)
    summed = residual + x if with_residual else x
    expect = torch.ops.ptq4vm.quantize_per_token(norm(summed.to(norm_dtype)), inv_smooth, scale, zp, bits)
    xq, res_out = fused_ops.add_rmsnorm_quantize(x, residual if with_residual else None, norm.weight, eps,
                                                 inv_smooth, scale, zp, bits, norm_dtype)
    assert torch.equal(xq, expect) and torch.equal(res_out, summed)
    assert res_out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_conv1d_silu_quantize_equals_vim_branch(reverse, dtype):
    """Vim's forward branch (causal conv, padding W-1 then cut) and backward branch (F.pad right,
    flipped weight) against the fused op with the unflipped weight; in fp16, u is rounded as the
    half conv and SiLU round it (to the last ulp: the conv sums in another order)."""
    x, weight, bias, inv_smooth, scale, zp, bits, _ = sample_args(fused_ops.conv1d_silu_quantize, 3)
    x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
    if reverse:
        v = F.conv1d(F.pad(x, (0, W - 1)), weight.flip(-1), bias, groups=D)
    else:
        v = F.conv1d(x, weight, bias, padding=W - 1, groups=D)[..., : -(W - 1)]
    u_expect = F.silu(v)
    u, xq = fused_ops.conv1d_silu_quantize(x, weight, bias, inv_smooth, scale, zp, bits, reverse)
    assert u.dtype == dtype
    ulp = 1e-6 if dtype == torch.float32 else 2**-10
    torch.testing.assert_close(u, u_expect, rtol=ulp, atol=1e-6)
    codes = torch.ops.ptq4vm.quantize_per_token(u.transpose(1, 2), inv_smooth, scale, zp, bits)
    assert torch.equal(xq, codes)  # the codes of the fused op's own u, bit for bit


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv1d_silu_equals_vim_branch(reverse, dtype):
    """A float Vim's conv + SiLU (either branch's spelling) against the float fused op: the u of
    conv1d_silu_quantize, to the last ulp of the half conv in bf16."""
    x, weight, bias, _ = sample_args(fused_ops.conv1d_silu, 3)
    x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
    if reverse:
        v = F.conv1d(F.pad(x, (0, W - 1)), weight.flip(-1), bias, groups=D)
    else:
        v = F.conv1d(x, weight, bias, padding=W - 1, groups=D)[..., : -(W - 1)]
    u = fused_ops.conv1d_silu(x, weight, bias, reverse)
    assert u.dtype == dtype
    torch.testing.assert_close(u, F.silu(v), rtol=1e-6 if dtype == torch.float32 else 2**-7, atol=1e-6)


def test_bidirectional_scan_equals_two_scans():
    args = sample_args(fused_ops.bidirectional_scan_quantize, 3)
    (u_f, dt_f, A_f, B_f, C_f, D_f, db_f, u_b, dt_b, A_b, B_b, C_b, D_b, db_b, z, softplus,
     inv_smooth, scale, zp, bits) = args
    y_f = ops.selective_scan(u_f, dt_f, A_f, B_f, C_f, D_f, z, db_f, softplus, False)
    y_b = ops.selective_scan(u_b, dt_b, A_b, B_b, C_b, D_b, z, db_b, softplus, True)
    out = fused_ops.bidirectional_scan(*args[:16])
    torch.testing.assert_close(out, (y_f + y_b) / 2, rtol=1e-5, atol=1e-6)
    out_q, xq = fused_ops.bidirectional_scan_quantize(*args)
    assert torch.equal(out_q, out)
    codes = torch.ops.ptq4vm.quantize_per_token(out.transpose(1, 2), inv_smooth, scale, zp, bits)
    assert torch.equal(xq, codes)


def test_silu_in_in_proj_then_the_scan_on_it_equals_the_scan_on_z():
    """in_proj's z half through int8_linear_silu, read by the scans with z_silu=True: the int8_linear x half and the
    scans' output (stored and quantized) equal the unfused pair's bit for bit."""
    linear = _linear_args(3)
    xz = torch.ops.ptq4vm.int8_linear(*linear, torch.float32)
    xz_silu = fused_ops.int8_linear_silu(*linear, N // 2, torch.float32)
    assert torch.equal(xz_silu[..., :N // 2], xz[..., :N // 2])
    assert torch.equal(xz_silu[..., N // 2:], F.silu(xz[..., N // 2:]))
    args = list(sample_args(fused_ops.bidirectional_scan_quantize, 3))
    z = torch.randn(3, L, 2 * D, generator=_gen(7))
    args[14] = z[..., D:].transpose(1, 2)
    expect = fused_ops.bidirectional_scan_quantize(*args)
    args[14] = F.silu(z[..., D:]).transpose(1, 2)  # torch's CPU SiLU rounds by layout: the slice's, as the GEMM's
    got = fused_ops.bidirectional_scan_quantize(*args, True, True)
    assert torch.equal(got[0], expect[0]) and torch.equal(got[1], expect[1])
    assert torch.equal(fused_ops.bidirectional_scan(*args[:16], True), expect[0])
    with pytest.raises(ValueError, match="z_silu"):
        fused_ops.bidirectional_scan(*args[:14], None, True, True)


def test_wrong_token_count_is_a_clear_error():
    xq, x_scale, x_zp, wq, w_scale, colsum, bias = _linear_args(2)
    with pytest.raises(ValueError, match="tokens"):
        ops.int8_linear(xq[:, :3], x_scale, x_zp, wq, w_scale, colsum, bias, torch.float32)
    x, inv_smooth, scale, zp, bits = sample_args(ops.quantize_per_token, 2)
    with pytest.raises(ValueError, match="calibrated"):
        ops.quantize_per_token(x[:, :4], inv_smooth, scale, zp, bits)


# --------------------------------------------------------------------------------------------
# CUDA implementation (the Triton kernels) == reference; fake implementations
# --------------------------------------------------------------------------------------------


def _to(args, device):
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("op", ALL_OPS, ids=lambda op: op._name)
def test_cuda_impl_matches_reference(device, op, batch):
    args = sample_args(op, batch, seed=batch)
    expect = op(*args)  # CPU: the reference
    got = ops.CUDA_KERNELS[op._opoverload](*_to(args, device))
    for e, g in zip(*(t if isinstance(t, tuple) else (t,) for t in (expect, got))):
        assert g.shape == e.shape and g.dtype == e.dtype and g.stride() == e.stride()
        _close(g.cpu(), e)


@pytest.mark.parametrize("op", ALL_OPS, ids=lambda op: op._name)
def test_opcheck(op):
    torch.library.opcheck(op, sample_args(op, 2), test_utils=("test_schema", "test_faketensor",
                                                              "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("op", [ops.int8_linear, fused_ops.int8_linear_quantize,
                                fused_ops.bidirectional_scan_quantize], ids=lambda op: op._name)
def test_opcheck_trailing_option_off(op):
    """The lowering's trailing options switched off (autotune=False, store_out=False): fakes still consistent."""
    torch.library.opcheck(op, (*sample_args(op, 2), False), test_utils=("test_schema", "test_faketensor",
                                                                        "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("op", [fused_ops.bidirectional_scan, fused_ops.bidirectional_scan_quantize],
                         ids=lambda op: op._name)
def test_opcheck_z_silu(device, op):
    """The scans' z_silu flag (z holds silu(z)): fakes consistent; the kernel equals the reference."""
    args = (*sample_args(op, 2), *((True,) if op is fused_ops.bidirectional_scan_quantize else ()), True)
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
    expect = op(*args)
    got = ops.CUDA_KERNELS[op._opoverload](*_to(args, device))
    for e, g in zip(*(t if isinstance(t, tuple) else (t,) for t in (expect, got))):
        _close(g.cpu(), e)
