"""Per-kernel speedups at Vim-T/S/B shapes.

* INT8 linear: the op a lowered model runs (ptq4vm::int8_linear, the Triton GEMM on CUDA: int8
  activations from a fused producer, dequantization + zero-point correction + bias in the GEMM
  epilogue) against torch._int_mm with a separate quantize and dequantize in torch ops, and against
  an FP16 linear (cuBLAS).
* x_proj with dt_proj's input quantized in its epilogue (ptq4vm_fused::int8_linear_quantize)
  against the same GEMM followed by the standalone quantize kernel (ptq4vm::quantize_per_token) on
  the dt_rank column slice.
* Bidirectional scan: the lowered op (both directions, the average and the int8 epilogue for
  out_proj in one kernel) against the reference scan (ptq4vm_fx.ops, twice, as the eager model runs
  it) and against an FP16 scan (the Triton single-direction kernel on fp16 inputs, twice, plus the
  average: what the FP16 official-style baseline runs).
* dt_proj's softplus: the two dt_proj GEMMs with the scan's softplus in their epilogue
  (ptq4vm_fused::int8_linear_softplus) and the bidirectional scan without it (the lowered fp32 Vim),
  against the plain GEMMs and the scan applying softplus(delta + delta_bias) itself.
* Small batches (1-8): one scan direction, and the bidirectional scan + quantize, on the segmented kernel
  (kernels/segmented_scan.py, what the ops run there) against the one-pass kernels at the same batch.

Every record carries its floor (benchmarks/floors.py: MUFU, FP32 pipe, tensor cores, HBM bytes at the
measured copy bandwidth) and the fraction of it the kernel reached.
"""

from unittest import mock

import pytest
import torch

from ptq4vm_fx import scan
from ptq4vm_fx.kernels import segmented_scan
from ptq4vm_fx.kernels.selective_scan import selective_scan as triton_scan
from ptq4vm_fx.lowering import fused_ops
from ptq4vm_fx.models.orders import token_orders
from ptq4vm_fx.models.vmamba import CROSS_SCAN

from .floors import Work, linear_work, scan_work, with_floor
from .shapes import MODELS, vim_shape
from .timing import median_ms

pytestmark = pytest.mark.requires_cuda


def synced(fn):
    """``fn`` followed by a device synchronization (pytest-benchmark times wall clock)."""
    def run():
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return run


# --------------------------------------------------------------------------------------------
# INT8 linear
# --------------------------------------------------------------------------------------------


def linear_problem(model: str, linear: str, batch: int, device="cuda") -> dict:
    """A mixer linear's operands at ``batch`` images: float and int8 activations (batch, L, K),
    per-token static qparams, int8 weights (N, K) with scales and column sums, bias, fp16 copies."""
    shape = vim_shape(model)
    k, n = shape.linear(linear)
    g = torch.Generator(device=device).manual_seed(0)
    # fp16-representable values: both paths quantize the same numbers
    x = torch.randn(batch, shape.tokens, k, device=device, generator=g).half().float()
    w = torch.randn(n, k, device=device, generator=g) / k**0.5
    w_scale = w.abs().amax(1) / 127
    wq = torch.round(w / w_scale[:, None]).clamp(-127, 127).to(torch.int8)
    lo, hi = x.amin((0, 2)), x.amax((0, 2))
    x_scale = (hi - lo) / 255
    zp = (torch.round(-lo / x_scale) - 128).to(torch.int32)
    xq = torch.ops.ptq4vm.quantize_per_token(x, torch.ones(k, device=device), x_scale, zp, 8)
    return {"x16": x.half(), "xq": xq, "x_scale": x_scale, "zp": zp, "wq": wq, "w_scale": w_scale,
            "colsum": wq.to(torch.int32).sum(1), "bias": torch.randn(n, device=device, generator=g),
            "w16": w.half(), "m": batch * shape.tokens, "n": n, "k": k}


