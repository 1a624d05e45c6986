"""Hardware floors: the least time a GPU could take for a kernel, from the work the kernel must do.

Every kernel record of the benchmarks carries its floor and the fraction of it reached (floor / measured
time); the end-to-end record carries the sum of its kernels' floors. The arithmetic is :func:`floor_ms`,
the work of each Vim kernel is counted by the ``*_work`` functions below. Pure Python: tested on the CPU
(tests/benchmarks/test_floors.py) with hand-computed numbers.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

# Per SM and clock on sm_80 / sm_90 (CUDA C Programming Guide, arithmetic instruction throughput):
MUFU_PER_CLK_SM = 16  # special-function results: ex2, lg2, rcp, rsqrt, sin, cos, tanh
FP32_PER_CLK_SM = 128  # FP32 lanes: one FMUL, FADD or FFMA each

# Dense tensor-core peaks by GPU name fragment: INT8 (TOPS, 2 ops a MAC) and FP16 with fp32
# accumulation (TFLOPS), SXM parts; the boost clock (GHz) the floors assume where none is read.
INT8_PEAK_TOPS = {"H100": 1979.0, "H200": 1979.0, "A100": 624.0, "L40S": 733.0, "L4": 242.0}
FP16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
BOOST_CLOCK_GHZ = {"H100": 1.98, "H200": 1.98, "A100": 1.41, "L40S": 2.52, "L4": 2.04}


@dataclass(frozen=True)
class Gpu:
    """What a floor reads of a GPU: ``sms`` streaming multiprocessors at ``clock_ghz`` (the maximum SM
    clock: a floor must not be beatable), ``copy_gbs`` the measured device copy bandwidth (GB/s, bytes
    read + written), tensor-core peaks ``int8_tops`` and ``fp16_tflops`` (None: unknown)."""

    sms: int
    clock_ghz: float
    copy_gbs: float
    int8_tops: float | None = None
    fp16_tflops: float | None = None

    @classmethod
    def named(cls, name: str, sms: int, copy_gbs: float, clock_ghz: float | None = None) -> Gpu:
        """The GPU whose name contains a key of the peak tables (None where none does)."""
        key = next((k for k in INT8_PEAK_TOPS if k in name), None)
        clock = clock_ghz if clock_ghz is not None else BOOST_CLOCK_GHZ.get(key)
        if clock is None:
            raise ValueError(f"no SM clock known for {name!r}: pass clock_ghz")
        return cls(sms, clock, copy_gbs, INT8_PEAK_TOPS.get(key), FP16_PEAK_TFLOPS.get(key))


@dataclass(frozen=True)
class Work:
    """What a kernel must do: special-function ops (``mufu``), FP32-pipe ops (``fp32``), INT8 and FP16
    tensor-core ops (``int8``, ``fp16``: 2 per multiply-add) and HBM bytes read + written (``nbytes``)."""

    mufu: float = 0.0
    fp32: float = 0.0
    int8: float = 0.0
    fp16: float = 0.0
    nbytes: float = 0.0

    def __add__(self, other: Work) -> Work:
        """Two kernels' work, run one after the other (the floor of the sum bounds the pair's time)."""
        return Work(*(a + b for a, b in zip(astuple(self), astuple(other))))


def floor_ms(work: Work, gpu: Gpu) -> dict:
    """The least time ``work`` can take on ``gpu`` (ms), and what bounds it.

    Each resource alone needs ``amount / rate``:

        mufu_ms   = mufu   / (16 results/clk/SM x SMs x clock)       special-function unit
        fp32_ms   = fp32   / (128 lanes/clk/SM x SMs x clock)         FP32 pipe
        int8_ms   = int8   / INT8 tensor-core peak                     (2 ops per multiply-add)
        fp16_ms   = fp16   / FP16 tensor-core peak
        hbm_ms    = nbytes / measured copy bandwidth                   (read + written, as the copy counts)

    The resources run concurrently, so the kernel needs at least the largest of them:
    ``floor_ms = max(...)``, the binding one is ``bound``. It is a floor, not a prediction: it ignores
    latency, issue slots (every instruction, not only the counted ones, takes one of the 4 per clock
    per SM), occupancy and waves. A tensor-core term with an unknown peak is left out (None).

    Returns {"floor_ms", "bound", "mufu_ms", "fp32_ms", "int8_ms", "fp16_ms", "hbm_ms"}.
    """
    per_clock = gpu.sms * gpu.clock_ghz * 1e9  # SM-clocks per second
    terms = {
        "mufu_ms": work.mufu / (MUFU_PER_CLK_SM * per_clock) * 1e3,
        "fp32_ms": work.fp32 / (FP32_PER_CLK_SM * per_clock) * 1e3,
        "int8_ms": _tensor_ms(work.int8, gpu.int8_tops),
        "fp16_ms": _tensor_ms(work.fp16, gpu.fp16_tflops),
        "hbm_ms": work.nbytes / (gpu.copy_gbs * 1e9) * 1e3,
    }
    known = {k: v for k, v in terms.items() if v is not None}
    bound = max(known, key=known.get)
    return {"floor_ms": known[bound], "bound": bound.removesuffix("_ms"), **terms}


def _tensor_ms(ops: float, peak: float | None) -> float | None:
    """``ops`` at ``peak`` (tera-ops per second) in ms; 0 without ops, None (unknown) without a peak."""
    if not ops:
        return 0.0
    return None if peak is None else ops / (peak * 1e12) * 1e3


def with_floor(work: Work, gpu: Gpu, measured_ms: float) -> dict:
    """A record's floor fields: :func:`floor_ms` and ``floor_fraction`` = floor / ``measured_ms``."""
    floor = floor_ms(work, gpu)
    return {"floor": floor, "floor_fraction": floor["floor_ms"] / measured_ms}


