import pytest
import torch

from ptq4vm_fx.kernels import int8_linear as int8_linear_module
from ptq4vm_fx.kernels.int8_linear import fixed_config, int8_linear, int8_linear_ref


def _make(M, K, N, tokens, seed=0, bias=True, zp_range=8):
    g = torch.Generator().manual_seed(seed)
    xq = torch.randint(-128, 128, (M, K), dtype=torch.int8, generator=g)
    wq = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
    w_colsum = wq.sum(1, dtype=torch.int32)
    w_scale = torch.rand(N, generator=g) * 0.02 + 1e-3
    x_scale = torch.rand(tokens, generator=g) * 0.1 + 1e-3
    zp = torch.randint(-zp_range, zp_range + 1, (tokens,), dtype=torch.int32, generator=g)
    b = torch.randn(N, generator=g) if bias else None
    return xq, wq, w_colsum, w_scale, x_scale, zp, b


def _to(args, device):
    return [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]


@pytest.mark.parametrize("M,tokens", [(1, 1), (7, 3), (10, 5)])
@pytest.mark.parametrize("K", [12, 33])
@pytest.mark.parametrize("N", [5, 44])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_ref_fp32(device, M, tokens, K, N, bias):
    args = _make(M, K, N, tokens, seed=M * 1000 + K * 10 + N, bias=bias)
    y = int8_linear(*_to(args, device), tokens)
    y_ref = int8_linear_ref(*args, tokens)
    assert y.shape == (M, N) and y.dtype == torch.float32
    # exact integer accumulation + the same fp32 epilogue (no FMA contraction) -> bit exact
    assert torch.equal(y.cpu(), y_ref)


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16])
def test_out_dtypes(device, out_dtype):
    args = _make(10, 33, 44, 5, seed=3)
    y = int8_linear(*_to(args, device), 5, out_dtype=out_dtype)
    y_ref = int8_linear_ref(*args, 5, out_dtype=out_dtype)
    assert y.dtype == out_dtype
    # rounded to nearest even like torch's cast, also under the interpreter (which truncates to bf16)
    assert torch.equal(y.cpu(), y_ref)


def test_extreme_codes_and_zero_points(device):
    """Largest |acc| and zero-point corrections: the int32 path must not lose anything."""
    M, K, N, L = 6, 70, 9, 3
    xq = torch.full((M, K), -128, dtype=torch.int8)
    xq[1::2] = 127
    wq = torch.full((N, K), 127, dtype=torch.int8)
    wq[::3] = -127
    w_colsum = wq.sum(1, dtype=torch.int32)
    w_scale = torch.full((N,), 1.0)
    x_scale = torch.tensor([1.0, 0.5, 0.25])
    zp = torch.tensor([-128, 127, 0], dtype=torch.int32)
    args = (xq, wq, w_colsum, w_scale, x_scale, zp, None)
    y = int8_linear(*_to(args, device), L)
    acc = (xq.long()[:, None, :] * wq.long()[None]).sum(-1)
    tok = torch.arange(M) % L
    expect = (acc - zp.long()[tok][:, None] * w_colsum.long()[None]).double() * x_scale.double()[tok][:, None]
    assert torch.equal(y.cpu().double(), expect)
    assert torch.equal(y.cpu(), int8_linear_ref(*args, L))


def test_multi_tile_grid(device):
    """Several M and N tiles (grouped launch order), ragged on every edge, several K steps."""
    args = _make(50, 70, 40, 10, seed=13)
    y = int8_linear(*_to(args, device), 10)
    assert torch.equal(y.cpu(), int8_linear_ref(*args, 10))


# one (M, N, K) per branch of fixed_config: dt_proj at Vim-S / Vim-B width, x_proj, Vim-B in_proj at
# batch 128, Vim-S in_proj
FIXED_SHAPES = [(25216, 768, 24), (25216, 1536, 48), (25216, 56, 768), (25216, 3072, 768), (6304, 1536, 384)]


@pytest.mark.parametrize("config", sorted({str(fixed_config(*shape)) for shape in FIXED_SHAPES}))
def test_fixed_tiles_match_ref(device, monkeypatch, config):
    """autotune=False launches fixed_config's tiles (each of them, here on a small problem with
    partial tiles, a quantized column range and a zero point on every token): the same result."""
    chosen = next(fixed_config(*shape) for shape in FIXED_SHAPES if str(fixed_config(*shape)) == config)
    monkeypatch.setattr(int8_linear_module, "fixed_config", lambda M, N, K: chosen)
    args = _make(70, 150, 90, 7, seed=11)
    qp = (torch.rand(30) + 0.5, torch.rand(7) * 2 + 1, torch.randint(-5, 6, (7,), dtype=torch.int32))
    got = int8_linear(*_to(args, device), 7, torch.float16, inv_smooth=qp[0].to(device), inv_scale=qp[1].to(device),
                      zero_point=qp[2].to(device), q_start=50, q_cols=30, autotune=False)
    expect = int8_linear_ref(*args, 7, torch.float16, inv_smooth=qp[0], inv_scale=qp[1], zero_point=qp[2],
                             q_start=50, q_cols=30)
    assert all(torch.equal(g.cpu(), e) for g, e in zip(got, expect))


