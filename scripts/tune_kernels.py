"""Sweep launch configurations of the scan kernel and report the INT8 GEMM autotuner's choices at
Vim-T/S/B shapes, next to the fixed tiles of ``autotune=False`` (GPU only). Prints a table per
kernel and writes the numbers as JSON.

    python scripts/tune_kernels.py --out tune.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from functools import partial
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.shapes import MODELS, vim_shape  # noqa: E402
from benchmarks.test_kernels import graphed_ms, int8_fused, linear_problem, scan_bytes, scan_problem  # noqa: E402
from ptq4vm_fx.kernels import int8_linear as gemm  # noqa: E402
from ptq4vm_fx.kernels import selective_scan as scan  # noqa: E402
from ptq4vm_fx.lowering import fused_ops  # noqa: E402


def sweep_scan(cases) -> list[dict]:
    """The bidirectional scan as a lowered Vim launches it (codes only), over launch shapes; at the
    default shape also two variants of the bidirectional kernel: A's pointer specialized on its
    alignment (the other register layout, see the kernel module's docstring), its registers
    capped at 96 (BIDIRECTIONAL_MAXNREG) and both directions' A held in registers (BIDIRECTIONAL_A_ROWS off:
    130 registers, 15 programs an SM, in place of reading A's rows each step at 80, 25 an SM)."""
    rows = []
    default, kernel, maxnreg = scan._scan_config, scan._bidirectional_scan_kernel, scan.BIDIRECTIONAL_MAXNREG
    a_rows = scan.BIDIRECTIONAL_A_ROWS
    variants = {"A pointer specialized on alignment": ("_bidirectional_scan_kernel", triton.jit(kernel.fn)),
                "registers capped at 96": ("BIDIRECTIONAL_MAXNREG", 96),
                "A held in registers": ("BIDIRECTIONAL_A_ROWS", False)}
    for model, batch in cases:
        fwd, bwd, z, qparams = scan_problem(model, batch, torch.float32)
        nbytes = scan_bytes(fwd, bwd, z, qparams)
        chosen = default(batch, vim_shape(model).d_inner, vim_shape(model).d_state)
        launch = partial(fused_ops.bidirectional_scan_quantize, *fwd, *bwd, z, True, *qparams, False)
        for block_d, warps in itertools.product((8, 16, 32, 64, 128), (1, 2, 4, 8)):
            if block_d * 16 < warps * 32:
                continue
            scan._scan_config = lambda *_, bd=block_d, w=warps: (bd, 16, w)
            try:
                ms = graphed_ms(launch)
            finally:
                scan._scan_config = default
            rows.append({"model": model, "batch": batch, "block_d": block_d, "warps": warps, "ms": ms,
                         "gbs": nbytes / ms / 1e6, "default": (block_d, 16, warps) == tuple(chosen)})
        for variant, (attr, replacement) in variants.items():
            setattr(scan, attr, replacement)
            try:
                ms = graphed_ms(launch)
            finally:
                scan._bidirectional_scan_kernel, scan.BIDIRECTIONAL_MAXNREG = kernel, maxnreg
                scan.BIDIRECTIONAL_A_ROWS = a_rows
            rows.append({"model": model, "batch": batch, "block_d": chosen[0], "warps": chosen[2], "ms": ms,
                         "gbs": nbytes / ms / 1e6, "default": False, "variant": variant})
            print(f"scan {model} b{batch}: default launch, {variant}: {ms:.3f} ms", flush=True)
        best = min((r for r in rows if r["model"] == model and r["batch"] == batch and "variant" not in r),
                   key=lambda r: r["ms"])
        dflt = [r for r in rows if r["model"] == model and r["batch"] == batch and r["default"]]
        print(f"scan {model} b{batch}: best block_d={best['block_d']} warps={best['warps']} {best['ms']:.3f} ms "
              f"{best['gbs']:.0f} GB/s; default {chosen}: {dflt[0]['ms'] if dflt else float('nan'):.3f} ms", flush=True)
    return rows


def gemm_choices(batches) -> list[dict]:
    rows = []
    for model, linear, batch in itertools.product(MODELS, ("in_proj", "x_proj", "dt_proj", "out_proj"), batches):
        p = linear_problem(model, linear, batch)
        ms = graphed_ms(partial(int8_fused, p))
        fixed_ms = graphed_ms(partial(int8_fused, p, False))  # the tiles of options={"autotune": False}
        raw = None
        if p["k"] % 8 == 0 and p["n"] % 8 == 0:
            raw = graphed_ms(partial(torch._int_mm, p["xq"].reshape(-1, p["k"]), p["wq"].t()))
        cfg = gemm._int8_linear_kernel_tuned.best_config
        tops = 2 * p["m"] * p["n"] * p["k"] / ms / 1e9
        rows.append({"model": model, "linear": linear, "batch": batch, "mnk": (p["m"], p["n"], p["k"]), "ms": ms,
                     "fixed_tiles_ms": fixed_ms, "int_mm_raw_ms": raw, "tops": tops, "config": str(cfg)})
        print(f"gemm {vim_shape(model).short}/{linear}/b{batch} mnk={rows[-1]['mnk']}: {ms * 1e3:.1f} us "
              f"{tops:.0f} TOPS (fixed tiles {fixed_ms * 1e3:.1f} us, raw _int_mm "
              f"{'-' if raw is None else f'{raw * 1e3:.1f}'} us) {cfg}", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("tune.json"))
    parser.add_argument("--what", choices=("scan", "gemm", "both"), default="both")
    args = parser.parse_args()
    result = {"gpu": torch.cuda.get_device_name(0)}
    if args.what in ("gemm", "both"):
        result["gemm"] = gemm_choices((32, 128))
    if args.what in ("scan", "both"):
        result["scan"] = sweep_scan([(MODELS[0], 32), (MODELS[1], 128), (MODELS[2], 128)])
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