def gemm_operands(p: dict) -> tuple:
    """int8_linear's operands before the output dtype: (xq, x_scale, x_zero_point, wq, w_scale, w_colsum, bias)."""
    return p["xq"], p["x_scale"], p["zp"], p["wq"], p["w_scale"], p["colsum"], p["bias"]


def int8_fused(p: dict, autotune: bool = True) -> torch.Tensor:
    return torch.ops.ptq4vm.int8_linear(*gemm_operands(p), torch.float16, autotune)


def int_mm_unfused(p: dict) -> torch.Tensor:
    """torch ops: quantize the fp16 input (the rounding contract of docs/design.md section 3, so the codes
    equal the fused path's), torch._int_mm (int8 x int8 -> int32), dequantize, bias."""
    x, scale, zp = p["x16"], p["x_scale"], p["zp"]
    xq = (torch.round(x.float() * torch.reciprocal(scale)[:, None]) + zp[:, None]).clamp(-128, 127).to(torch.int8)
    acc = torch._int_mm(xq.reshape(-1, p["k"]), p["wq"].t())
    acc = acc.reshape(*x.shape[:-1], p["n"]) - zp[:, None] * p["colsum"]
    return (acc.float() * scale[:, None] * p["w_scale"] + p["bias"]).half()


def fp16_linear(p: dict) -> torch.Tensor:
    return torch.nn.functional.linear(p["x16"], p["w16"], p["bias"].half())


def int_mm_supported(p: dict) -> bool:
    """torch._int_mm's shape rule: M > 16 and K, N multiples of 8."""
    return p["m"] > 16 and p["k"] % 8 == 0 and p["n"] % 8 == 0


def graphed_ms(fn) -> float:
    """Device time of one call (CUDA-graph replay: no host launch overhead in the number)."""
    return median_ms(fn, graph=True)


def time_int8_linear(p: dict, timer=graphed_ms) -> dict:
    """{variant: ms}; the torch._int_mm baseline only where its shape rule allows it."""
    times = {"int8_linear": timer(lambda: int8_fused(p)), "fp16_matmul": timer(lambda: fp16_linear(p))}
    if int_mm_supported(p):
        torch.testing.assert_close(int8_fused(p).float(), int_mm_unfused(p).float(), rtol=2e-2, atol=2e-2)
        times["int_mm_unfused"] = timer(lambda: int_mm_unfused(p))
    return times


@pytest.mark.parametrize("batch", [32, 128])
@pytest.mark.parametrize("linear", ["in_proj", "x_proj", "dt_proj", "out_proj"])
@pytest.mark.parametrize("model", MODELS)
def test_int8_linear(model, linear, batch, record, benchmark, gpu):
    p = linear_problem(model, linear, batch)
    times = time_int8_linear(p)
    tops = 2 * p["m"] * p["n"] * p["k"] / (times["int8_linear"] * 1e-3) / 1e12
    peak = gpu.int8_tops
    # the floor (roofline): compute at the INT8 peak or the bytes at the copy bandwidth, fp16 output
    floor = with_floor(linear_work(p["m"], p["n"], p["k"], out_bytes=2), gpu, times["int8_linear"])
    benchmark.extra_info.update(times_ms=times, int8_tops=tops)
    benchmark.pedantic(synced(lambda: int8_fused(p)), rounds=50, warmup_rounds=5)
    record("int8_linear", f"{vim_shape(model).short}/{linear}/b{batch}", times, "int8_linear",
           tuple(b for b in ("int_mm_unfused", "fp16_matmul") if b in times),
           mnk=(p["m"], p["n"], p["k"]), int8_tops=tops, int8_peak_fraction=None if peak is None else tops / peak,
           **floor, note=None if int_mm_supported(p) else "no torch._int_mm baseline: it needs K, N multiples of 8")


# --------------------------------------------------------------------------------------------
# bidirectional scan
# --------------------------------------------------------------------------------------------


