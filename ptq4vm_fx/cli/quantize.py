"""``ptq4vm quantize``: calibrate, convert, evaluate against the float model, save, write metrics."""

from __future__ import annotations

from ..config import QuantConfig, default_preset
from ..pipeline import quantize_and_evaluate
from ..serialization import save
from .outputs import check_output_file, write_json
from .selection import quantize_setup


def run(args) -> int:
    check_output_file(args.output, "--output")
    check_output_file(args.json, "--json")
    recipe = {} if args.recipe == "default" else {"recipe": args.recipe}  # refused for a method without JLSS
    config = QuantConfig.preset_config(args.preset or default_preset(args.method), args.method, **recipe)
    setup = quantize_setup(args)
    qmodel, result = quantize_and_evaluate(
        setup.model, setup.calib, setup.loader, config, batch_size=args.batch_size, eval_images=setup.eval_images
    )
    print(
        f"{config.name}: float top-1 {result.float_top1:.2f}%, quantized top-1 {result.quant_top1:.2f}% "
        f"(drop {result.drop:+.2f}, top-5 {result.quant_top5:.2f}%), logits SQNR {result.sqnr_db:.1f} dB, "
        f"calibration {result.calibration_seconds:.1f} s, {result.memory} ({len(setup.calib)} images; evaluated "
        f"on {setup.source}, {result.eval_images} images)"
    )
    kept = qmodel.meta.get("float_layers") or {}
    if kept:
        print(f"kept float: {len(kept)} linear(s) the codebook does not fit, e.g. {next(iter(kept.values()))}")
    if args.output:
        save(qmodel, args.output)
        print(f"saved {args.output}")
    if args.json:
        write_json(args.json, {"model": args.model, "data": setup.source, **result.to_dict()})
    return 0
