"""Train a bundled digits model and write its checkpoint (ptq4vm_fx/data/<model>.pt).

    .venv/bin/python scripts/train_digits.py [--model vim_digits] [--epochs N]

Models: vim_digits (the default), vmamba_digits, local_vssm_digits, local_vim_digits. Fixed seeds: a
rerun on the same machine gives the same training up to float rounding (local_vssm_digits retrained:
weights within 1e-5 of the committed ones, the same top-1). Each takes 3.5 to 6.7 minutes on the shared
2-core machine with OMP_NUM_THREADS=1 (README, "The bundled models and data"). --model-kwargs and
--weight-decay train a variant (README, "VMamba: `vmamba_digits`": the candidates for a quantization-
sensitive VMamba); give it --output so the bundled checkpoint stays.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ptq4vm_fx.cli import model_kwarg
from ptq4vm_fx.data.bundled import BUNDLED_MODELS, MODEL_NAME, checkpoint_path
from ptq4vm_fx.data.digits import load_digits_splits
from ptq4vm_fx.models import create_model

EPOCHS = {"vim_digits": 40, "vmamba_digits": 40, "local_vssm_digits": 36, "local_vim_digits": 40}


def shift_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to one pixel (zero = background after normalisation is x.min())."""
    padded = F.pad(x, (1, 1, 1, 1), value=float(x.min()))
    dy, dx = torch.randint(0, 3, (2,), generator=gen).tolist()
    return padded[..., dy : dy + 8, dx : dx + 8]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=MODEL_NAME, choices=BUNDLED_MODELS)
    parser.add_argument("--epochs", type=int, help="default: 40 (local_vssm_digits: 36)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    parser.add_argument(
        "--model-kwargs",
        nargs="*",
        type=model_kwarg,
        default=[],
        metavar="KEY=VALUE",
        help="override the model configuration, e.g. forward_type='v05'",
    )
    parser.add_argument("--output", help="default: ptq4vm_fx/data/<model>.pt")
    args = parser.parse_args()
    epochs = args.epochs or EPOCHS[args.model]
    output = args.output or checkpoint_path(args.model)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    data = load_digits_splits()
    model = create_model(args.model, **dict(args.model_kwargs))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = epochs * -(-len(data["train"].labels) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    start = time.perf_counter()
    for epoch in range(epochs):
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
        print(f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f} test top-1 {100 * acc:.2f}% "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    torch.save({"model": model.state_dict(), "args": {"model": args.model, **model.config}}, output)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
