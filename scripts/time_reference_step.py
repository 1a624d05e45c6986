"""Time one training step (forward + backward) of a Vim through the CPU reference scan.

    .venv/bin/python scripts/time_reference_step.py [--batch 64] [--img-size 8 --patch 2]

Defaults to the bundled digits model's shape (17 tokens). Prints the median of --repeats runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ptq4vm_fx.models import create_vim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--img-size", type=int, default=8)
    parser.add_argument("--patch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_vim("vim_digits", img_size=args.img_size, patch_size=args.patch, stride=args.patch)
    x = torch.randn(args.batch, 1, args.img_size, args.img_size)
    forward, step = [], []
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        loss = model(x).logsumexp(1).mean()
        mid = time.perf_counter()
        loss.backward()
        forward.append(mid - start)
        step.append(time.perf_counter() - start)
    tokens = model.num_tokens
    print(f"vim_digits shape, {tokens} tokens, batch {args.batch}, {torch.get_num_threads()} threads: "
          f"forward {statistics.median(forward[1:]) * 1e3:.0f} ms, "
          f"forward+backward {statistics.median(step[1:]) * 1e3:.0f} ms (median of {args.repeats})")


if __name__ == "__main__":
    main()
