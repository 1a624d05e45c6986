"""Time the weight methods' calibration (and its peak memory) on Vim-T at 224 px, random weights.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/time_vq_calibration.py [--depth 1] [--images 8]
        [--methods rtn vq_kmeans vq_convex vimvq] [--presets w2a16] [--json out.json]

``timm.create_model("vim_tiny_patch16_224", depth=--depth)`` with random weights and ``--images`` random
224 px images, then prepare / calibration / convert per method and preset (the default VQ settings).
Prints the whole time and peak RSS (measure.py), the seconds of each block (the pass's own clock:
inputs, k-means, calibration, losses) and the full 24-block model extrapolated as: the whole time plus
(24 - depth) times the mean block time. The per-block work does not depend on depth (every Vim-T block
has the same shapes); the rest (capture, the stem, evaluation of earlier blocks for each block's
inputs, which grows with depth) is counted once, so the extrapolation is a lower bound.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import timm
import torch

import ptq4vm_fx
from ptq4vm_fx.config import PRESETS, WEIGHT_METHODS, compatible
from ptq4vm_fx.pipeline import calibrate_and_convert

FULL_DEPTH = 24


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--methods", nargs="+", default=list(WEIGHT_METHODS), choices=list(WEIGHT_METHODS))
    parser.add_argument("--presets", nargs="+", default=["w2a16"], choices=sorted(PRESETS))
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = timm.create_model("vim_tiny_patch16_224", depth=args.depth).eval()
    images = torch.randn(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    rows = []
    for preset in args.presets:
        for method in (m for m in args.methods if compatible(preset, m)):
            config = ptq4vm_fx.QuantConfig.preset_config(preset, method)
            qmodel, measured = calibrate_and_convert(model, images, config, batch_size=args.images)
            blocks = [s["seconds"] for s in qmodel.meta["block_stats"].values()]
            row = {"method": method, "preset": preset, "depth": args.depth, "images": args.images,
                   "threads": torch.get_num_threads(), **measured.to_dict(), "block_seconds": blocks,
                   "vim_t_24_blocks_seconds": measured.seconds + (FULL_DEPTH - args.depth) * statistics.mean(blocks)}
            rows.append(row)
            print(f"{config.name}: {measured.seconds:.1f} s for {args.depth} block(s) on {args.images} images "
                  f"(blocks {', '.join(f'{s:.1f}' for s in blocks)} s), peak RSS {measured.peak_rss_mib:.0f} MiB; "
                  f"24 blocks: >= {row['vim_t_24_blocks_seconds'] / 60:.1f} min", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
