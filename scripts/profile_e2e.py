"""Where the time of one forward goes (GPU only; docs/design.md section 8): the CUDA kernels of the INT8
model compiled with the ptq4vm backend (float parts in fp32, and in fp16) and of the FP16 model
compiled by Inductor, per kernel and grouped by what they compute, next to each forward's wall time
(their difference is the host's launch overhead, which CUDA graphs remove). On the host side: the
CPU time of each custom op's call (``ptq4vm::*`` and ``ptq4vm_fused::*``: dispatch, checks, Triton
launch) and the CUDA synchronizations per forward (any one of them stops the host from running ahead
of the GPU).

    python scripts/profile_e2e.py --model vim_small_patch16_224 --batch 128 --out profile.json

The models are the end-to-end benchmark's (benchmarks/test_end_to_end.py: random weights, INT8
calibrated with "pts_smooth"; the FP16 model's scan, ptq4vm::selective_scan, runs the same Triton
kernel: the op's CUDA implementation).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results import environment  # noqa: E402
from benchmarks.test_end_to_end import HALF_INPUTS, build_models  # noqa: E402
from benchmarks.timing import median_ms  # noqa: E402

VARIANTS = ("int8_ptq4vm", "int8_fp16_ptq4vm", "fp16_inductor")
# (category, substrings of the kernel name), first match wins
CATEGORIES = (
    ("scan", ("_bidirectional_scan_kernel", "_selective_scan_kernel")),
    ("int8 gemm", ("_int8_linear_kernel",)),
    ("quantizing producers", ("_add_rmsnorm_quantize_kernel", "_conv1d_silu_quantize_kernel",
                              "_quantize_per_token_kernel")),
    ("cuBLAS / CUTLASS gemm", ("gemm", "cutlass", "xmma", "cublas", "sm90_", "sm80_")),
    ("conv (cuDNN)", ("conv", "cudnn")),
    ("Inductor-generated", ("triton_",)),
)


def category(kernel: str) -> str:
    """The CATEGORIES name of a CUDA kernel (by its name), "other" when none matches."""
    lowered = kernel.lower()
    return next((name for name, keys in CATEGORIES if any(k.lower() in lowered for k in keys)), "other")


def profile(fn, runs: int) -> tuple[dict[str, tuple[float, int]], dict[str, tuple[float, int]], float]:
    """Over ``runs`` profiled calls of ``fn``: ({kernel: (device ms, launches)} per forward,
    {ptq4vm / ptq4vm_fused op: (host ms, calls)} per forward, CUDA synchronizations per forward)."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(runs):
            fn()
    kernels, ops, syncs = {}, {}, 0
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", 0)
        if device_us > 0:
            kernels[event.key] = (device_us / 1e3 / runs, event.count // runs)
        if event.key.startswith(("ptq4vm::", "ptq4vm_fused::")):
            ops[event.key] = (event.cpu_time_total / 1e3 / runs, event.count // runs)
        if "Synchronize" in event.key:  # cudaStreamSynchronize, cudaDeviceSynchronize, ...
            syncs += event.count
    return kernels, ops, syncs / runs


def summarize(kernels: dict[str, tuple[float, int]], ops: dict[str, tuple[float, int]], syncs: float,
              top: int) -> dict:
    """Totals per kernel category, the ``top`` kernels by device time, the custom ops' host time."""
    by_category: dict[str, float] = defaultdict(float)
    for name, (ms, _) in kernels.items():
        by_category[category(name)] += ms
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:top]
    return {"kernel_ms": sum(ms for ms, _ in kernels.values()),
            "launches": sum(n for _, n in kernels.values()),
            "by_category_ms": dict(sorted(by_category.items(), key=lambda kv: -kv[1])),
            "top_kernels": [{"name": name, "ms": ms, "launches": n} for name, (ms, n) in ranked],
            "custom_ops_host_ms": sum(ms for ms, _ in ops.values()),
            "custom_ops_host": {name: {"ms": ms, "calls": n, "us_per_call": ms * 1e3 / max(n, 1)}
                                for name, (ms, n) in sorted(ops.items())},
            "cuda_synchronizations": syncs}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vim_small_patch16_224")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5, help="profiled forwards per variant (default 5)")
    parser.add_argument("--top", type=int, default=20, help="kernels listed per variant (default 20)")
    parser.add_argument("--out", type=Path, default=Path("profile.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("profile_e2e.py needs a CUDA GPU (CPU timings are not speed results)")
    models = build_models(args.model)
    x = torch.randn(args.batch, 3, *models["img_size"], device="cuda")
    result = {"environment": environment(), "model": args.model, "batch": args.batch, "variants": {}}
    with torch.no_grad():
        for variant in VARIANTS:
            xi = x.half() if variant in HALF_INPUTS else x
            wall = median_ms(lambda v=variant, xi=xi: models[v](xi), warmup=3, runs=50, flush_l2=False)
            summary = summarize(*profile(lambda v=variant, xi=xi: models[v](xi), args.runs), args.top)
            result["variants"][variant] = {"wall_ms": wall, **summary}
            print(f"{variant}: wall {wall:.2f} ms, kernels {summary['kernel_ms']:.2f} ms in {summary['launches']} "
                  f"launches, custom ops' host time {summary['custom_ops_host_ms']:.2f} ms, "
                  f"{summary['cuda_synchronizations']:g} synchronizations; "
                  + ", ".join(f"{k} {v:.2f}" for k, v in summary["by_category_ms"].items()), flush=True)
            args.out.write_text(json.dumps(result, indent=1))  # after each variant: a cut-short run keeps it


if __name__ == "__main__":
    main()