def scan_problem(model: str, batch: int, dtype: torch.dtype, device="cuda"):
    """(forward branch, backward branch, z, out_proj qparams) in Vim's layouts: each branch is
    (u, delta, A, B, C, D, delta_bias) with B and C transposed column slices of x_proj's output and A
    channel-major (as Vim computes it)."""
    shape = vim_shape(model)
    d, n, length, r = shape.d_inner, shape.d_state, shape.tokens, shape.dt_rank
    g = torch.Generator(device=device).manual_seed(0)

    def branch():  # u and delta token-major (stride 1 along d), as the conv and dt_proj kernels store them
        u = torch.randn(batch, length, d, device=device, generator=g).to(dtype).transpose(1, 2)
        delta = (torch.randn(batch, length, d, device=device, generator=g) * 0.5 - 2).to(dtype).transpose(1, 2)
        A = scan.channel_major(-torch.arange(1, n + 1, device=device, dtype=torch.float32).repeat(d, 1))
        x_dbl = torch.randn(batch, length, r + 2 * n, device=device, generator=g).to(dtype)
        return (u, delta, A, x_dbl[..., r:r + n].transpose(1, 2), x_dbl[..., r + n:].transpose(1, 2),
                torch.ones(d, device=device), torch.rand(d, device=device, generator=g) * 0.1)

    z = torch.randn(batch, length, 2 * d, device=device, generator=g).to(dtype)[..., d:].transpose(1, 2)
    qparams = (torch.ones(d, device=device), torch.full((length,), 0.02, device=device),
               torch.zeros(length, dtype=torch.int32, device=device), 8)
    return branch(), branch(), z, qparams


def two_pass(scan, fwd, bwd, z):
    """(scan forward + scan reverse) / 2 with a single-direction ``scan``."""
    u, dt, A, B, C, D, db = fwd
    y_f = scan(u, dt, A, B, C, D, z, db, True, False)
    u, dt, A, B, C, D, db = bwd
    return (y_f + scan(u, dt, A, B, C, D, z, db, True, True)) / 2


def time_bidirectional_scan(model: str, batch: int, device="cuda", timer=graphed_ms) -> dict:
    fwd, bwd, z, qparams = scan_problem(model, batch, torch.float32, device)
    fwd16, bwd16, z16, _ = scan_problem(model, batch, torch.float16, device)

    def fused(store_out=True):
        return fused_ops.bidirectional_scan_quantize(*fwd, *bwd, z, True, *qparams, store_out)

    out, codes = fused()
    torch.testing.assert_close(out, two_pass(scan.selective_scan_ref, fwd, bwd, z), rtol=1e-3, atol=1e-4)
    assert torch.equal(fused(False)[1], codes)
    return {  # timed as a lowered Vim launches it: the codes only (out_proj reads nothing else)
        "bidirectional_scan": timer(lambda: fused(False)),
        "reference": median_ms(lambda: two_pass(scan.selective_scan_ref, fwd, bwd, z), warmup=2, runs=50),
        "fp16_two_pass": timer(lambda: two_pass(triton_scan, fwd16, bwd16, z16)),
    }


def dt_quantize_args(p: dict, dt_rank: int) -> tuple:
    """(inv_smooth (dt_rank,), scale (L,), zero_point (L,), bits) for dt_proj's input, sized to the data."""
    tokens, device = p["x_scale"].shape[0], p["xq"].device
    return torch.ones(dt_rank, device=device), torch.full((tokens,), 0.05, device=device), \
        torch.zeros(tokens, dtype=torch.int32, device=device), 8


def linear_quantize_calls(p: dict, dt_rank: int) -> tuple:
    """(fused, separate): the GEMM quantizing the first dt_rank columns in its epilogue, and the GEMM
    followed by the standalone quantize kernel on that column slice (what runs without the fusion)."""
    qparams = dt_quantize_args(p, dt_rank)
    gemm_args = (*gemm_operands(p), torch.float16)

    def fused():
        return fused_ops.int8_linear_quantize(*gemm_args, 0, dt_rank, *qparams)

    def separate():
        y = torch.ops.ptq4vm.int8_linear(*gemm_args)
        return y, torch.ops.ptq4vm.quantize_per_token(y[..., :dt_rank], *qparams)

    return fused, separate