PERSISTENT_CONFIGS = [c for c in int8_linear_module._GPU_CONFIGS if c.kwargs["PERSISTENT"]]


@pytest.mark.parametrize("config", [str(c) for c in PERSISTENT_CONFIGS])
def test_persistent_tiles_match_ref(device, monkeypatch, config):
    """The tuner's persistent configurations (program p walks tiles p, p + programs, ...): 3 programs
    (the interpreter's count) over 3 x 3 tiles compute every tile once and get the reference's
    result (partial tiles, a quantized column range, a zero point on every token)."""
    chosen = next(c for c in PERSISTENT_CONFIGS if str(c) == config)
    monkeypatch.setattr(int8_linear_module, "fixed_config", lambda M, N, K: chosen)
    M, N = 2 * chosen.kwargs["BLOCK_M"] + 5, 2 * chosen.kwargs["BLOCK_N"] + 3  # 3 x 3 tiles, ragged
    args = _make(M, 150, N, 7, seed=12)  # K = 150: one or two K steps, the last partial
    qp = (torch.rand(40) + 0.5, torch.rand(7) * 2 + 1, torch.randint(-5, 6, (7,), dtype=torch.int32))
    got = int8_linear(*_to(args, device), 7, torch.bfloat16, inv_smooth=qp[0].to(device),
                      inv_scale=qp[1].to(device), zero_point=qp[2].to(device), q_start=N - 40, autotune=False)
    expect = int8_linear_ref(*args, 7, torch.bfloat16, inv_smooth=qp[0], inv_scale=qp[1], zero_point=qp[2],
                             q_start=N - 40)
    assert all(torch.equal(g.cpu(), e) for g, e in zip(got, expect))


