import pytest
import torch

from ptq4vm_fx.errors import InputError
from ptq4vm_fx.kernels import int8_linear as int8_linear_module
from ptq4vm_fx.kernels.int8_linear import (
    fixed_config,
    int8_linear,
    int8_linear_quantize,
    int8_linear_quantize_ref,
    int8_linear_ref,
    int8_linear_silu,
    int8_linear_silu_ref,
    int8_linear_softplus,
    int8_linear_softplus_ref,
)
from ptq4vm_fx.quant import integer


def _make(batch, L, K, N, seed=0, bias=True, zp_range=8):
    """The op's operands in its order: (xq (batch, L, K), x_scale (L,), x_zero_point (L,), wq (N, K),
    w_scale (N,), w_colsum (N,), bias (N,) or None)."""
    g = torch.Generator().manual_seed(seed)
    xq = torch.randint(-128, 128, (batch, L, K), dtype=torch.int8, generator=g)
    wq = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
    w_colsum = wq.sum(1, dtype=torch.int32)
    w_scale = torch.rand(N, generator=g) * 0.02 + 1e-3
    x_scale = torch.rand(L, generator=g) * 0.1 + 1e-3
    zp = torch.randint(-zp_range, zp_range + 1, (L,), dtype=torch.int32, generator=g)
    b = torch.randn(N, generator=g) if bias else None
    return xq, x_scale, zp, wq, w_scale, w_colsum, b


def _to(args, device):
    return [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]


def _expected(xq, x_scale, zp, wq, w_scale, w_colsum, bias):
    """The epilogue in float64 from an int64 accumulator: x_scale / zp broadcast against xq.shape[:-1]."""
    acc = (xq.long()[..., None, :] * wq.long()).sum(-1)
    y = (acc - zp.long()[..., None] * w_colsum.long()).double() * x_scale.double()[..., None] * w_scale.double()
    return y if bias is None else y + bias.double()


@pytest.mark.parametrize("batch,L", [(1, 1), (7, 1), (1, 7), (2, 5)])
@pytest.mark.parametrize("K", [12, 33])
@pytest.mark.parametrize("N", [5, 44])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_ref_fp32(device, batch, L, K, N, bias):
    args = _make(batch, L, K, N, seed=batch * L * 1000 + K * 10 + N, bias=bias)
    y = int8_linear(*_to(args, device), torch.float32)
    y_ref = int8_linear_ref(*args, torch.float32)
    assert y.shape == (batch, L, N) and y.dtype == torch.float32
    # exact integer accumulation + the same fp32 epilogue (no FMA contraction) -> bit exact
    assert torch.equal(y.cpu(), y_ref)


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16])
def test_out_dtypes(device, out_dtype):
    args = _make(2, 5, 33, 44, seed=3)
    y = int8_linear(*_to(args, device), out_dtype)
    y_ref = int8_linear_ref(*args, out_dtype)
    assert y.dtype == out_dtype
    # rounded to nearest even like torch's cast, also under the interpreter (which truncates to bf16)
    assert torch.equal(y.cpu(), y_ref)


def test_extreme_codes_and_zero_points(device):
    """Largest |acc| and zero-point corrections: the int32 path must not lose anything."""
    batch, L, K, N = 2, 3, 70, 9
    xq = torch.full((batch, L, K), -128, dtype=torch.int8)
    xq.view(-1, K)[1::2] = 127
    wq = torch.full((N, K), 127, dtype=torch.int8)
    wq[::3] = -127
    w_colsum = wq.sum(1, dtype=torch.int32)
    w_scale = torch.full((N,), 1.0)
    x_scale = torch.tensor([1.0, 0.5, 0.25])
    zp = torch.tensor([-128, 127, 0], dtype=torch.int32)
    args = (xq, x_scale, zp, wq, w_scale, w_colsum, None)
    y = int8_linear(*_to(args, device), torch.float32)
    assert torch.equal(y.cpu().double(), _expected(*args))
    assert torch.equal(y.cpu(), int8_linear_ref(*args, torch.float32))