def time_linear_quantize(p: dict, dt_rank: int, timer=graphed_ms) -> dict:
    """{variant: ms} of :func:`linear_quantize_calls`, after checking both give the same y and codes."""
    fused, separate = linear_quantize_calls(p, dt_rank)
    (y, yq), (y_sep, yq_sep) = fused(), separate()
    assert torch.equal(y, y_sep) and torch.equal(yq, yq_sep)
    return {"linear_quantize": timer(fused), "int8_linear_then_quantize": timer(separate)}


@pytest.mark.parametrize("batch", [32, 128])
@pytest.mark.parametrize("model", MODELS)
def test_x_proj_quantizes_dt_input(model, batch, record, benchmark, gpu):
    p = linear_problem(model, "x_proj", batch)
    dt_rank = vim_shape(model).dt_rank
    times = time_linear_quantize(p, dt_rank)
    benchmark.extra_info.update(times_ms=times)
    benchmark.pedantic(synced(linear_quantize_calls(p, dt_rank)[0]), rounds=50, warmup_rounds=5)
    work = linear_work(p["m"], p["n"], p["k"], out_bytes=2, codes=dt_rank)
    record("linear_quantize", f"{vim_shape(model).short}/x_proj/b{batch}", times, "linear_quantize",
           ("int8_linear_then_quantize",), **with_floor(work, gpu, times["linear_quantize"]))


@pytest.mark.parametrize("batch", [1, 32, 128])
@pytest.mark.parametrize("model", MODELS)
def test_bidirectional_scan(model, batch, record, benchmark, gpu):
    times = time_bidirectional_scan(model, batch)
    fwd, bwd, z, qparams = scan_problem(model, batch, torch.float32)
    shape = vim_shape(model)
    # as a lowered Vim launches it: fp32 inputs, the int8 codes of the output only (store_out=False)
    work = scan_work(batch, shape.d_inner, shape.tokens, shape.d_state, act_bytes=4, out_bytes=1)
    gbs = work.nbytes / (times["bidirectional_scan"] * 1e-3) / 1e9
    benchmark.extra_info.update(times_ms=times)
    benchmark.pedantic(synced(lambda: fused_ops.bidirectional_scan_quantize(*fwd, *bwd, z, True, *qparams, False)),
                       rounds=50, warmup_rounds=5)
    record("bidirectional_scan", f"{shape.short}/b{batch}", times, "bidirectional_scan",
           ("reference", "fp16_two_pass"), achieved_gbs=gbs, copy_gbs=gpu.copy_gbs,
           copy_bandwidth_fraction=gbs / gpu.copy_gbs, **with_floor(work, gpu, times["bidirectional_scan"]))


# --------------------------------------------------------------------------------------------
# a scan activation moved into a GEMM epilogue (the lowered fp32 Vim): dt_proj's softplus, in_proj's SiLU
# --------------------------------------------------------------------------------------------


def record_epilogue_pair(record, benchmark, gpu, name: str, case: str, calls: tuple, work: Work, fused: str,
                         unfused: str) -> None:
    """Check that ``calls`` = (in_gemm, in_scan) give the same output codes (within one code on under 0.1 % of
    them: the GEMM's activation, compiled without FMA contraction, and the scan's may round an ulp apart), time
    both (``fused``, ``unfused``) and record ``fused`` against ``unfused`` with the floor of ``work``."""
    in_gemm, in_scan = calls
    codes, codes_ref = in_gemm()[1], in_scan()[1]
    mismatched = (codes != codes_ref).float().mean().item()
    assert (codes.int() - codes_ref.int()).abs().max() <= 1 and mismatched < 1e-3
    times = {fused: graphed_ms(in_gemm), unfused: graphed_ms(in_scan)}
    benchmark.extra_info.update(times_ms=times, codes_mismatched=mismatched)
    benchmark.pedantic(synced(in_gemm), rounds=50, warmup_rounds=5)
    record(name, case, times, fused, (unfused,), mismatched_codes=mismatched, **with_floor(work, gpu, times[fused]))


