"""``ptq4vm``: quantize, sweep, eval.

    ptq4vm quantize                      # the bundled digits Vim, W8A8 PTQ4VM
    ptq4vm quantize --preset w4a4 --method smoothquant --output q.pt --json metrics.json
    ptq4vm sweep                         # every method x every preset on the bundled model
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
from tabulate import tabulate

from .config import METHODS, PRESETS, QuantConfig
from .data.bundled import MODEL_NAME, bundled_model, load_digits_splits
from .evaluate import predict
from .models import create_vim, load_checkpoint, model_names
from .pipeline import Result, quantize_and_evaluate
from .progress import log, set_quiet
from .serialization import save


def _load_float_model(name: str, checkpoint: str | None) -> torch.nn.Module:
    if name == MODEL_NAME and checkpoint is None:
        return bundled_model()
    if name not in model_names():
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
    if checkpoint is None:
        raise ValueError(f"--checkpoint is required for {name} (weights are never downloaded)")
    return load_checkpoint(create_vim(name), checkpoint).eval()


def _data(args, model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(calibration images, test images, test labels) — the bundled digits set."""
    if getattr(model, "model_name", None) != MODEL_NAME or model.config["img_size"] != 8:
        raise ValueError(
            f"the bundled digits data fits only the {MODEL_NAME} model; this model is "
            f"{getattr(model, 'model_name', type(model).__name__)}"
        )
    splits = load_digits_splits()
    calib = splits["calib"].images
    if args.calib_images > len(calib):
        raise ValueError(f"--calib-images {args.calib_images}: the bundled set has {len(calib)} calibration images")
    return calib[: args.calib_images], splits["test"].images, splits["test"].labels


def _table(results: list[Result]) -> str:
    rows = [
        [r.method, r.preset.upper(), f"{r.quant_top1:.2f}", f"{r.drop:+.2f}", f"{r.sqnr_db:.1f}",
         f"{r.calibration_seconds:.1f}"]
        for r in results
    ]
    return tabulate(rows, headers=["method", "bits", "top-1 %", "drop", "SQNR dB", "calib s"], tablefmt="github")


def cmd_quantize(args) -> int:
    model = _load_float_model(args.model, args.checkpoint)
    calib, test_x, test_y = _data(args, model)
    config = QuantConfig.preset_config(args.preset, args.method)
    qmodel, result = quantize_and_evaluate(model, calib, test_x, test_y, config, batch_size=args.batch_size)
    print(f"{config.name}: float top-1 {result.float_top1:.2f}%, quantized top-1 {result.quant_top1:.2f}% "
          f"(drop {result.drop:+.2f}), logits SQNR {result.sqnr_db:.1f} dB, "
          f"calibration {result.calibration_seconds:.1f} s")
    if args.output:
        save(qmodel, args.output)
        print(f"saved {args.output}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, **result.to_dict()}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def cmd_sweep(args) -> int:
    model = _load_float_model(args.model, args.checkpoint)
    calib, test_x, test_y = _data(args, model)
    float_logits = predict(model, test_x, args.batch_size, desc="float eval")
    results = []
    for preset in args.presets:
        for method in args.methods:
            config = QuantConfig.preset_config(preset, method)
            _, result = quantize_and_evaluate(model, calib, test_x, test_y, config, float_logits, args.batch_size)
            log.info("%s: top-1 %.2f", config.name, result.quant_top1)
            results.append(result)
    print(f"{args.model}: float top-1 {results[0].float_top1:.2f}% on {len(test_y)} test images, "
          f"{len(calib)} calibration images")
    print(_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptq4vm", description="PTQ4VM quantization of Vision Mamba models")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--model", default=MODEL_NAME, help=f"model name (default: the bundled {MODEL_NAME})")
        p.add_argument("--checkpoint", help="float checkpoint ({'model': state_dict} or a state dict)")
        p.add_argument("--calib-images", type=int, default=256, help="calibration images (default 256)")
        p.add_argument("--batch-size", type=int, default=64)
        p.add_argument("--json", help="write the metrics as JSON here")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--verbose", action="store_true", help="log per-block JLSS losses")

    q = sub.add_parser("quantize", help="calibrate, convert, evaluate and save one quantized model")
    common(q)
    q.add_argument("--preset", default="w8a8", choices=sorted(PRESETS))
    q.add_argument("--method", default="ptq4vm", choices=list(METHODS))
    q.add_argument("--output", help="save the quantized model here (ptq4vm_fx.load reads it)")
    q.set_defaults(func=cmd_quantize)

    s = sub.add_parser("sweep", help="every method x every preset, one table")
    common(s)
    s.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    s.add_argument("--presets", nargs="+", default=list(PRESETS), choices=sorted(PRESETS))
    s.set_defaults(func=cmd_sweep)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_quiet(args.quiet)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, TypeError) as exc:
        print(f"ptq4vm: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