# --------------------------------------------------------------------------------------------
# The work of Vim's kernels (per launch; B = batch, L = tokens, D = d_inner, N = d_state)
# --------------------------------------------------------------------------------------------


def scan_work(batch: int, d_inner: int, tokens: int, d_state: int, act_bytes: int, out_bytes: int = 1,
              directions: int = 2, softplus: bool = True, silu: bool = True) -> Work:
    """The bidirectional scan (both directions, their average, ``out_bytes`` per output element: 1 for
    the int8 codes of the quantize epilogue, the float output's size otherwise), or with ``directions`` 1
    a single-direction scan.

    Per (b, d, t) and direction, over its N states: ``exp(dt A)`` (one MUFU each), then 4 FP32 ops
    (dt * A, dA * h, + B (dt u), + h C: FMUL, FMUL, FFMA, FFMA). Per (b, d, t): softplus per direction
    (an exp and a log or reciprocal: 2 MUFU each; none with ``softplus`` False, dt_proj's epilogue took it)
    and SiLU(z) once for both (an exp and a reciprocal; none with ``silu`` False, in_proj's epilogue took
    it). Bytes: u, delta, B, C per direction and z in the
    activations' dtype, A (D, N), D and delta_bias (D,) per direction in fp32, the output once."""
    bdl = batch * d_inner * tokens
    elements = bdl * d_state * directions
    activations = directions * 2 * bdl + directions * 2 * batch * d_state * tokens + bdl
    reads = act_bytes * activations + 4 * directions * (d_inner * d_state + 2 * d_inner)
    mufu = elements + ((2 * directions if softplus else 0) + (2 if silu else 0)) * bdl
    return Work(mufu=mufu, fp32=4 * elements, nbytes=reads + out_bytes * bdl)


def linear_work(m: int, n: int, k: int, out_bytes: int, int8: bool = True, codes: int = 0) -> Work:
    """A linear (m, k) x (k, n): 2mnk tensor-core ops (INT8 with int8 operands, else FP16 with fp16 ones);
    bytes: activations and weights read once, the output written once, plus ``codes`` int8 columns of
    it quantized in the epilogue (x_proj's dt_proj input)."""
    operand = 1 if int8 else 2
    ops = 2 * m * n * k
    return Work(int8=ops if int8 else 0, fp16=0 if int8 else ops,
                nbytes=operand * (m * k + n * k) + out_bytes * m * n + m * codes)


def conv_work(batch: int, d_inner: int, tokens: int, act_bytes: int, width: int = 4, codes: bool = True) -> Work:
    """Depthwise conv1d + SiLU (+ its int8 codes): ``width`` FFMA and SiLU's exp and reciprocal per
    element; x read and u written in the activations' dtype, the codes written once."""
    elements = batch * d_inner * tokens
    return Work(mufu=2 * elements, fp32=width * elements,
                nbytes=elements * (2 * act_bytes + (1 if codes else 0)))


def norm_work(rows: int, d_model: int, act_bytes: int, codes: bool = True) -> Work:
    """Residual add + RMSNorm (+ its int8 codes): x read in the activations' dtype, the fp32 residual read
    and written, the normed row written (as int8 codes, or in the activations' dtype)."""
    return Work(mufu=rows, fp32=4 * rows * d_model,
                nbytes=rows * d_model * (act_bytes + 4 + 4 + (1 if codes else act_bytes)))


def vim_layer_work(d_model: int, d_state: int, tokens: int, batch: int, act_bytes: int, int8: bool) -> dict:
    """{kernel: Work} of one Vim block as the ptq4vm backend lowers it: INT8 (``int8``: int8 GEMMs,
    quantizing producers) or float (GEMMs in fp16, no codes). dt_rank = ceil(d_model / 16)."""
    d_inner, rank = 2 * d_model, -(-d_model // 16)
    m = batch * tokens
    return {
        "add_rmsnorm": norm_work(m, d_model, act_bytes, codes=int8),
        "in_proj": linear_work(m, 2 * d_inner, d_model, act_bytes, int8),
        "conv1d_silu x2": _times(conv_work(batch, d_inner, tokens, act_bytes, codes=int8), 2),
        "x_proj x2": _times(linear_work(m, rank + 2 * d_state, d_inner, act_bytes, int8, codes=rank if int8 else 0), 2),
        "dt_proj x2": _times(linear_work(m, d_inner, rank, act_bytes, int8), 2),
        "bidirectional_scan": scan_work(batch, d_inner, tokens, d_state, act_bytes, 1 if int8 else act_bytes),
        "out_proj": linear_work(m, d_model, d_inner, act_bytes, int8),
    }


def vim_floor_ms(depth: int, layer: dict, gpu: Gpu) -> dict:
    """The sum of the kernels' floors over ``depth`` blocks of ``layer`` ({kernel: Work}, one block):
    {"floor_ms": total, "per_kernel_ms": {kernel: depth x its floor}}. The patch embedding and the head
    are left out (a few microseconds)."""
    per_kernel = {name: depth * floor_ms(work, gpu)["floor_ms"] for name, work in layer.items()}
    return {"floor_ms": sum(per_kernel.values()), "per_kernel_ms": per_kernel}


def _times(work: Work, count: int) -> Work:
    return Work(*(count * getattr(work, f) for f in ("mufu", "fp32", "int8", "fp16", "nbytes")))