def test_multi_tile_grid(device):
    """Several M and N tiles (grouped launch order), ragged on every edge, several K steps."""
    args = _make(5, 10, 70, 40, seed=13)
    y = int8_linear(*_to(args, device), torch.float32)
    assert torch.equal(y.cpu(), int8_linear_ref(*args, torch.float32))


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_per_row_parameters(device, out_dtype):
    """Per-row (dynamic) activation parameters, x_scale / x_zero_point of shape xq.shape[:-1] (the
    zero point an integer-valued float, as the dynamic path computes it): the kernel equals the
    reference exactly (several M / N tiles, ragged), which equals the float64 epilogue from an
    exact accumulator; per-row parameters that repeat the static ones give the static result."""
    batch, L, K, N = 3, 7, 70, 40
    xq, x_scale, zp, wq, w_scale, w_colsum, b = _make(batch, L, K, N, seed=14, zp_range=100)
    g = torch.Generator().manual_seed(15)
    row_scale = torch.rand(batch, L, generator=g) * 0.1 + 1e-3
    row_zp = torch.randint(-128, 128, (batch, L), generator=g).float()
    args = (xq, row_scale, row_zp, wq, w_scale, w_colsum, b)
    y = int8_linear(*_to(args, device), out_dtype)
    y_ref = int8_linear_ref(*args, out_dtype)
    assert y.shape == (batch, L, N) and y.dtype == out_dtype
    assert torch.equal(y.cpu(), y_ref)
    if out_dtype == torch.float32:
        torch.testing.assert_close(y_ref.double(), _expected(*args), rtol=1e-6, atol=1e-6)
    static = int8_linear(*_to((xq, x_scale, zp, wq, w_scale, w_colsum, b), device), out_dtype)
    rows = int8_linear(*_to((xq, x_scale.expand(batch, L), zp.expand(batch, L), wq, w_scale, w_colsum, b), device),
                       out_dtype)
    assert torch.equal(rows, static)


def test_parameter_dtypes(device):
    """Scales and bias in any float dtype, zero point and column sums in any integer dtype (or an
    integer-valued float zero point): the result of fp32 / int32 parameters."""
    xq, x_scale, zp, wq, w_scale, w_colsum, b = _make(2, 5, 33, 44, seed=4)
    x_scale, w_scale, b = x_scale.half().float(), w_scale.half().float(), b.half().float()  # fp16-exact
    expect = int8_linear_ref(xq, x_scale, zp, wq, w_scale, w_colsum, b, torch.float32)
    variants = [(x_scale.half(), zp.to(torch.int8), w_scale.half(), w_colsum.long(), b.half()),
                (x_scale.double(), zp.float(), w_scale.double(), w_colsum, b.double())]
    for xs, z, ws, cs, bias in variants:
        args = (xq, xs, z, wq, ws, cs, bias)
        assert torch.equal(int8_linear(*_to(args, device), torch.float32).cpu(), expect)
        assert torch.equal(int8_linear_ref(*args, torch.float32), expect)


# one (M, N, K) per branch of fixed_config: dt_proj at Vim-S / Vim-B width, x_proj, Vim-B in_proj at
# batch 128, Vim-S in_proj
FIXED_SHAPES = [(25216, 768, 24), (25216, 1536, 48), (25216, 56, 768), (25216, 3072, 768), (6304, 1536, 384)]


