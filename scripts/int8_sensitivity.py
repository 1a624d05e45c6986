"""How far apart two faithful INT8 runs can land: a random-weight Vim (W8A8, pts_smooth, calibrated
on random images) compiled with the ptq4vm backend against its eager run, next to the eager INT8
model against itself with the input moved by a relative 1e-6 (and the float model likewise). Runs
on the CPU (fused ops on their references) or, with --device cuda, on the Triton kernels.

    python scripts/int8_sensitivity.py --model vim_small_patch16_224 --batch 2
"""

from __future__ import annotations

import argparse
import time

import torch

import ptq4vm_fx
from ptq4vm_fx.evaluate import sqnr_db
from ptq4vm_fx.models import create_vim


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vim_small_patch16_224")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--calib", type=int, default=8, help="random calibration images")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    start = time.perf_counter()
    torch.manual_seed(0)
    model = create_vim(args.model).eval().to(args.device)
    size = model.patch_embed.img_size
    calib = torch.randn(args.calib, 3, *size, device=args.device)
    prepared = ptq4vm_fx.prepare(model, calib[:1], ptq4vm_fx.QuantConfig.preset_config("w8a8", "pts_smooth"))
    with torch.no_grad():
        prepared(calib)
    qmodel = ptq4vm_fx.convert(prepared)
    x = torch.randn(args.batch, 3, *size, device=args.device)
    moved = x * (1 + 1e-6 * torch.randn_like(x))
    with torch.no_grad():
        eager = qmodel(x)
        rows = {
            "float model vs input moved by 1e-6": sqnr_db(model(x), model(moved)),
            "eager INT8 vs input moved by 1e-6": sqnr_db(eager, qmodel(moved)),
            "compiled INT8 vs eager INT8": sqnr_db(eager, torch.compile(qmodel, backend="ptq4vm")(x)),
        }
    for name, db in rows.items():
        print(f"{name:38s} {db:6.1f} dB SQNR")
    print(f"({args.model}, batch {args.batch}, {args.device}, {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
