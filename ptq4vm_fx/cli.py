"""ptq4vm: quantize, sweep, eval, report.

    ptq4vm quantize                      # the bundled digits Vim, W8A8 PTQ4VM, bundled digits data
    ptq4vm quantize --preset w4a4 --method smoothquant --output q.pt --json metrics.json
    ptq4vm sweep                         # every method x every preset on the bundled model
    ptq4vm eval --quantized q.pt         # top-1/top-5 of a saved quantized model
    ptq4vm report q.pt --output report/  # per-layer table, plots, HTML page

Real models and data: --model vim_tiny_patch16_224 --checkpoint vim_t.pth --data /imagenet.
--data DIR is an image folder in the ImageNet layout: with DIR/train and DIR/val, calibration
images are drawn from DIR/train and evaluation uses DIR/val; otherwise DIR serves both. Without
--data the bundled digits set is used (it fits only the bundled model). Evaluation runs on
several processes or GPUs with: torchrun --nproc_per_node N -m ptq4vm_fx.cli eval ...
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import sys
from pathlib import Path

import torch
from tabulate import tabulate
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.contrib.logging import logging_redirect_tqdm

from . import distributed
from .config import METHODS, PRESETS, QuantConfig
from .data.bundled import MODEL_NAME, bundled_model, load_digits_splits
from .data.imagefolder import ImageFolder, check_classes, eval_transform, load_subset, split_dirs
from .evaluate import Evaluation, evaluate, logits_sqnr_db
from .models import create_vim, load_checkpoint, model_names
from .models.vim import VisionMamba
from .pipeline import Result, quantize_and_evaluate
from .progress import log, set_quiet
from .serialization import load, save

BUNDLED_DATA = "bundled digits"


# ---- models --------------------------------------------------------------------------------------


def _float_model(name: str, checkpoint: str | None, overrides: dict) -> VisionMamba:
    """The float model ``name`` with ``overrides`` and the weights in ``checkpoint`` (the bundled
    weights for the bundled model when no checkpoint is given)."""
    if name not in model_names():
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
    if checkpoint is not None:
        return load_checkpoint(create_vim(name, **overrides), checkpoint).eval()
    if name != MODEL_NAME:
        raise ValueError(f"--checkpoint is required for {name} (weights are never downloaded)")
    model = bundled_model()
    if any(model.config.get(key) != value for key, value in overrides.items()):
        raise ValueError(
            f"the bundled {MODEL_NAME} weights fit its own configuration only: give --checkpoint"
        )
    return model


def _quantized_model(args) -> tuple[torch.fx.GraphModule, str]:
    """The quantized model in ``args.quantized`` and its model name."""
    qmodel = load(args.quantized)
    name = qmodel.meta.get("model_name")
    if name is None and args.model is None:
        raise ValueError(f"{args.quantized} records no model name: give --model")
    if args.model is not None and name is not None and args.model != name:
        raise ValueError(f"{args.quantized} holds a quantized {name}, not {args.model}")
    if args.model_kwargs:
        raise ValueError(f"--model-kwargs: {args.quantized} fixes the model configuration")
    return qmodel, name or args.model


def _reference_model(name: str, config: dict) -> VisionMamba:
    """A weightless (meta-device) ``name`` with ``config``: its data config and class count."""
    with torch.device("meta"):
        return create_vim(name, **config)


# ---- data ----------------------------------------------------------------------------------------


def _require_bundled(model: VisionMamba) -> None:
    name = getattr(model, "model_name", type(model).__name__)
    if name != MODEL_NAME or model.config["img_size"] != 8:
        raise ValueError(
            f"the bundled digits data fits only the {MODEL_NAME} model; this model is {name}: give --data DIR"
        )


def _eval_dataset(args, model: VisionMamba) -> tuple[Dataset, str]:
    """The evaluation set as (image (C, H, W), label) items, and where it comes from."""
    if args.data is None:
        _require_bundled(model)
        test = load_digits_splits()["test"]
        return TensorDataset(test.images, test.labels), BUNDLED_DATA
    _, folder = split_dirs(args.data)
    dataset = ImageFolder(folder, eval_transform(model))
    check_classes(dataset, model.num_classes)
    return dataset, str(folder)


def _calibration_images(args, model: VisionMamba) -> torch.Tensor:
    """(calib images, C, H, W) float32: the bundled calibration split or a fixed-seed subset of DIR."""
    if args.data is None:
        _require_bundled(model)
        calib = load_digits_splits()["calib"].images
        if args.calib_images > len(calib):
            raise ValueError(
                f"--calib-images {args.calib_images}: the bundled set has {len(calib)} calibration images"
            )
        return calib[: args.calib_images]
    folder, _ = split_dirs(args.data)
    dataset = ImageFolder(folder, eval_transform(model))
    if args.calib_images > len(dataset):
        raise ValueError(f"--calib-images {args.calib_images}: {folder} has {len(dataset)} images")
    images, _ = load_subset(
        dataset, args.calib_images, args.batch_size, args.workers, desc="calibration images"
    )
    return images


def _loader(dataset: Dataset, args) -> DataLoader:
    return DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers if args.data else 0)


# ---- commands ------------------------------------------------------------------------------------


def _write_json(path: str, payload) -> None:
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


def _table(results: list[Result]) -> str:
    rows = [
        [
            r.method,
            r.preset.upper(),
            f"{r.quant_top1:.2f}",
            f"{r.quant_top5:.2f}",
            f"{r.drop:+.2f}",
            f"{r.sqnr_db:.1f}",
            f"{r.calibration_seconds:.1f}",
        ]
        for r in results
    ]
    return tabulate(
        rows,
        headers=["method", "bits", "top-1 %", "top-5 %", "drop", "SQNR dB", "calib s"],
        tablefmt="github",
    )


def cmd_quantize(args) -> int:
    model = _float_model(args.model, args.checkpoint, args.model_kwargs).to(distributed.resolve_device(args.device))
    dataset, source = _eval_dataset(args, model)
    calib = _calibration_images(args, model)
    config = QuantConfig.preset_config(args.preset, args.method)
    qmodel, result = quantize_and_evaluate(
        model, calib, _loader(dataset, args), config, batch_size=args.batch_size, eval_images=len(dataset)
    )
    print(
        f"{config.name}: float top-1 {result.float_top1:.2f}%, quantized top-1 {result.quant_top1:.2f}% "
        f"(drop {result.drop:+.2f}, top-5 {result.quant_top5:.2f}%), logits SQNR {result.sqnr_db:.1f} dB, "
        f"calibration {result.calibration_seconds:.1f} s ({len(calib)} images; evaluated on {source}, "
        f"{result.eval_images} images)"
    )
    if args.output:
        save(qmodel, args.output)
        print(f"saved {args.output}")
    if args.json:
        _write_json(args.json, {"model": args.model, "data": source, **result.to_dict()})
    return 0


def cmd_sweep(args) -> int:
    device = distributed.resolve_device(args.device)
    model = _float_model(args.model, args.checkpoint, args.model_kwargs).to(device)
    dataset, source = _eval_dataset(args, model)
    calib = _calibration_images(args, model)
    loader = _loader(dataset, args)
    float_eval = evaluate(model, loader, desc="float eval", device=device, total=len(dataset))
    results = []
    for preset in args.presets:
        for method in args.methods:
            config = QuantConfig.preset_config(preset, method)
            _, result = quantize_and_evaluate(
                model, calib, loader, config, float_eval, args.batch_size, eval_images=len(dataset)
            )
            log.info("%s: top-1 %.2f", config.name, result.quant_top1)
            results.append(result)
    print(
        f"{args.model}: float top-1 {float_eval.top1:.2f}% (top-5 {float_eval.top5:.2f}%) on "
        f"{float_eval.images} images of {source}, {len(calib)} calibration images"
    )
    print(_table(results))
    if args.json:
        _write_json(args.json, [{"model": args.model, "data": source, **r.to_dict()} for r in results])
    return 0


def _eval_table(evals: dict[str, Evaluation]) -> str:
    rows = [
        [label, f"{e.top1:.2f}", f"{e.top5:.2f}", f"{e.images_per_second:.1f}"] for label, e in evals.items()
    ]
    return tabulate(rows, headers=["model", "top-1 %", "top-5 %", "images/s"], tablefmt="github")


def _compiled(qmodel: torch.nn.Module, loader: DataLoader, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """``qmodel`` compiled with the ptq4vm backend (Triton INT8 kernels on CUDA), warmed up on a full and
    a one-smaller batch so that the timed run pays for no compilation (the second size makes the batch
    dimension dynamic)."""
    from .lowering.backend import ptq4vm_backend

    compiled = torch.compile(qmodel, backend=ptq4vm_backend)
    images, _ = next(iter(loader))
    with torch.no_grad():
        for batch in (images, images[:-1]) if len(images) > 1 else (images,):
            compiled(batch.to(device, dtype))
    return compiled


def cmd_eval(args) -> int:
    if args.compile and not args.quantized:
        raise ValueError("--compile runs the quantized model through the ptq4vm backend: give --quantized")
    device = distributed.start(args.device)
    dtype = getattr(torch, args.dtype)
    try:
        models = {}
        if args.quantized:
            qmodel, name = _quantized_model(args)
            reference = _reference_model(name, qmodel.meta["model_config"])
            if args.checkpoint:
                models["float"] = _float_model(name, args.checkpoint, qmodel.meta["model_config"])
            models["quantized"] = qmodel
        else:
            name = args.model or MODEL_NAME
            reference = models["float"] = _float_model(name, args.checkpoint, args.model_kwargs)
        dataset, source = _eval_dataset(args, reference)
        loader = _loader(distributed.shard(dataset), args)
        models = {label: model.to(device, dtype) for label, model in models.items()}
        if args.compile:
            models["compiled"] = _compiled(models["quantized"], loader, device, dtype)
        evals = {
            label: evaluate(
                model, loader, desc=f"{label} eval", device=device, total=len(loader.dataset), dtype=dtype
            )
            for label, model in models.items()
        }
        payload = {
            "model": name,
            "data": source,
            "dtype": args.dtype,
            "processes": distributed.world_size(),
            **{label: e.to_dict() for label, e in evals.items()},
        }
        if "float" in evals and "quantized" in evals:
            payload["sqnr_db"] = logits_sqnr_db(evals["float"], evals["quantized"])
            payload["top1_drop"] = evals["float"].top1 - evals["quantized"].top1
        if "compiled" in evals:
            payload["compiled_vs_eager_sqnr_db"] = logits_sqnr_db(evals["quantized"], evals["compiled"])
        if distributed.is_main():
            images = next(iter(evals.values())).images
            print(
                f"{name} on {source}: {images} images, {distributed.world_size()} process(es), {device.type}, "
                f"{args.dtype}"
            )
            print(_eval_table(evals))
            if "sqnr_db" in payload:
                print(f"top-1 drop {payload['top1_drop']:+.2f}, logits SQNR {payload['sqnr_db']:.1f} dB")
            if "compiled" in evals:
                print(f"compiled (ptq4vm backend) vs eager quantized: logits SQNR "
                      f"{payload['compiled_vs_eager_sqnr_db']:.1f} dB; images/s after two warm-up batches")
            if args.json:
                _write_json(args.json, payload)
    finally:
        distributed.finish()
    return 0


def cmd_report(args) -> int:
    from .report import summary_lines, write_report  # matplotlib is imported only for reports

    qmodel, name = _quantized_model(args)
    if args.checkpoint is None and name != MODEL_NAME:
        raise ValueError(
            f"report compares {args.quantized} with its float model: give the float checkpoint "
            f"of {name} with --checkpoint"
        )
    float_model = _float_model(name, args.checkpoint, qmodel.meta["model_config"])
    dataset, source = _eval_dataset(args, float_model)
    images, labels = load_subset(
        dataset,
        min(args.images, len(dataset)),
        args.batch_size,
        args.workers if args.data else 0,
        desc="report images",
    )
    analysis, written = write_report(
        qmodel, float_model, images, labels, args.output, block=args.block, batch_size=args.batch_size
    )
    print(f"report on {len(images)} images of {source}:")
    print("\n".join(summary_lines(analysis)))
    for path in written.values():
        print(f"wrote {path}")
    return 0


# ---- arguments -----------------------------------------------------------------------------------


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


def _model_kwarg(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(
            f"{text!r}: the value must be a Python literal (a number, True, ...)"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptq4vm",
        description="PTQ4VM quantization of Vision Mamba models",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, model_default, model_help):
        p.add_argument("--model", default=model_default, help=f"model name (default: {model_help})")
        p.add_argument("--checkpoint", help="float checkpoint ({'model': state_dict}, as hustvl/Vim ships)")
        p.add_argument(
            "--model-kwargs",
            nargs="*",
            type=_model_kwarg,
            default=[],
            metavar="KEY=VALUE",
            help="override the model configuration, e.g. num_classes=100 img_size=224",
        )
        p.add_argument(
            "--data",
            help="ImageNet-layout image folder: DIR/train + DIR/val, or DIR/<class>/<image> "
            "(default: the bundled digits set)",
        )
        p.add_argument("--batch-size", type=_count(1), default=64)
        p.add_argument(
            "--workers",
            type=_count(0),
            default=min(8, os.cpu_count() or 1),
            help="data loading processes for --data (default: min(8, CPUs))",
        )
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--verbose", action="store_true", help="log per-block JLSS losses and timings")

    q = sub.add_parser("quantize", help="calibrate, convert, evaluate and save one quantized model")
    common(q, MODEL_NAME, f"the bundled {MODEL_NAME}")
    q.add_argument("--calib-images", type=_count(1), default=256, help="calibration images (default 256)")
    q.add_argument("--preset", default="w8a8", choices=sorted(PRESETS))
    q.add_argument("--method", default="ptq4vm", choices=list(METHODS))
    q.add_argument("--output", help="save the quantized model here (ptq4vm_fx.load reads it)")
    q.add_argument("--json", help="write the metrics as JSON here")
    q.add_argument("--device", default="cpu", help="where calibration, JLSS and evaluation run: cpu (default) or cuda")
    q.set_defaults(func=cmd_quantize)

    s = sub.add_parser("sweep", help="every method x every preset, one table")
    common(s, MODEL_NAME, f"the bundled {MODEL_NAME}")
    s.add_argument("--calib-images", type=_count(1), default=256, help="calibration images (default 256)")
    s.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    s.add_argument("--presets", nargs="+", default=list(PRESETS), choices=sorted(PRESETS))
    s.add_argument("--json", help="write the metrics as JSON here")
    s.add_argument("--device", default="cpu", help="where calibration, JLSS and evaluation run: cpu (default) or cuda")
    s.set_defaults(func=cmd_sweep)

    e = sub.add_parser(
        "eval", help="top-1/top-5 of a float and/or a quantized model (torchrun for several processes)"
    )
    common(e, None, f"the quantized file's model, else the bundled {MODEL_NAME}")
    e.add_argument(
        "--quantized", help="a quantized model file; the float model is evaluated too with --checkpoint"
    )
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
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("report", help="per-layer table, plots and an HTML page for a quantized model")
    r.add_argument("quantized", help="a quantized model file (written by quantize --output)")
    common(r, None, "the quantized file's model")
    r.add_argument(
        "--images",
        type=_count(1),
        default=128,
        help="analyse up to this many evaluation images, drawn with a fixed seed (default 128)",
    )
    r.add_argument(
        "--block", type=int, help="block to plot (default: the worst after JLSS, else the middle one)"
    )
    r.add_argument("--output", default="report", help="output folder (default: report/)")
    r.set_defaults(func=cmd_report)
    return parser


def _error_text(exc: BaseException) -> str:
    """The message of ``exc``; for an error re-raised from a DataLoader worker, the original one."""
    text = str(exc)
    if "Original Traceback" in text:
        return text.strip().splitlines()[-1].partition(": ")[2]
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.model_kwargs = dict(args.model_kwargs)
    logging.basicConfig(format="%(message)s")
    log.setLevel(logging.INFO if args.verbose else logging.WARNING)
    set_quiet(args.quiet)
    try:
        if distributed.launched() and args.command != "eval":
            raise ValueError(f"only `ptq4vm eval` runs under torchrun, not `ptq4vm {args.command}`")
        with logging_redirect_tqdm():
            return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, TypeError) as exc:
        print(f"ptq4vm: error: {_error_text(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