def test_fixed_config_follows_the_tuned_choices():
    """The tiles fixed_config picks where the H100 autotuner's picks were clear."""
    def tiles(shape):
        return tuple(fixed_config(*shape).kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    assert tiles((25216, 3072, 768)) == (128, 256, 128)  # Vim-B in_proj, batch 128
    assert tiles((25216, 80, 1536)) == (64, 64, 128)  # x_proj: one N tile
    assert tiles((25216, 768, 24)) == (128, 128, 64)  # dt_proj: one K step


def test_cpu_tensors_need_interpreter(monkeypatch):
    args = _make(4, 12, 5, 2)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CPU"):
        int8_linear(*args, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs two devices")
def test_device_mismatch():
    xq, wq, w_colsum, w_scale, x_scale, zp, b = _make(4, 12, 5, 2)
    with pytest.raises(ValueError, match="same device"):
        int8_linear(xq.cuda(), wq, w_colsum, w_scale, x_scale, zp, b, 2)


def test_ref_integer_part_is_exact():
    """The spec's accumulator (float64 matmul) equals an int64 sum of products."""
    xq, wq, w_colsum, _, _, zp, _ = _make(10, 33, 44, 5, seed=11)
    ones = torch.ones(44)
    y = int8_linear_ref(xq, wq, w_colsum, ones, torch.ones(5), zp, None, 5)
    acc = (xq.long()[:, None, :] * wq.long()[None]).sum(-1)
    tok = torch.arange(10) % 5
    assert torch.equal(y.double(), (acc - zp.long()[tok][:, None] * w_colsum.long()[None]).double())


def test_strided_activations(device):
    xq, wq, w_colsum, w_scale, x_scale, zp, b = _make(10, 33, 5, 5, seed=5)
    big = torch.zeros(10, 50, dtype=torch.int8)
    big[:, 7:40] = xq
    view = big[:, 7:40]  # row stride 50
    y = int8_linear(*_to((view, wq, w_colsum, w_scale, x_scale, zp, b), device), 5)
    assert torch.equal(y.cpu(), int8_linear_ref(xq, wq, w_colsum, w_scale, x_scale, zp, b, 5))


def test_bad_inputs():
    xq, wq, w_colsum, w_scale, x_scale, zp, b = _make(10, 12, 5, 5)
    with pytest.raises(ValueError, match="xq"):
        int8_linear(xq.float(), wq, w_colsum, w_scale, x_scale, zp, b, 5)
    with pytest.raises(ValueError, match="wq"):
        int8_linear(xq, wq[:, :11], w_colsum, w_scale, x_scale, zp, b, 5)
    with pytest.raises(ValueError, match="w_colsum"):
        int8_linear(xq, wq, w_colsum.long(), w_scale, x_scale, zp, b, 5)
    with pytest.raises(ValueError, match="x_scale"):
        int8_linear(xq, wq, w_colsum, w_scale, x_scale, zp, b, 4)
    with pytest.raises(ValueError, match="x_zero_point"):
        int8_linear(xq, wq, w_colsum, w_scale, x_scale, zp.float(), b, 5)
    with pytest.raises(ValueError, match="autotune must be a bool"):
        int8_linear(xq, wq, w_colsum, w_scale, x_scale, zp, b, 5, autotune="no")
    with pytest.raises(ValueError, match="bias"):
        int8_linear(xq, wq, w_colsum, w_scale, x_scale, zp, b[:4], 5)
    with pytest.raises(ValueError, match="out_dtype"):
        int8_linear(xq, wq, w_colsum, w_scale, x_scale, zp, b, 5, out_dtype=torch.int32)
    with pytest.raises(ValueError, match="tokens"):
        int8_linear(xq, wq, w_colsum, w_scale, x_scale, zp, b, 0)
    with pytest.raises(ValueError, match="xq"):
        int8_linear_ref(xq[0], wq, w_colsum, w_scale, x_scale, zp, b, 5)


# --------------------------------------------------------------------------------------------
# fused output quantization of a column range
# --------------------------------------------------------------------------------------------


def _qparams(cols, tokens, seed, smooth=True):
    """inv_smooth (cols,), inv_scale (tokens,), zero_point (tokens,) sized to hit the clamps sometimes."""
    g = torch.Generator().manual_seed(seed)
    inv_smooth = torch.rand(cols, generator=g) + 0.5 if smooth else None
    inv_scale = torch.rand(tokens, generator=g) * 40 + 5
    zp = torch.randint(-20, 21, (tokens,), dtype=torch.int32, generator=g)
    return {"inv_smooth": inv_smooth, "inv_scale": inv_scale, "zero_point": zp}


@pytest.mark.parametrize("q_start,q_cols", [(0, 12), (0, None), (30, 10), (43, 1)])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("smooth", [True, False])
def test_quantized_columns_match_ref(device, q_start, q_cols, out_dtype, smooth):
    """Several M / N tiles, a column range that starts mid-tile and one that crosses tiles: y is
    unchanged and the codes equal quantize(y[:, range] as stored) exactly."""
    args = _make(50, 33, 44, 10, seed=17)
    cols = (44 - q_start) if q_cols is None else q_cols
    qp = _qparams(cols, 10, seed=cols, smooth=smooth)
    y, yq = int8_linear(*_to(args, device), 10, out_dtype, **{k: _to([v], device)[0] for k, v in qp.items()},
                        bits=8, q_start=q_start, q_cols=q_cols)
    y_ref, yq_ref = int8_linear_ref(*args, 10, out_dtype, **qp, bits=8, q_start=q_start, q_cols=q_cols)
    assert yq.shape == (50, cols) and yq.dtype == torch.int8 and yq.is_contiguous()
    assert torch.equal(y.cpu(), y_ref)
    assert torch.equal(y_ref, int8_linear_ref(*args, 10, out_dtype))
    assert torch.equal(yq.cpu(), yq_ref)
    clamped = (yq_ref == -128) | (yq_ref == 127)
    assert 0 < clamped.sum() < yq_ref.numel()  # the range is exercised at both ends, not saturated


def test_quantized_columns_low_bits(device):
    args = _make(10, 12, 5, 5, seed=2)
    qp = _qparams(5, 5, seed=4)
    _, yq = int8_linear(*_to(args, device), 5, **{k: _to([v], device)[0] for k, v in qp.items()}, bits=4)
    _, yq_ref = int8_linear_ref(*args, 5, **qp, bits=4)
    assert torch.equal(yq.cpu(), yq_ref) and yq_ref.min() >= -8 and yq_ref.max() <= 7


def test_quantized_columns_bad_inputs():
    args = _make(10, 12, 5, 5)
    qp = _qparams(3, 5, seed=0)
    with pytest.raises(ValueError, match="q_cols"):
        int8_linear(*args, 5, **qp, q_start=3, q_cols=3)  # columns 3..5 of 5
    with pytest.raises(ValueError, match="q_start"):
        int8_linear(*args, 5, **qp, q_start=5)
    with pytest.raises(ValueError, match="inv_smooth"):
        int8_linear(*args, 5, **qp, q_cols=4)
    with pytest.raises(ValueError, match="inv_scale"):
        int8_linear(*args, 5, **dict(qp, inv_scale=qp["inv_scale"][:4]), q_cols=3)
    with pytest.raises(ValueError, match="bits"):
        int8_linear(*args, 5, **qp, q_cols=3, bits=9)
    with pytest.raises(ValueError, match="without inv_scale"):
        int8_linear(*args, 5, inv_smooth=qp["inv_smooth"], zero_point=qp["zero_point"])
