"""``ptq4vm sweep``: every method x every preset of it on one model, one table (``make demo``)."""

from __future__ import annotations

from tabulate import tabulate

from ..config import PRESETS, QuantConfig, compatible, unused_options
from ..errors import InputError
from ..evaluate import evaluate
from ..pipeline import Result, quantize_and_evaluate
from ..progress import log
from .outputs import check_output_file, write_json
from .selection import quantize_setup


def table(results: list[Result]) -> str:
    """One row per result: method, bits, top-1, top-5, drop, SQNR, calibration seconds, peak memory."""
    rows = [
        [r.method, r.preset.upper(), f"{r.quant_top1:.2f}", f"{r.quant_top5:.2f}", f"{r.drop:+.2f}",
         f"{r.sqnr_db:.1f}", f"{r.calibration_seconds:.1f}", f"{r.peak_rss_mib:.0f}"]
        for r in results
    ]
    return tabulate(rows, headers=["method", "bits", "top-1 %", "top-5 %", "drop", "SQNR dB", "calib s",
                                   "peak RSS MiB"], tablefmt="github")


def _recipe(recipe: str, method: str, preset: str) -> dict:
    """The recipe option for the methods that read it (--recipe official changes ptq4vm only)."""
    return {} if recipe == "default" or "recipe" in unused_options(method, PRESETS[preset][1]) else {"recipe": recipe}


def run(args) -> int:
    check_output_file(args.json, "--json")
    presets = args.presets or list(dict.fromkeys(p for m in args.methods for p in PRESETS if compatible(p, m)))
    configs = [QuantConfig.preset_config(preset, method, **_recipe(args.recipe, method, preset))
               for preset in presets for method in args.methods if compatible(preset, method)]
    if not configs:
        raise InputError(f"no method of {', '.join(args.methods)} takes preset {', '.join(presets)}")
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