def dt_softplus_calls(model: str, batch: int, device="cuda") -> tuple:
    """(in_gemm, in_scan): the two dt_proj GEMMs (fp32 outputs) and the bidirectional scan + quantize, with the
    softplus(delta + delta_bias) in the GEMMs' epilogue (the scan without it) or in the scan."""
    p = linear_problem(model, "dt_proj", batch, device)
    fwd, bwd, z, qparams = scan_problem(model, batch, torch.float32, device)
    gemm = gemm_operands(p)

    def in_gemm():
        dt_f = fused_ops.int8_linear_softplus(*gemm, fwd[6], torch.float32).transpose(1, 2)
        dt_b = fused_ops.int8_linear_softplus(*gemm, bwd[6], torch.float32).transpose(1, 2)
        return fused_ops.bidirectional_scan_quantize(fwd[0], dt_f, *fwd[2:6], None, bwd[0], dt_b, *bwd[2:6], None,
                                                     z, False, *qparams, False)

    def in_scan():
        dt_f = torch.ops.ptq4vm.int8_linear(*gemm, torch.float32).transpose(1, 2)
        dt_b = torch.ops.ptq4vm.int8_linear(*gemm, torch.float32).transpose(1, 2)
        return fused_ops.bidirectional_scan_quantize(fwd[0], dt_f, *fwd[2:], bwd[0], dt_b, *bwd[2:], z, True,
                                                     *qparams, False)

    return in_gemm, in_scan


@pytest.mark.parametrize("batch", [1, 128])
@pytest.mark.parametrize("model", MODELS)
def test_dt_proj_softplus(model, batch, record, benchmark, gpu):
    shape = vim_shape(model)
    m, (k, n) = batch * shape.tokens, shape.linear("dt_proj")
    gemms = linear_work(m, n, k, out_bytes=4) + linear_work(m, n, k, out_bytes=4)
    work = gemms + Work(mufu=2 * 2 * m * n) + scan_work(batch, shape.d_inner, shape.tokens, shape.d_state,
                                                         act_bytes=4, softplus=False)
    record_epilogue_pair(record, benchmark, gpu, "dt_proj_softplus", f"{shape.short}/b{batch}",
                         dt_softplus_calls(model, batch), work, "softplus_in_gemm", "softplus_in_scan")


def z_silu_calls(model: str, batch: int, device="cuda") -> tuple:
    """(in_gemm, in_scan): in_proj's GEMM (fp32 output, z its last d_inner columns) and the bidirectional scan +
    quantize gated by that z, with silu(z) in the GEMM's epilogue (the scan multiplying by it) or in the scan."""
    p = linear_problem(model, "in_proj", batch, device)
    fwd, bwd, _, qparams = scan_problem(model, batch, torch.float32, device)
    gemm, d = gemm_operands(p), vim_shape(model).d_inner

    def in_gemm():
        xz = fused_ops.int8_linear_silu(*gemm, d, torch.float32)
        return fused_ops.bidirectional_scan_quantize(*fwd, *bwd, xz[..., d:].transpose(1, 2), True, *qparams, False,
                                                     True)

    def in_scan():
        xz = torch.ops.ptq4vm.int8_linear(*gemm, torch.float32)
        return fused_ops.bidirectional_scan_quantize(*fwd, *bwd, xz[..., d:].transpose(1, 2), True, *qparams, False)

    return in_gemm, in_scan


@pytest.mark.parametrize("batch", [1, 128])
@pytest.mark.parametrize("model", MODELS)
def test_in_proj_silu(model, batch, record, benchmark, gpu):
    shape = vim_shape(model)
    m, (k, n) = batch * shape.tokens, shape.linear("in_proj")
    work = linear_work(m, n, k, out_bytes=4) + Work(mufu=2 * m * shape.d_inner) + scan_work(
        batch, shape.d_inner, shape.tokens, shape.d_state, act_bytes=4, silu=False)
    record_epilogue_pair(record, benchmark, gpu, "in_proj_silu", f"{shape.short}/b{batch}",
                         z_silu_calls(model, batch), work, "silu_in_gemm", "silu_in_scan")


