"""The scan kernels' sm_90 code keeps the register layout their module docstring promises: with a
warp per 32 channels the token loop reduces over the N states in registers (no warp shuffles, no
shared memory, no barrier but the bidirectional kernel's one at the half-way token), within its
register cap without spilling, and its token step stays short (softplus without an accurate log,
exp2 without subnormal fix-ups); the INT8 GEMM's main loop runs on tensor cores, pipelined.
Compiled for an H100 without a GPU by scripts/kernel_codegen.py, specialized as a real launch is,
in a subprocess (it must not be interpreted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kernel_codegen.py"
DIRECTIONS = {"_selective_scan_kernel": 1, "_bidirectional_scan_kernel": 2}
# SASS instructions per token step (both halves of the bidirectional loop), with triton 3.8: about 5%
# over what the kernels compile to (186 / 450 in fp32, 220 / 529 in fp16). With softplus on tl.log
# and SiLU on tl.exp they were 215 / 506 and 251 / 585.
STEP_BUDGET = {"fp32": {"_selective_scan_kernel": 195, "_bidirectional_scan_kernel": 470},
               "fp16": {"_selective_scan_kernel": 232, "_bidirectional_scan_kernel": 552}}


def codegen(block_d: int, warps: int, dtype: str = "fp32") -> dict:
    run = subprocess.run([sys.executable, str(SCRIPT), "--block-d", str(block_d), "--warps", str(warps),
                          "--dtype", dtype], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def one_channel_per_thread(request):
    """The Vim launch's code, activations in fp32 (as convert produces the model) or fp16 (the model
    moved to half precision)."""
    return request.param, codegen(32, 1, request.param)


@pytest.mark.parametrize("kernel", list(DIRECTIONS))
def test_one_channel_per_thread_reduces_in_registers(one_channel_per_thread, kernel):
    counts = one_channel_per_thread[1][kernel]
    assert counts["shfl"] == 0
    assert counts["ld_shared"] == counts["st_shared"] == 0
    assert counts["bar_sync"] == DIRECTIONS[kernel] - 1  # the bidirectional kernel's half-way barrier
    # 16 states per thread and direction, plus softplus and SiLU: the code really is the scan
    assert counts["ex2"] >= 16 * DIRECTIONS[kernel]


@pytest.mark.parametrize("kernel", list(DIRECTIONS))
def test_token_step_is_short_and_within_registers(one_channel_per_thread, kernel):
    dtype, result = one_channel_per_thread
    counts = result[kernel]
    assert counts["ex2_subnormal"] == 0  # every exp2 flushes them: no range fix-up around the MUFU
    assert counts["stack_bytes"] == 0  # the bidirectional kernel's cap (96) spills nothing
    assert counts["registers"] <= (96 if kernel == "_bidirectional_scan_kernel" else 64)
    assert 0 < counts["loop_instructions"] <= STEP_BUDGET[dtype][kernel]


def test_int8_gemm_main_loop_is_pipelined_on_tensor_cores(one_channel_per_thread):
    """The INT8 GEMM at Vim-S's in_proj (fixed tiles, the launch's specialization): warpgroup MMAs
    fed by asynchronous copies (without 16-byte alignment known, Triton falls back to synchronous
    loads and does not pipeline the loop)."""
    for variant in ("_int8_linear_kernel", "_int8_linear_kernel persistent"):  # also the tile-walking launch
        counts = one_channel_per_thread[1][variant]
        assert counts["wgmma"] > 0 and counts["cp_async"] > 0, variant


def test_channels_split_over_threads_need_few_shuffles():
    """8 channels per warp: each channel's 16 states sit on 4 threads, two shuffle stages per sum
    (and the counts above are not zero by accident)."""
    counts = codegen(8, 1)
    for kernel, directions in DIRECTIONS.items():
        assert counts[kernel]["shfl"] == 2 * directions
        assert counts[kernel]["ld_shared"] == 0
