"""Time PTQ4VM calibration on the CPU: one Vim block's training step, and Vim-T's calibration per block.

    .venv/bin/python scripts/time_calibration.py block [--batch 16] [--repeats 5]
    .venv/bin/python scripts/time_calibration.py vim [--depth 2] [--images 16] [--device cuda]

``block``: one Vim-T block (d_model 192, 197 tokens: 224 px, patch 16), random weights, forward and
backward of a sum of its outputs at ``--batch``: the step JLSS repeats (the two scans dominate it).
Prints the medians of ``--repeats`` runs after one warm-up (wall and process CPU time).

``vim``: ``timm.create_model("vim_tiny_patch16_224", depth=--depth)`` with random weights, ``--images``
random 224 px images, ``ptq4vm_fx.prepare`` / ``convert`` with the default config (W8A8 PTQ4VM); prints
the whole prepare + calibration + convert time and, per block, the seconds in grid search, in JLSS
training and in the rest of the block's JLSS pass (its inputs, targets and losses). Per block times
extrapolate to a full model; the rest (capture, packing) does not grow with depth. ``--device cuda``
calibrates on the GPU (the scan's forward there is the Triton kernel, its backward the reference's;
section times are wall times and include waiting for the GPU only where the code synchronizes).

Both set one thread (``--threads``) unless told otherwise. On a shared machine wall time includes waiting
for a core; the process CPU time printed beside it does not: repeat and take medians.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import timm
import torch

import ptq4vm_fx
from ptq4vm_fx.models.vim import Block
from ptq4vm_fx.passes import jlss


def time_block(batch: int, repeats: int) -> None:
    torch.manual_seed(0)
    block = Block(192)
    hidden, residual = torch.randn(batch, 197, 192), torch.randn(batch, 197, 192)
    forward, step, cpu = [], [], []
    for _ in range(repeats + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        out, res = block(hidden, residual)
        mid = time.perf_counter()
        (out.sum() + res.sum()).backward()
        forward.append(mid - start)
        step.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    print(f"Vim-T block, 197 tokens, batch {batch}, {torch.get_num_threads()} thread(s): "
          f"forward {statistics.median(forward[1:]) * 1e3:.0f} ms, "
          f"forward+backward {statistics.median(step[1:]) * 1e3:.0f} ms "
          f"(process CPU time {statistics.median(cpu[1:]) * 1e3:.0f} ms; medians of {repeats})")


def _timed(fn, totals: dict, key: str):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - start

    return wrapper


def time_vim(depth: int, images: int, device: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model("vim_tiny_patch16_224", depth=depth).eval().to(device)
    calib = torch.randn(images, 3, 224, 224).to(device)
    totals: dict[str, float] = defaultdict(float)
    jlss.grid_search_block = _timed(jlss.grid_search_block, totals, "grid search")
    jlss.train_block = _timed(jlss.train_block, totals, "JLSS training")
    jlss.run_jlss = _timed(jlss.run_jlss, totals, "JLSS pass")
    ptq4vm_fx.api.run_jlss = jlss.run_jlss
    start, cpu_start = time.perf_counter(), time.process_time()
    prepared = ptq4vm_fx.prepare(model, calib[:1])
    with torch.no_grad():
        for batch in calib.split(64):
            prepared(batch)
    ptq4vm_fx.convert(prepared)
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    rest = totals["JLSS pass"] - totals["grid search"] - totals["JLSS training"]
    where = f"{torch.cuda.get_device_name(device)}" if device.startswith("cuda") else \
        f"{torch.get_num_threads()} thread(s)"
    print(f"Vim-T 224 px, depth {depth}, {images} images, {where}: "
          f"prepare + calibration + convert {total:.1f} s; per block: grid search "
          f"{totals['grid search'] / depth:.2f} s, JLSS training {totals['JLSS training'] / depth:.2f} s, "
          f"other JLSS work {rest / depth:.2f} s, total {totals['JLSS pass'] / depth:.2f} s; "
          f"outside JLSS {total - totals['JLSS pass']:.1f} s; process CPU time {cpu:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["block", "vim"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="vim: where the model and images live (cpu, cuda)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.what == "block":
        time_block(args.batch, args.repeats)
    else:
        time_vim(args.depth, args.images, args.device)


if __name__ == "__main__":
    main()