# --------------------------------------------------------------------------------------------
# small batches: the segmented scan
# --------------------------------------------------------------------------------------------


def one_pass_scan(*args):
    """The one-pass scan kernel at any batch (the op hands batches up to 8 to the segmented one)."""
    with mock.patch.object(segmented_scan, "MAX_BATCH", 0):
        return triton_scan(*args)


@pytest.mark.parametrize("batch", [1, 2, 4, 8])
@pytest.mark.parametrize("model", MODELS)
def test_small_batch_scan(model, batch, record, benchmark, gpu):
    assert segmented_scan.use_segmented(batch)  # the op's kernel at this batch on a GPU
    fwd, _, z, _ = scan_problem(model, batch, torch.float32)
    args = (*fwd[:6], z, fwd[6], True, False)
    torch.testing.assert_close(triton_scan(*args), one_pass_scan(*args), rtol=1e-4, atol=1e-5)
    times = {"segmented_scan": graphed_ms(lambda: triton_scan(*args)),
             "one_pass_scan": graphed_ms(lambda: one_pass_scan(*args))}
    benchmark.extra_info.update(times_ms=times)
    benchmark.pedantic(synced(lambda: triton_scan(*args)), rounds=50, warmup_rounds=5)
    shape = vim_shape(model)
    work = scan_work(batch, shape.d_inner, shape.tokens, shape.d_state, act_bytes=4, out_bytes=4, directions=1)
    record("small_batch_scan", f"{shape.short}/b{batch}", times, "segmented_scan", ("one_pass_scan",),
           **with_floor(work, gpu, times["segmented_scan"]))


@pytest.mark.parametrize("batch", [1, 2, 4, 8])
@pytest.mark.parametrize("model", MODELS)
def test_small_batch_bidirectional_scan(model, batch, record, benchmark, gpu):
    """As a lowered Vim launches it (fp32 inputs, the codes only): each direction by segments and their average,
    against the one-pass bidirectional kernel."""
    assert segmented_scan.use_segmented(batch)
    fwd, bwd, z, qparams = scan_problem(model, batch, torch.float32)

    def op():
        return fused_ops.bidirectional_scan_quantize(*fwd, *bwd, z, True, *qparams, False)

    def one_pass():
        with mock.patch.object(segmented_scan, "MAX_BATCH", 0):
            return op()

    codes, codes_ref = op()[1], one_pass()[1]
    assert (codes.int() - codes_ref.int()).abs().max() <= 1 and (codes != codes_ref).float().mean() < 1e-3
    times = {"segmented": graphed_ms(op), "one_pass": graphed_ms(one_pass)}
    benchmark.extra_info.update(times_ms=times)
    benchmark.pedantic(synced(op), rounds=50, warmup_rounds=5)
    shape = vim_shape(model)
    work = scan_work(batch, shape.d_inner, shape.tokens, shape.d_state, act_bytes=4, out_bytes=1)
    record("small_batch_bidirectional_scan", f"{shape.short}/b{batch}", times, "segmented", ("one_pass",),
           **with_floor(work, gpu, times["segmented"]))


# --------------------------------------------------------------------------------------------
# VMamba's cross scan: one ordered scan against the graph it replaced
# --------------------------------------------------------------------------------------------

# VMamba-T (vmamba_tiny_s1l8 at 224 px): (side of the map, d_inner, d_state, dt_rank) of stages 1 and 3
CROSS_SCAN_CASES = {"vmamba_tiny/stage1": (56, 96, 1, 6), "vmamba_tiny/stage3": (14, 384, 1, 24)}


