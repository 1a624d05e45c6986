"""``ptq4vm sweep``: every method x every preset on one model, one table (``make demo``)."""

from __future__ import annotations

from tabulate import tabulate

from ..config import QuantConfig
from ..evaluate import evaluate
from ..pipeline import Result, quantize_and_evaluate
from ..progress import log
from .outputs import check_output_file, write_json
from .selection import quantize_setup


def table(results: list[Result]) -> str:
    """One row per result: method, bits, top-1, top-5, drop, SQNR, calibration seconds."""
    rows = [
        [r.method, r.preset.upper(), f"{r.quant_top1:.2f}", f"{r.quant_top5:.2f}", f"{r.drop:+.2f}",
         f"{r.sqnr_db:.1f}", f"{r.calibration_seconds:.1f}"]
        for r in results
    ]
    return tabulate(
        rows, headers=["method", "bits", "top-1 %", "top-5 %", "drop", "SQNR dB", "calib s"], tablefmt="github"
    )


def run(args) -> int:
    check_output_file(args.json, "--json")
    configs = [QuantConfig.preset_config(preset, method) for preset in args.presets for method in args.methods]
    setup = quantize_setup(args)
    float_eval = evaluate(setup.model, setup.loader, desc="float eval", device=setup.device, total=setup.eval_images)
    results = []
    for config in configs:
        _, result = quantize_and_evaluate(
            setup.model, setup.calib, setup.loader, config, float_eval, args.batch_size, eval_images=setup.eval_images
        )
        log.info("%s: top-1 %.2f", config.name, result.quant_top1)
        results.append(result)
    print(
        f"{args.model}: float top-1 {float_eval.top1:.2f}% (top-5 {float_eval.top5:.2f}%) on "
        f"{float_eval.images} images of {setup.source}, {len(setup.calib)} calibration images"
    )
    print(table(results))
    if args.json:
        write_json(args.json, [{"model": args.model, "data": setup.source, **r.to_dict()} for r in results])
    return 0