@pytest.mark.parametrize("config", sorted({str(fixed_config(*shape)) for shape in FIXED_SHAPES}))
def test_fixed_tiles_match_ref(device, monkeypatch, config):
    """autotune=False launches fixed_config's tiles (each of them, here on a small problem with
    partial tiles, a quantized column range and a zero point on every token): the same result."""
    chosen = next(fixed_config(*shape) for shape in FIXED_SHAPES if str(fixed_config(*shape)) == config)
    monkeypatch.setattr(int8_linear_module, "fixed_config", lambda M, N, K: chosen)
    args = _make(10, 7, 150, 90, seed=11)
    qp = (torch.rand(30) + 0.5, 1 / (torch.rand(7) * 2 + 1), torch.randint(-5, 6, (7,), dtype=torch.int32), 8)
    got = int8_linear_quantize(*_to(args, device), torch.float16, 50, 30, *_to(qp, device), autotune=False)
    expect = int8_linear_quantize_ref(*args, torch.float16, 50, 30, *qp)
    assert all(torch.equal(g.cpu(), e) for g, e in zip(got, expect))
    assert torch.equal(int8_linear(*_to(args, device), torch.float16, autotune=False).cpu(), expect[0])


PERSISTENT_CONFIGS = [c for c in int8_linear_module._GPU_CONFIGS if c.kwargs["PERSISTENT"]]


