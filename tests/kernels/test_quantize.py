import pytest
import torch

from ptq4vm_fx.errors import InputError
from ptq4vm_fx.kernels.quantize import (
    add_rmsnorm_quantize,
    add_rmsnorm_quantize_ref,
    conv1d_silu,
    conv1d_silu_quantize,
    conv1d_silu_quantize_ref,
    conv1d_silu_ref,
    ordered_conv1d_silu,
    ordered_conv1d_silu_ref,
    quantize_per_token,
    quantize_per_token_ref,
)
from ptq4vm_fx.models.orders import sequence_maps
from ptq4vm_fx.quant import integer

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _qparams(K, tokens, bits, seed, smooth=True, amax=3.0):
    """Scales that put the data in range (with some clipping) and zero points in the signed range:
    (inv_smooth (K,) or None, scale (tokens,), zero_point (tokens,) int32)."""
    g = torch.Generator().manual_seed(seed)
    qmax = 2 ** (bits - 1) - 1
    scale = (torch.rand(tokens, generator=g) + 0.5) * amax / qmax
    zp = torch.randint(-(qmax // 2), qmax // 2 + 1, (tokens,), dtype=torch.int32, generator=g)
    inv_smooth = (torch.rand(K, generator=g) + 0.5) if smooth else None
    return inv_smooth, scale, zp


def _to(args, device):
    return [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]


# --------------------------------------------------------------------------------------------
# quantize_per_token
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch,L", [(1, 1), (1, 7), (2, 5)])
@pytest.mark.parametrize("K", [12, 33])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits,smooth", [(8, True), (4, False), (2, True)])
def test_quantize_per_token_exact(device, batch, L, K, dtype, bits, smooth):
    """x (batch, L, K) with per-token static (L,) parameters: token t of every sample takes entry t."""
    seed = batch * L * 100 + K + bits
    x = (torch.randn(batch, L, K, generator=torch.Generator().manual_seed(seed)) * 2).to(dtype)
    params = _qparams(K, L, bits, seed, smooth)
    q = quantize_per_token(*_to((x, *params), device), bits)
    q_ref = quantize_per_token_ref(x, *params, bits)
    assert q.dtype == torch.int8 and q.shape == (batch, L, K)
    assert torch.equal(q.cpu(), q_ref)
    # the reference is the integer module's rule, token t of each sample quantized with entry t
    expect = integer.quantize_codes(x, params[0], integer.reciprocal_scale(params[1]), params[2], bits)
    assert torch.equal(q_ref, expect.to(torch.int8))


@pytest.mark.parametrize("batch,L,K", [(2, 5, 12), (3, 1, 33), (1, 7, 40)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_quantize_per_row_parameters(device, batch, L, K, dtype):
    """Per-row (dynamic) parameters, scale / zero_point of shape x.shape[:-1]: every (sample, token)
    row its own; the kernel equals the reference exactly, and per-row parameters that repeat the
    per-token static ones give the static codes."""
    g = torch.Generator().manual_seed(batch * 100 + L * 10 + K)
    x = (torch.randn(batch, L, K, generator=g) * 2).to(dtype)
    inv_smooth = torch.rand(K, generator=g) + 0.5
    scale = (torch.rand(batch, L, generator=g) + 0.5) * 3.0 / 127
    zp = torch.randint(-60, 61, (batch, L), generator=g).float()  # integer valued, as the dynamic path's
    q = quantize_per_token(*_to((x, inv_smooth, scale, zp), device), 8)
    q_ref = quantize_per_token_ref(x, inv_smooth, scale, zp, 8)
    assert q.shape == (batch, L, K) and q.dtype == torch.int8
    assert torch.equal(q.cpu(), q_ref)
    expect = integer.quantize_codes(x, inv_smooth, integer.reciprocal_scale(scale), zp, 8)
    assert torch.equal(q_ref, expect.to(torch.int8))
    clamped = (q_ref == -128) | (q_ref == 127)
    assert 0 < clamped.sum() < q_ref.numel()  # rows differ: some saturate, most do not
    # per-row parameters equal to the static ones: the static codes
    _, s_static, zp_static = _qparams(K, L, 8, 1)
    static = quantize_per_token(*_to((x, inv_smooth, s_static, zp_static), device), 8)
    rows = quantize_per_token(*_to((x, inv_smooth, s_static.expand(batch, L), zp_static.expand(batch, L)), device), 8)
    assert torch.equal(rows, static)


def test_quantize_ties_round_to_even_and_saturation(device):
    inf = float("inf")
    vals = torch.tensor([[-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 1e9, -1e9, inf, -inf, 0.49999997]])
    scale = torch.ones(1)
    zp = torch.tensor([3], dtype=torch.int32)
    expect = torch.tensor([[-2, -2, 0, 0, 2, 2, 4, 127, -128, 127, -128, 0]]) + torch.tensor(
        [[3] * 7 + [0, 0, 0, 0, 3]])
    q = quantize_per_token(vals.to(device), None, scale.to(device), zp.to(device), 8)
    q_ref = quantize_per_token_ref(vals, None, scale, zp, 8)
    assert torch.equal(q_ref, expect.to(torch.int8))
    assert torch.equal(q.cpu(), q_ref)


def test_quantize_products_near_ties(device):
    """Inputs whose scaled value lands within an ulp of a .5 tie: the fp32 evaluation order
    (x * inv_smooth) * inv_scale, then round, must be followed exactly (inv_scale = 1 / scale in
    fp32, as both the kernel and the reference compute it)."""
    g = torch.Generator().manual_seed(7)
    k = torch.randint(-60, 60, (16, 32), generator=g).float() + 0.5
    scale = torch.tensor([1 / 3, 3.0, 10.0, 1 / 7], dtype=torch.float32)
    inv_scale = integer.reciprocal_scale(scale)
    inv_smooth = torch.tensor([1.0, 1.1, 0.9, 3.0] * 8)
    x = (k / inv_scale.repeat(4)[:, None] / inv_smooth[None, :]).float()
    x = torch.stack([x, x.nextafter(torch.tensor(1e9)), x.nextafter(torch.tensor(-1e9))]).reshape(12, 4, 32)
    zp = torch.tensor([0, 1, -1, 2], dtype=torch.int32)
    q = quantize_per_token(*_to((x, inv_smooth, scale, zp), device), 8)
    assert torch.equal(q.cpu(), quantize_per_token_ref(x, inv_smooth, scale, zp, 8))


def test_quantize_strided_input(device):
    """A column-major (batch, L, K) view (unit stride along tokens) reaches the kernel as it is."""
    x = torch.randn(33, 10, generator=torch.Generator().manual_seed(1)).t().reshape(2, 5, 33)
    assert x.stride() == (5, 1, 10)
    params = _qparams(33, 5, 8, 1)
    q = quantize_per_token(*_to((x, *params), device), 8)
    assert torch.equal(q.cpu(), quantize_per_token_ref(x, *params, 8))


def test_quantize_parameter_dtypes(device):
    """scale in any float dtype and zero_point in any integer dtype (or integer-valued float) give
    the codes of fp32 / int32 parameters."""
    x = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(2)) * 2
    inv_smooth, scale, zp = _qparams(12, 5, 8, 2)
    scale = scale.half().float()  # exactly representable in fp16
    expect = quantize_per_token_ref(x, inv_smooth, scale, zp, 8)
    for s, z in ((scale.half(), zp.to(torch.int8)), (scale.double(), zp.long()), (scale, zp.float())):
        assert torch.equal(quantize_per_token(*_to((x, inv_smooth, s, z), device), 8).cpu(), expect)
        assert torch.equal(quantize_per_token_ref(x, inv_smooth, s, z, 8), expect)


def test_quantize_bad_inputs():
    x = torch.randn(2, 5, 12)
    inv_smooth, scale, zp = _qparams(12, 5, 8, 0)
    with pytest.raises(ValueError, match="x must have dtype"):
        quantize_per_token(x.double(), inv_smooth, scale, zp, 8)
    with pytest.raises(ValueError, match="tokens"):  # 1-D x: no token axis
        quantize_per_token(x[0, 0], inv_smooth, scale, zp, 8)
    with pytest.raises(ValueError, match="inv_smooth"):
        quantize_per_token(x, inv_smooth[:5], scale, zp, 8)
    with pytest.raises(InputError, match="differ in shape"):
        quantize_per_token(x, inv_smooth, scale, zp[:4], 8)
    with pytest.raises(InputError, match="the input has 5 tokens"):  # static parameters of another L
        quantize_per_token(x, inv_smooth, scale[:4], zp[:4], 8)
    with pytest.raises(InputError, match="tokens"):  # per-row parameters of another shape
        quantize_per_token(x, inv_smooth, scale.expand(3, 5), zp.expand(3, 5), 8)
    with pytest.raises(InputError, match="tokens"):
        quantize_per_token_ref(x, inv_smooth, scale[:4], zp[:4], 8)
    with pytest.raises(ValueError, match="bits"):
        quantize_per_token(x, inv_smooth, scale, zp, 9)
    with pytest.raises(ValueError, match="bits"):
        quantize_per_token_ref(x, inv_smooth, scale, zp, 1)


# --------------------------------------------------------------------------------------------
# add_rmsnorm_quantize
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch,L", [(1, 1), (1, 7), (2, 5)])
@pytest.mark.parametrize("K", [12, 33])
@pytest.mark.parametrize("dtype,has_res,norm_dtype",
                         [(torch.float32, True, torch.float32), (torch.float16, True, torch.float32),
                          (torch.bfloat16, False, torch.float32), (torch.float16, True, torch.float16),
                          (torch.float32, False, torch.bfloat16)])
def test_add_rmsnorm_quantize(device, batch, L, K, dtype, has_res, norm_dtype):
    g = torch.Generator().manual_seed(batch * L * 10 + K)
    x = (torch.randn(batch, L, K, generator=g) * 2).to(dtype)
    res = torch.randn(batch, L, K, generator=g) if has_res else None
    weight = torch.rand(K, generator=g) + 0.5
    params = _qparams(K, L, 8, batch * L + K)
    q, res_out = add_rmsnorm_quantize(*_to((x, res, weight, 1e-5, *params), device), 8, norm_dtype)
    q_ref, res_ref = add_rmsnorm_quantize_ref(x, res, weight, 1e-5, *params, 8, norm_dtype)
    assert res_out.dtype == torch.float32 and q.dtype == torch.int8
    assert q.shape == res_out.shape == (batch, L, K)
    assert torch.equal(res_out.cpu(), res_ref)  # one fp32 add: exact
    # normed values agree to ~1 ulp (different summation order for the mean): codes may differ
    # by one, and only rarely
    diff = (q.cpu().int() - q_ref.int()).abs()
    assert diff.max() <= 1
    assert diff.float().mean() <= 0.02


@pytest.mark.parametrize("norm_dtype", [torch.float16, torch.bfloat16])
def test_add_rmsnorm_quantize_ref_is_a_norm_in_half(norm_dtype):
    """norm_dtype is Vim's block with its norm in fp16 / bf16 on the fp32 residual:
    quantize(RMSNorm(residual.to(dtype))); rounding at neither point changes the codes."""
    from ptq4vm_fx.models.vim import RMSNorm

    g = torch.Generator().manual_seed(7)
    x, res = torch.randn(5, 8, 24, generator=g).half(), torch.randn(5, 8, 24, generator=g) * 3
    norm = RMSNorm(24).to(norm_dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(24, generator=g) + 0.5)
    params = _qparams(24, 8, 8, 5, amax=1.0)
    q_ref, res_ref = add_rmsnorm_quantize_ref(x, res, norm.weight, norm.eps, *params, 8, norm_dtype)
    residual = x + res  # fp16 + fp32 -> fp32
    expect = quantize_per_token_ref(norm(residual.to(norm_dtype)), *params, 8)
    assert torch.equal(res_ref, residual) and torch.equal(q_ref, expect)
    q_fp32, _ = add_rmsnorm_quantize_ref(x, res, norm.weight, norm.eps, *params, 8, torch.float32)
    assert not torch.equal(q_fp32, expect)


def test_add_rmsnorm_quantize_bad_inputs():
    x = torch.randn(2, 5, 12)
    params = _qparams(12, 5, 8, 0)
    w = torch.ones(12)
    f32 = torch.float32
    with pytest.raises(ValueError, match="residual"):
        add_rmsnorm_quantize(x, torch.randn(2, 5, 11), w, 1e-5, *params, 8, f32)
    for fn in (add_rmsnorm_quantize, add_rmsnorm_quantize_ref):  # as many rows, but not x's shape
        with pytest.raises(ValueError, match="residual must have shape"):
            fn(x, torch.randn(10, 12), w, 1e-5, *params, 8, f32)
    with pytest.raises(ValueError, match="residual must have dtype"):
        add_rmsnorm_quantize_ref(x, torch.ones(2, 5, 12, dtype=torch.int32), w, 1e-5, *params, 8, f32)
    with pytest.raises(ValueError, match="weight"):
        add_rmsnorm_quantize(x, None, torch.ones(13), 1e-5, *params, 8, f32)
    with pytest.raises(ValueError, match="x must have dtype"):
        add_rmsnorm_quantize(x.to(torch.int32), None, w, 1e-5, *params, 8, f32)
    with pytest.raises(ValueError, match="eps"):
        add_rmsnorm_quantize(x, None, w, -1.0, *params, 8, f32)
    with pytest.raises(ValueError, match="norm_dtype"):
        add_rmsnorm_quantize(x, None, w, 1e-5, *params, 8, torch.float64)
    with pytest.raises(InputError, match="the input has 4 tokens"):  # scales calibrated for L = 5
        add_rmsnorm_quantize(x[:, :4], None, w, 1e-5, *params, 8, f32)
    with pytest.raises(ValueError, match="bits"):
        add_rmsnorm_quantize_ref(x, None, w, 1e-5, *params, 9, f32)


# --------------------------------------------------------------------------------------------
# conv1d_silu_quantize
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("Bsz,D,L", [(1, 5, 1), (2, 12, 7), (1, 20, 19)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("W,bias,smooth,dtype",
                         [(4, True, True, torch.float32), (4, True, False, torch.float16),
                          (2, False, False, torch.bfloat16)])
def test_conv1d_silu_quantize(device, Bsz, D, L, reverse, W, bias, smooth, dtype):
    g = torch.Generator().manual_seed(Bsz * 100 + D * 10 + L)
    x = torch.randn(Bsz, D, L, generator=g).to(dtype)
    weight = torch.randn(D, W, generator=g) * 0.5
    b = torch.randn(D, generator=g) if bias else None
    params = _qparams(D, L, 8, D + L, smooth, amax=2.0)
    u, q = conv1d_silu_quantize(*_to((x, weight, b, *params), device), 8, reverse)
    u_ref, q_ref = conv1d_silu_quantize_ref(x, weight, b, *params, 8, reverse)
    u, q = u.cpu(), q.cpu()
    assert u.shape == (Bsz, D, L) and u.dtype == dtype  # fp16 / bf16: v and u rounded to x's dtype
    assert q.shape == (Bsz, L, D) and q.dtype == torch.int8
    ulp = {torch.float32: 1e-5, torch.float16: 2**-10, torch.bfloat16: 2**-7}[dtype]
    torch.testing.assert_close(u.float(), u_ref.float(), rtol=ulp, atol=1e-6)
    # the codes are exactly the quantization of the kernel's own u ...
    q_own = quantize_per_token_ref(u.transpose(1, 2), *params, 8)
    assert torch.equal(q, q_own)
    # ... and agree with the reference's wherever the floats agree
    diff = (q.int() - q_ref.int()).abs()
    assert diff.max() <= 1
    same_float = (u == u_ref).transpose(1, 2)
    assert torch.equal(q[same_float], q_ref[same_float])


@pytest.mark.parametrize("Bsz,D,L", [(1, 5, 1), (2, 20, 19)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype,bias", [(torch.float32, True), (torch.float16, False), (torch.bfloat16, True)])
def test_conv1d_silu_is_the_quantizing_kernel_without_codes(device, Bsz, D, L, reverse, dtype, bias):
    """The float op (a float model's conv): the same kernel with QUANT off, so u is bit for bit the
    quantizing launch's u; against its reference to the last ulp (F.conv1d sums in another order)."""
    g = torch.Generator().manual_seed(D + L)
    x = torch.randn(Bsz, D, L, generator=g).to(dtype)
    weight = (torch.randn(D, 1, 4, generator=g) * 0.5).to(dtype)
    b = torch.randn(D, generator=g).to(dtype) if bias else None
    u = conv1d_silu(*_to((x, weight, b), device), reverse)
    u_quant, _ = conv1d_silu_quantize(*_to((x, weight, b, *_qparams(D, L, 8, 0)), device), 8, reverse)
    u_ref = conv1d_silu_ref(x, weight, b, reverse)
    assert u.dtype == dtype and u.shape == (Bsz, D, L) and u.stride()[1] == 1  # token-major
    assert torch.equal(u, u_quant)
    ulp = {torch.float32: 1e-5, torch.float16: 2**-10, torch.bfloat16: 2**-7}[dtype]
    torch.testing.assert_close(u.cpu().float(), u_ref.float(), rtol=ulp, atol=1e-6)
    expect, _ = conv1d_silu_quantize_ref(x, weight, b, *_qparams(D, L, 8, 0), 8, reverse)
    assert torch.equal(u_ref, expect)


def test_conv1d_reverse_is_flipped_forward():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 9, generator=g)
    weight = torch.randn(6, 4, generator=g)
    b = torch.randn(6, generator=g)
    params = _qparams(6, 9, 8, 3)
    flipped = (params[0], params[1].flip(0), params[2].flip(0))
    u_r, q_r = conv1d_silu_quantize_ref(x, weight, b, *params, 8, True)
    u_f, q_f = conv1d_silu_quantize_ref(x.flip(-1), weight, b, *flipped, 8, False)
    torch.testing.assert_close(u_r, u_f.flip(-1), rtol=1e-6, atol=1e-7)
    assert (q_r.int() - q_f.flip(1).int()).abs().max() <= 1


def test_conv1d_weight_with_channel_axis(device):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 8, 6, generator=g)
    weight = torch.randn(8, 1, 4, generator=g)  # nn.Conv1d(groups=D) layout
    params = _qparams(8, 6, 8, 4)
    u, q = conv1d_silu_quantize(*_to((x, weight, None, *params), device), 8, False)
    u2, q2 = conv1d_silu_quantize(*_to((x, weight[:, 0], None, *params), device), 8, False)
    assert torch.equal(u, u2) and torch.equal(q, q2)


def test_conv1d_bad_inputs():
    x = torch.randn(2, 6, 9)
    params = _qparams(6, 9, 8, 0)
    with pytest.raises(ValueError, match="weight must have shape"):
        conv1d_silu_quantize(x, torch.randn(5, 4), None, *params, 8, False)
    with pytest.raises(ValueError, match="x must be 3-D"):
        conv1d_silu_quantize(x[0], torch.randn(6, 4), None, *params, 8, False)
    with pytest.raises(ValueError, match="bias"):
        conv1d_silu_quantize(x, torch.randn(6, 4), torch.randn(5), *params, 8, False)
    with pytest.raises(InputError, match="the input has 8 tokens"):  # scales calibrated for L = 9
        conv1d_silu_quantize(x[..., :8], torch.randn(6, 4), None, *params, 8, False)
    with pytest.raises(ValueError, match="inv_smooth"):
        conv1d_silu_quantize(x, torch.randn(6, 4), None, torch.ones(5), *params[1:], 8, False)
    with pytest.raises(ValueError, match="reverse"):
        conv1d_silu_quantize(x, torch.randn(6, 4), None, *params, 8, 1)
    with pytest.raises(ValueError, match="reverse"):
        conv1d_silu_quantize_ref(x, torch.randn(6, 4), None, *params, 8, 1)
    with pytest.raises(ValueError, match="weight must have shape"):
        conv1d_silu(x, torch.randn(5, 4), None, False)
    with pytest.raises(ValueError, match="reverse"):
        conv1d_silu_ref(x, torch.randn(6, 4), None, 1)


# --------------------------------------------------------------------------------------------
# ordered_conv1d_silu
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction,cls", [(("w", 2, False), True), (("w", 2, True), True), (("h", 0, True), False),
                                           (("v", 0, False), True)])
@pytest.mark.parametrize("dtype,bias", [(torch.float32, True), (torch.float16, False), (torch.bfloat16, True)])
def test_ordered_conv1d_silu_reads_through_the_map(device, direction, cls, dtype, bias):
    """LocalVim's sequence maps over a 3x5 grid (w2 pads it; the class token at step c, or S - c flipped): the
    kernel reading x (a strided half of xz, natural order) through the map is bit for bit the plain conv kernel
    on the gathered sequence (zeros at -1), and its reference that sequence's reference."""
    g = torch.Generator().manual_seed(7)
    D, T = 20, 15 + cls
    xz = torch.randn(2, 2 * D, T, generator=g).to(dtype)
    x = xz[:, :D]
    weight = (torch.randn(D, 1, 3, generator=g) * 0.5).to(dtype)
    b = torch.randn(D, generator=g).to(dtype) if bias else None
    order = sequence_maps(x, direction, 3, 5, cls)[0]
    gathered = torch.where(order >= 0, x.index_select(2, order.clamp(min=0).long()), 0)
    flip = direction[2]
    u = ordered_conv1d_silu(*_to((x, weight, b, order), device), flip)
    assert u.shape == (2, D, len(order)) and u.dtype == dtype and u.stride()[1] == 1
    assert torch.equal(u.cpu(), conv1d_silu(*_to((gathered, weight, b), device), flip).cpu())
    u_ref = ordered_conv1d_silu_ref(x, weight, b, order, flip)
    assert torch.equal(u_ref, conv1d_silu_ref(gathered, weight, b, flip))
    ulp = {torch.float32: 1e-5, torch.float16: 2**-10, torch.bfloat16: 2**-7}[dtype]
    torch.testing.assert_close(u.cpu().float(), u_ref.float(), rtol=ulp, atol=1e-6)
    torch.testing.assert_close(torch.ops.ptq4vm.ordered_conv1d_silu(x, weight, b, order, flip), u_ref,
                               rtol=0, atol=0)


@pytest.mark.parametrize("flip", [False, True])
def test_conv1d_silu_quantize_through_an_order(device, flip):
    """The quantizing launch with LocalVim's map (w2 on a 3x5 grid, the class token): u and codes bit for bit
    the launch on the gathered sequence, S per-token scales; the reference its reference."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 12, 16, generator=g)
    weight, b = torch.randn(12, 1, 4, generator=g) * 0.5, torch.randn(12, generator=g)
    order = sequence_maps(x, ("w", 2, flip), 3, 5, True)[0]
    gathered = torch.where(order >= 0, x.index_select(2, order.clamp(min=0).long()), 0)
    params = _qparams(12, len(order), 8, 8, amax=2.0)
    u, q = conv1d_silu_quantize(*_to((x, weight, b, *params), device), 8, flip, order.to(device))
    u_g, q_g = conv1d_silu_quantize(*_to((gathered, weight, b, *params), device), 8, flip)
    assert torch.equal(u, u_g) and torch.equal(q, q_g) and q.shape == (2, len(order), 12)
    ref = conv1d_silu_quantize_ref(x, weight, b, *params, 8, flip, order)
    expect = conv1d_silu_quantize_ref(gathered, weight, b, *params, 8, flip)
    assert torch.equal(ref[0], expect[0]) and torch.equal(ref[1], expect[1])


def test_ordered_conv1d_silu_opcheck_and_bad_orders():
    x, weight = torch.randn(2, 6, 5), torch.randn(6, 1, 3)
    order = torch.tensor([4, -1, 0, 2, 1, 3, -1], dtype=torch.int32)
    torch.library.opcheck(torch.ops.ptq4vm.ordered_conv1d_silu.default, (x, weight, None, order, True))
    with pytest.raises(ValueError, match="order entries must lie in"):
        ordered_conv1d_silu_ref(x, weight, None, order + 1, False)
    with pytest.raises(ValueError, match="order must be an"):
        ordered_conv1d_silu(x, weight, None, order.float(), False)
    with pytest.raises(ValueError, match="order must be an"):
        ordered_conv1d_silu_ref(x, weight, None, order[None], False)
