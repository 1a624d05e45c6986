"""ptq4vm: quantize, sweep, eval, report.

    ptq4vm quantize                      # the bundled digits Vim, W8A8 PTQ4VM, bundled digits data
    ptq4vm quantize --model vmamba_digits  # the bundled VMamba (also local_vssm_digits, local_vim_digits)
    ptq4vm quantize --preset w4a4 --method smoothquant --output q.pt --json metrics.json
    ptq4vm quantize --method vimvq --preset w2a16   # 2-bit vector-quantized weights (ViM-VQ)
    ptq4vm sweep                         # every integer method x every preset on the bundled model
    ptq4vm sweep --methods rtn vq_kmeans vq_convex vimvq --presets w3a16 w2a16 w1a16
    ptq4vm eval --quantized q.pt         # top-1/top-5 of a saved quantized model
    ptq4vm report q.pt --output report/  # per-layer table, plots, HTML page

Real models and data: --model vim_tiny_patch16_224 --checkpoint vim_t.pth --data /imagenet.
--data DIR is an image folder in the ImageNet layout: with DIR/train and DIR/val, calibration
images are drawn from DIR/train and evaluation uses DIR/val; otherwise DIR serves both. Without
--data the bundled digits set is used (it fits only the bundled models). Evaluation runs on
several processes or GPUs with: torchrun --nproc_per_node N -m ptq4vm_fx.cli eval ...
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import sys

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from .. import distributed
from ..config import CHOICES, METHODS, PRESETS, PTQ_METHODS, WEIGHT_METHODS
from ..data.bundled import BUNDLED_MODELS, MODEL_NAME
from ..errors import InputError
from ..models.family import check_overrides
from ..progress import log, set_quiet
from . import eval_cmd, quantize, report, sweep
from .threads import AUTO, parse_threads, resolve_threads

__all__ = ["build_parser", "main"]


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def model_kwarg(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` (VALUE a Python literal) -> (key, value): an argparse type for --model-kwargs (here and
    scripts/train_digits.py)."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected KEY=VALUE with VALUE a Python literal (a number, True, ...)"
        ) from None


def _common(p: argparse.ArgumentParser, model_default: str | None, model_help: str) -> None:
    p.add_argument("--model", default=model_default,
                   help=f"model name (default: {model_help}; bundled: {', '.join(BUNDLED_MODELS)})")
    p.add_argument("--checkpoint", help="float checkpoint ({'model': state_dict}, as hustvl/Vim ships)")
    p.add_argument(
        "--model-kwargs",
        nargs="*",
        type=model_kwarg,
        default=[],
        metavar="KEY=VALUE",
        help="override the model configuration, e.g. num_classes=100 img_size=224",
    )
    p.add_argument(
        "--data",
        help="ImageNet-layout image folder: DIR/train + DIR/val, or DIR/<class>/<image> (default: the bundled "
        "digits set)",
    )
    p.add_argument("--batch-size", type=_count(1), default=64)
    p.add_argument(
        "--workers",
        type=_count(0),
        default=min(8, os.cpu_count() or 1),
        help="data loading processes for --data (default: min(8, CPUs))",
    )
    p.add_argument(
        "--threads",
        type=parse_threads,
        default=AUTO,
        help="CPU threads for PyTorch's operators (default: auto: PyTorch's default capped at the cores idle at "
        "start, the CPUs minus the 1-minute load average; more threads than idle cores stall each other)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--verbose", action="store_true", help="log per-block JLSS losses and timings")


def _calibration(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib-images", type=_count(1), default=256, help="calibration images (default 256)")
    p.add_argument("--json", help="write the metrics as JSON here")
    p.add_argument("--device", default="cpu", help="where calibration, JLSS and evaluation run: cpu (default) or cuda")
    p.add_argument("--recipe", choices=list(CHOICES["recipe"]), default="default",
                   help="ptq4vm's settings: default (this project's), or official (the public PTQ4VM code's: "
                        "docs/design.md section 5)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptq4vm",
        description="PTQ4VM quantization of Vision Mamba models",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="calibrate, convert, evaluate and save one quantized model")
    _common(q, MODEL_NAME, f"the bundled {MODEL_NAME}")
    _calibration(q)
    q.add_argument("--preset", choices=sorted(PRESETS), help="default: w8a8, w2a16 for a weight method")
    q.add_argument("--method", default="ptq4vm", choices=list(METHODS))
    q.add_argument("--output", help="save the quantized model here (ptq4vm_fx.load reads it)")
    q.set_defaults(func=quantize.run)

    s = sub.add_parser("sweep", help="every method x every preset, one table")
    _common(s, MODEL_NAME, f"the bundled {MODEL_NAME}")
    _calibration(s)
    s.add_argument("--methods", nargs="+", default=list(PTQ_METHODS), choices=list(METHODS),
                   help=f"default: the integer methods; the weight methods are {' '.join(WEIGHT_METHODS)}")
    s.add_argument("--presets", nargs="+", choices=sorted(PRESETS),
                   help="default: every preset of the methods (each method runs only its own presets)")
    s.set_defaults(func=sweep.run)

    e = sub.add_parser("eval", help="top-1/top-5 of a float and/or a quantized model (torchrun for several processes)")
    _common(e, None, f"the quantized file's model, else the bundled {MODEL_NAME}")
    e.add_argument("--quantized", help="a quantized model file; the float model is evaluated too with --checkpoint")
    e.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda or cuda:N (default: cuda when available; torchrun: one GPU per process)",
    )
    e.add_argument(
        "--compile",
        action="store_true",
        help="also run the quantized model compiled by torch.compile(backend='ptq4vm') (Triton INT8 kernels "
        "on CUDA) and compare its logits with the eager quantized model's",
    )
    e.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float16", "bfloat16"],
        help="dtype of the float parts (norms, convs, scans; the whole float model); a quantized model "
        "keeps its scales in fp32 (default: float32)",
    )
    e.add_argument("--json", help="write the metrics as JSON here")
    e.set_defaults(func=eval_cmd.run)

    r = sub.add_parser("report", help="per-layer table, plots and an HTML page for a quantized model")
    r.add_argument("quantized", help="a quantized model file (written by quantize --output)")
    _common(r, None, "the quantized file's model")
    r.add_argument(
        "--images",
        type=_count(1),
        default=128,
        help="analyse up to this many evaluation images, drawn with a fixed seed (default 128)",
    )
    r.add_argument("--block", type=int, help="block to plot (default: the worst after JLSS, else the middle one)")
    r.add_argument("--output", default="report", help="output folder (default: report/)")
    r.set_defaults(func=report.run)
    return parser


def _error_text(exc: InputError) -> str:
    """The message of ``exc``; for one re-raised from a DataLoader worker, the worker's message."""
    text = str(exc)
    if "Original Traceback" in text:
        return text.strip().splitlines()[-1].partition(": ")[2]
    return text


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code. Bad input (an :class:`InputError`) prints one line
    ``ptq4vm: error: <message>`` to stderr and returns 2; every other exception propagates with its
    traceback (a bug or an environment failure, e.g. CUDA's). The command runs on ``--threads`` CPU
    threads (:mod:`.threads`); the process's previous setting is restored after."""
    args = build_parser().parse_args(argv)
    args.model_kwargs = dict(args.model_kwargs)
    logging.basicConfig(format="%(message)s")
    log.setLevel(logging.INFO if args.verbose else logging.WARNING)
    set_quiet(args.quiet)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(resolve_threads(args.threads))
    log.info("%d CPU thread(s) (--threads %s)", torch.get_num_threads(), args.threads)
    try:
        if distributed.launched() and args.command != "eval":
            raise InputError(f"only `ptq4vm eval` runs under torchrun, not `ptq4vm {args.command}`")
        check_overrides(getattr(args, "model", None) or MODEL_NAME, args.model_kwargs)
        with logging_redirect_tqdm():
            return args.func(args)
    except InputError as exc:
        print(f"ptq4vm: error: {_error_text(exc)}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads_before)