def cross_scan_problem(case: str, batch: int, device="cuda") -> tuple:
    """(u, deltas, A, Bs, Cs, D, delta_bias, order, side) of one SS2D cross scan, fp32: u token-major as the
    conv leaves it, each direction's delta / B / C as slices of its own x_proj output (natural order)."""
    side, d, n, r = CROSS_SCAN_CASES[case]
    length = side * side
    g = torch.Generator(device=device).manual_seed(0)
    u = torch.randn(batch, length, d, device=device, generator=g).transpose(1, 2)
    deltas, Bs, Cs = [], [], []
    for _ in range(4):
        x_dbl = torch.randn(batch, length, r + 2 * n, device=device, generator=g)
        deltas.append((torch.randn(batch, length, d, device=device, generator=g) * 0.5 - 2).transpose(1, 2))
        Bs.append(x_dbl[..., r:r + n].transpose(1, 2))
        Cs.append(x_dbl[..., r + n:].transpose(1, 2))
    A = scan.channel_major(-torch.arange(1, n + 1, device=device, dtype=torch.float32).repeat(4, d, 1))
    D, delta_bias = torch.ones(4, d, device=device), torch.rand(4, d, device=device, generator=g) * 0.1
    order = token_orders(torch.empty(1, 1, side, side, device=device), CROSS_SCAN)
    return u, deltas, A, Bs, Cs, D, delta_bias, order, side


def four_scans(u, deltas, A, Bs, Cs, D, delta_bias, side):
    """What VMamba's graph ran before the ordered scan: a transposed copy of u for the column directions,
    four single-direction scans (2 and 3 reversed), the pair sums and the column sum added back
    transposed (its delta / B / C then came from x_proj on the column tokens: the same sizes)."""
    rows, cols = u, u.unflatten(2, (side, side)).transpose(2, 3).flatten(2)
    y = [triton_scan(x, deltas[k], A[k], Bs[k], Cs[k], D[k], None, delta_bias[k], True, k >= 2)
         for k, x in enumerate((rows, cols, rows, cols))]
    y_rows, y_cols = y[0] + y[2], y[1] + y[3]
    return y_rows.unflatten(2, (side, side)) + y_cols.unflatten(2, (side, side)).transpose(2, 3)


@pytest.mark.parametrize("batch", [1, 32, 128])
@pytest.mark.parametrize("case", list(CROSS_SCAN_CASES))
def test_cross_scan(case, batch, record, benchmark, gpu):
    u, deltas, A, Bs, Cs, D, delta_bias, order, side = cross_scan_problem(case, batch)

    def ordered():
        return torch.ops.ptq4vm.ordered_scan(u, deltas, A, Bs, Cs, D, None, delta_bias, order, None, True)

    torch.testing.assert_close(ordered(), scan.ordered_scan_ref(u, deltas, A, Bs, Cs, D, None, delta_bias, order, None,
                                                                True), rtol=1e-3, atol=1e-4)
    times = {"ordered_scan": graphed_ms(ordered),
             "four_scans": graphed_ms(lambda: four_scans(u, deltas, A, Bs, Cs, D, delta_bias, side))}
    benchmark.extra_info.update(times_ms=times)
    benchmark.pedantic(synced(ordered), rounds=50, warmup_rounds=5)
    # the least any cross scan does: u once, each direction's delta, B, C once, the sum written once (fp32);
    # per (b, d, t, state, direction) a decay exp and 4 FP32 ops, a softplus (2 MUFU) per (b, d, t, direction)
    _, d, n, _ = CROSS_SCAN_CASES[case]
    bdl = batch * d * side * side
    elements = 4 * bdl * n
    work = Work(mufu=elements + 8 * bdl, fp32=4 * elements,
                nbytes=4 * (2 * bdl + 4 * bdl + 8 * batch * n * side * side) + 4 * 4 * (d * n + 2 * d))
    record("cross_scan", f"{case}/b{batch}", times, "ordered_scan", ("four_scans",),
           **with_floor(work, gpu, times["ordered_scan"]))