@pytest.mark.parametrize("config", [str(c) for c in PERSISTENT_CONFIGS])
def test_persistent_tiles_match_ref(device, monkeypatch, config):
    """The tuner's persistent configurations (program p walks tiles p, p + programs, ...): 3 programs
    (the interpreter's count) over 3 x 3 tiles compute every tile once and get the reference's
    result (partial tiles, a quantized column range, a zero point on every token)."""
    chosen = next(c for c in PERSISTENT_CONFIGS if str(c) == config)
    monkeypatch.setattr(int8_linear_module, "fixed_config", lambda M, N, K: chosen)
    M, N = 2 * chosen.kwargs["BLOCK_M"] + 5, 2 * chosen.kwargs["BLOCK_N"] + 3  # 3 x 3 tiles, ragged
    L = next(d for d in range(3, M) if M % d == 0)  # several samples of L tokens: M rows in all
    args = _make(M // L, L, 150, N, seed=12)  # K = 150: one or two K steps, the last partial
    qp = (torch.rand(40) + 0.5, 1 / (torch.rand(L) * 2 + 1), torch.randint(-5, 6, (L,), dtype=torch.int32), 8)
    got = int8_linear_quantize(*_to(args, device), torch.bfloat16, N - 40, 40, *_to(qp, device), autotune=False)
    expect = int8_linear_quantize_ref(*args, torch.bfloat16, N - 40, 40, *qp)
    assert all(torch.equal(g.cpu(), e) for g, e in zip(got, expect))


def test_fixed_config_follows_the_tuned_choices():
    """The tiles fixed_config picks where the H100 autotuner's picks were clear."""
    def tiles(shape):
        return tuple(fixed_config(*shape).kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    assert tiles((25216, 3072, 768)) == (128, 256, 128)  # Vim-B in_proj, batch 128
    assert tiles((25216, 80, 1536)) == (64, 64, 128)  # x_proj: one N tile
    assert tiles((25216, 768, 24)) == (128, 128, 64)  # dt_proj: one K step


def test_cpu_tensors_need_interpreter(monkeypatch):
    args = _make(2, 2, 12, 5)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CPU"):
        int8_linear(*args, torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs two devices")
def test_device_mismatch():
    xq, x_scale, zp, wq, w_scale, w_colsum, b = _make(2, 2, 12, 5)
    with pytest.raises(ValueError, match="same device"):
        int8_linear(xq.cuda(), x_scale, zp, wq, w_scale, w_colsum, b, torch.float32)


def test_ref_integer_part_is_exact():
    """The spec's accumulator (float64 matmul) equals an int64 sum of products."""
    xq, _, zp, wq, _, w_colsum, _ = _make(2, 5, 33, 44, seed=11)
    y = int8_linear_ref(xq, torch.ones(5), zp, wq, torch.ones(44), w_colsum, None, torch.float32)
    assert torch.equal(y.double(), _expected(xq, torch.ones(5), zp, wq, torch.ones(44), w_colsum, None))


def test_strided_activations(device):
    xq, x_scale, zp, wq, w_scale, w_colsum, b = _make(2, 5, 33, 5, seed=5)
    big = torch.zeros(2, 5, 50, dtype=torch.int8)
    big[..., 7:40] = xq
    view = big[..., 7:40]  # row stride 50
    y = int8_linear(*_to((view, x_scale, zp, wq, w_scale, w_colsum, b), device), torch.float32)
    assert torch.equal(y.cpu(), int8_linear_ref(xq, x_scale, zp, wq, w_scale, w_colsum, b, torch.float32))


def test_bad_inputs():
    xq, x_scale, zp, wq, w_scale, w_colsum, b = _make(2, 5, 12, 5)
    f32 = torch.float32
    with pytest.raises(ValueError, match="xq"):
        int8_linear(xq.float(), x_scale, zp, wq, w_scale, w_colsum, b, f32)
    with pytest.raises(ValueError, match="wq"):
        int8_linear(xq, x_scale, zp, wq[:, :11], w_scale, w_colsum, b, f32)
    with pytest.raises(ValueError, match="w_colsum"):
        int8_linear(xq, x_scale, zp, wq, w_scale, w_colsum[:4], b, f32)
    with pytest.raises(ValueError, match="w_scale"):
        int8_linear(xq, x_scale, zp, wq, w_scale[:4], w_colsum, b, f32)
    with pytest.raises(InputError, match="the input has 5 tokens"):  # static parameters of another L
        int8_linear(xq, x_scale[:4], zp[:4], wq, w_scale, w_colsum, b, f32)
    with pytest.raises(InputError, match="tokens"):  # per-row parameters of another shape
        int8_linear(xq, x_scale.expand(3, 5), zp.expand(3, 5), wq, w_scale, w_colsum, b, f32)
    with pytest.raises(InputError, match="differ in shape"):
        int8_linear(xq, x_scale, zp[:4], wq, w_scale, w_colsum, b, f32)
    with pytest.raises(ValueError, match="autotune must be a bool"):
        int8_linear(xq, x_scale, zp, wq, w_scale, w_colsum, b, f32, autotune="no")
    with pytest.raises(ValueError, match="bias"):
        int8_linear(xq, x_scale, zp, wq, w_scale, w_colsum, b[:4], f32)
    with pytest.raises(ValueError, match="out_dtype"):
        int8_linear(xq, x_scale, zp, wq, w_scale, w_colsum, b, torch.int32)
    with pytest.raises(ValueError, match="xq"):
        int8_linear_ref(xq[0, 0], x_scale, zp, wq, w_scale, w_colsum, b, f32)
    with pytest.raises(ValueError, match="xq"):
        int8_linear_ref(xq.float(), x_scale, zp, wq, w_scale, w_colsum, b, f32)


# --------------------------------------------------------------------------------------------
# int8_linear_quantize: fused output quantization of a column range
# --------------------------------------------------------------------------------------------


def _qparams(cols, tokens, seed, smooth=True):
    """(inv_smooth (cols,) or None, scale (tokens,), zero_point (tokens,), bits 8) sized to hit the
    clamps sometimes."""
    g = torch.Generator().manual_seed(seed)
    inv_smooth = torch.rand(cols, generator=g) + 0.5 if smooth else None
    inv_scale = torch.rand(tokens, generator=g) * 40 + 5
    zp = torch.randint(-20, 21, (tokens,), dtype=torch.int32, generator=g)
    return inv_smooth, 1 / inv_scale, zp, 8


@pytest.mark.parametrize("q_start,q_cols", [(0, 12), (0, 44), (30, 10), (43, 1)])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("smooth", [True, False])
def test_quantized_columns_match_ref(device, q_start, q_cols, out_dtype, smooth):
    """Several M / N tiles, a column range that starts mid-tile, one that crosses tiles and one of
    every column: y is unchanged and the codes equal quantize(y[..., range] as stored) exactly."""
    args = _make(5, 10, 33, 44, seed=17)
    qp = _qparams(q_cols, 10, seed=q_cols, smooth=smooth)
    y, yq = int8_linear_quantize(*_to(args, device), out_dtype, q_start, q_cols, *_to(qp, device))
    y_ref, yq_ref = int8_linear_quantize_ref(*args, out_dtype, q_start, q_cols, *qp)
    assert yq.shape == (5, 10, q_cols) and yq.dtype == torch.int8 and yq.is_contiguous()
    assert torch.equal(y.cpu(), y_ref)
    assert torch.equal(y_ref, int8_linear_ref(*args, out_dtype))
    assert torch.equal(yq.cpu(), yq_ref)
    # the reference's codes: the integer module's rule on y's columns as stored
    expect = integer.quantize_codes(y_ref[..., q_start:q_start + q_cols], qp[0], integer.reciprocal_scale(qp[1]),
                                    qp[2], 8)
    assert torch.equal(yq_ref, expect.to(torch.int8))
    clamped = (yq_ref == -128) | (yq_ref == 127)
    assert 0 < clamped.sum() < yq_ref.numel()  # the range is exercised at both ends, not saturated


def test_quantized_columns_low_bits(device):
    args = _make(2, 5, 12, 5, seed=2)
    inv_smooth, scale, zp, _ = _qparams(5, 5, seed=4)
    _, yq = int8_linear_quantize(*_to(args, device), torch.float32, 0, 5, *_to((inv_smooth, scale, zp), device), 4)
    _, yq_ref = int8_linear_quantize_ref(*args, torch.float32, 0, 5, inv_smooth, scale, zp, 4)
    assert torch.equal(yq.cpu(), yq_ref) and yq_ref.min() >= -8 and yq_ref.max() <= 7


def test_quantized_columns_bad_inputs():
    args = _make(2, 5, 12, 5)
    inv_smooth, scale, zp, bits = _qparams(3, 5, seed=0)
    f32 = torch.float32
    with pytest.raises(ValueError, match="q_cols"):
        int8_linear_quantize(*args, f32, 3, 3, inv_smooth, scale, zp, bits)  # columns 3..5 of 5
    with pytest.raises(ValueError, match="q_start"):
        int8_linear_quantize(*args, f32, 5, 3, inv_smooth, scale, zp, bits)
    with pytest.raises(ValueError, match="inv_smooth"):
        int8_linear_quantize(*args, f32, 0, 4, inv_smooth, scale, zp, bits)
    with pytest.raises(InputError, match="the input has 5 tokens"):
        int8_linear_quantize(*args, f32, 0, 3, inv_smooth, scale[:4], zp[:4], bits)
    with pytest.raises(ValueError, match="bits"):
        int8_linear_quantize(*args, f32, 0, 3, inv_smooth, scale, zp, 9)
    with pytest.raises(ValueError, match="bits"):
        int8_linear_quantize_ref(*args, f32, 0, 3, inv_smooth, scale, zp, 1)
    # the output's quantizer is per-token static: per-row input parameters (another row count) do not fit it
    xq, x_scale, x_zp, *rest = args
    with pytest.raises(InputError, match="output quantizer"):
        int8_linear_quantize(xq, x_scale.expand(2, 5), x_zp.expand(2, 5), *rest, f32, 0, 3, inv_smooth, scale, zp,
                             bits)


def test_quantized_columns_round_ties_to_even(device):
    """Outputs landing exactly on .5 steps of the output quantizer: the epilogue rounds them half to
    even, as the reference (quant/integer.py) does, and the codes are the hand-computed ones."""
    xq = torch.tensor([[[1, 0], [3, 0], [5, 0], [-1, 0], [-3, 0], [7, 0]]], dtype=torch.int8)  # (1, 6, 2)
    wq = torch.tensor([[1, 0], [0, 1]], dtype=torch.int8)
    zp = torch.zeros(6, dtype=torch.int32)
    args = (xq, torch.full((6,), 0.5), zp, wq, torch.ones(2), wq.sum(1, dtype=torch.int32), None, torch.float32, 0, 1,
            None, torch.ones(6), zp, 8)
    y, yq = int8_linear_quantize(*_to(args, device))
    y_ref, yq_ref = int8_linear_quantize_ref(*args)
    assert y_ref[0, :, 0].tolist() == [0.5, 1.5, 2.5, -0.5, -1.5, 3.5]
    assert yq_ref[0, :, 0].tolist() == [0, 2, 2, 0, -2, 4]
    assert torch.equal(yq.cpu(), yq_ref) and torch.equal(y.cpu(), y_ref)


# --------------------------------------------------------------------------------------------
# int8_linear_softplus: the scan's softplus(delta + delta_bias) in the epilogue
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("delta_bias", [True, False])
def test_softplus_epilogue_is_the_scans_delta(device, delta_bias):
    """dt_proj's GEMM with the softplus in its epilogue, then the scan without one, equals the plain GEMM then
    the scan with its softplus and delta_bias, bit for bit (both kernels; one softplus device function)."""
    from ptq4vm_fx.kernels.selective_scan import selective_scan

    batch, L, D, N = 2, 5, 33, 4
    args = _make(batch, L, 12, D, seed=11)
    g = torch.Generator().manual_seed(12)
    dbias = torch.randn(D, generator=g) * 3 if delta_bias else None
    u, B, C = torch.randn(batch, D, L, generator=g), torch.randn(batch, N, L, generator=g), torch.randn(
        batch, N, L, generator=g)
    A = -torch.rand(D, N, generator=g) - 0.1
    dev = _to((u, A, B, C, dbias), device)
    plain = int8_linear(*_to(args, device), torch.float32).transpose(1, 2)
    fused = int8_linear_softplus(*_to(args, device), dev[4], torch.float32)
    assert fused.dtype == torch.float32 and fused.shape == (batch, L, D)
    before = selective_scan(dev[0], plain, dev[1], dev[2], dev[3], None, None, dev[4], True)
    after = selective_scan(dev[0], fused.transpose(1, 2), dev[1], dev[2], dev[3], None, None, None, False)
    assert torch.equal(before, after)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_softplus_epilogue_matches_ref(device, out_dtype):
    """Against the reference (torch's softplus of the output as rounded, plus delta_bias): the kernel's
    softplus is a few ulp from torch's (docs/design.md section 3.3), exact above 20; y spans both sides."""
    args = list(_make(3, 7, 33, 44, seed=5))
    args[6] = args[6] * 15  # bias: outputs on both sides of 0 and of 20 (atol: results below 1e-30)
    dbias = torch.linspace(-2, 2, 44)
    y = int8_linear_softplus(*_to(args, device), dbias.to(device), out_dtype).cpu()
    y_ref = int8_linear_softplus_ref(*args, dbias, out_dtype)
    assert y.dtype == out_dtype and (y_ref > 20).any() and (y_ref < 1e-3).any()
    if out_dtype == torch.float32:
        torch.testing.assert_close(y, y_ref, rtol=6e-6, atol=1e-30)  # (3e-7 + 1e-7 |x|) |ref| at |x| <= 50
        assert torch.equal(y[y_ref > 20], y_ref[y_ref > 20])
    else:  # one rounding to half apart at most
        torch.testing.assert_close(y.float(), y_ref.float(), rtol=1e-2, atol=1e-30)


def test_softplus_epilogue_bad_inputs():
    args = _make(1, 3, 12, 8)
    with pytest.raises(ValueError, match="delta_bias"):
        int8_linear_softplus(*args, torch.zeros(7), torch.float32)
    with pytest.raises(ValueError, match="not combined"):
        int8_linear_module._launch_reference(args[0].reshape(3, 12), args[3], args[5], args[4], args[1], args[2],
                                             args[6], 3, torch.float32, inv_scale=torch.ones(3),
                                             zero_point=torch.zeros(3, dtype=torch.int32), softplus=True)


# --------------------------------------------------------------------------------------------
# int8_linear_silu: the scan's silu(z) on the columns [silu_start, N) in the epilogue
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quant", [False, True])
def test_silu_epilogue_is_the_scans_gate(device, quant):
    """in_proj's GEMM with silu(z) in its epilogue, then the bidirectional scan with z_silu, equals the plain GEMM
    then the scan computing silu(z) itself, bit for bit (both kernels; one SiLU device function); the x columns
    are the plain GEMM's."""
    from ptq4vm_fx.kernels.selective_scan import bidirectional_scan, bidirectional_scan_quantize

    batch, L, D, N = 2, 5, 33, 4
    args = _make(batch, L, 12, 2 * D, seed=13)
    args = (*args[:6], args[6] * 4)  # z on both sides of 0, some past SiLU's bend
    g = torch.Generator().manual_seed(14)
    branch = [torch.randn(batch, D, L, generator=g), torch.randn(batch, D, L, generator=g) * 0.5,
              -torch.rand(D, N, generator=g) - 0.1, torch.randn(batch, N, L, generator=g),
              torch.randn(batch, N, L, generator=g), torch.randn(D, generator=g), None]
    scan_args = _to(branch + branch, device)
    plain = int8_linear(*_to(args, device), torch.float32)
    fused = int8_linear_silu(*_to(args, device), D, torch.float32)
    assert fused.dtype == torch.float32 and fused.shape == (batch, L, 2 * D)
    assert torch.equal(fused[..., :D], plain[..., :D]) and not torch.equal(fused[..., D:], plain[..., D:])
    if quant:
        qparams = _to((torch.rand(D, generator=g) + 0.5, torch.full((L,), 0.01), torch.zeros(L, dtype=torch.int32),
                       8), device)
        before = bidirectional_scan_quantize(*scan_args, plain[..., D:].transpose(1, 2), True, *qparams)
        after = bidirectional_scan_quantize(*scan_args, fused[..., D:].transpose(1, 2), True, *qparams, True, True)
        assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    else:
        before = bidirectional_scan(*scan_args, plain[..., D:].transpose(1, 2), True)
        after = bidirectional_scan(*scan_args, fused[..., D:].transpose(1, 2), True, True)
        assert torch.equal(before, after)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp2")  # the interpreter's exp2(-z log2 e) at z << 0
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("silu_start", [0, 20])
def test_silu_epilogue_matches_ref(device, out_dtype, silu_start):
    """Against the reference (torch's SiLU of the output as rounded, in the columns from silu_start): the columns
    before are the plain GEMM's bit for bit, the kernel's SiLU is a few ulp from torch's (docs/design.md
    section 3.3); y spans both sides of 0 and SiLU's tails."""
    args = list(_make(3, 7, 33, 44, seed=6))
    args[6] = args[6] * 15
    y = int8_linear_silu(*_to(args, device), silu_start, out_dtype).cpu()
    y_ref = int8_linear_silu_ref(*args, silu_start, out_dtype)
    assert y.dtype == out_dtype and (y_ref[..., silu_start:] < -1e-3).any() and (y_ref > 10).any()
    assert torch.equal(y[..., :silu_start], int8_linear_ref(*args, out_dtype)[..., :silu_start])
    if out_dtype == torch.float32:
        torch.testing.assert_close(y, y_ref, rtol=6e-6, atol=1e-30)  # (3e-7 + 1e-7 |x|) |ref| at |x| <= 50
    else:  # one rounding to half apart at most
        torch.testing.assert_close(y.float(), y_ref.float(), rtol=1e-2, atol=1e-30)


def test_silu_epilogue_bad_inputs():
    args = _make(1, 3, 12, 8)
    with pytest.raises(ValueError, match="silu_start"):
        int8_linear_silu(*args, 8, torch.float32)
    with pytest.raises(ValueError, match="not combined"):
        int8_linear_module._launch_reference(args[0].reshape(3, 12), args[3], args[5], args[4], args[1], args[2],
                                             args[6], 3, torch.float32, inv_scale=torch.ones(3),
                                             zero_point=torch.zeros(3, dtype=torch.int32), silu_start=4)
