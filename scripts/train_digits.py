"""Train the bundled digits Vim and write ptq4vm_fx/data/vim_digits.pt.

    .venv/bin/python scripts/train_digits.py [--epochs 40]

Deterministic on a given machine (fixed seeds, single thread order); about 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ptq4vm_fx.data.bundled import CHECKPOINT, MODEL_NAME
from ptq4vm_fx.data.digits import load_digits_splits
from ptq4vm_fx.models import create_vim


def shift_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to one pixel (zero = background after normalisation is x.min())."""
    padded = F.pad(x, (1, 1, 1, 1), value=float(x.min()))
    dy, dx = torch.randint(0, 3, (2,), generator=gen).tolist()
    return padded[..., dy : dy + 8, dx : dx + 8]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--output", default=str(CHECKPOINT))
    args = parser.parse_args()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    data = load_digits_splits()
    model = create_vim(MODEL_NAME)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * -(-len(data["train"].labels) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(data["train"].labels), generator=gen)
        for idx in order.split(args.batch_size):
            x = shift_augment(data["train"].images[idx], gen)
            loss = F.cross_entropy(model(x), data["train"].labels[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model(data["test"].images).argmax(1) == data["test"].labels).float().mean().item()
        print(f"epoch {epoch + 1}/{args.epochs} loss {loss.item():.3f} test top-1 {100 * acc:.2f}% "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    torch.save({"model": model.state_dict(), "args": {"model": MODEL_NAME, **model.config}}, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
