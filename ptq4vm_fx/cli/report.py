"""``ptq4vm report``: per-layer table, plots and an HTML page for a quantized model."""

from __future__ import annotations

from ..capture import blocks
from ..data.bundled import BUNDLED_MODELS
from ..data.imagefolder import load_subset
from ..errors import InputError
from .outputs import check_output_folder
from .selection import eval_dataset, float_model, quantized_model


def run(args) -> int:
    from ..report import summary_lines, write_report  # matplotlib is imported only for reports

    check_output_folder(args.output, "--output")
    qmodel, name = quantized_model(args)
    if args.checkpoint is None and name not in BUNDLED_MODELS:
        raise InputError(
            f"report compares {args.quantized} with its float model: give the float checkpoint "
            f"of {name} with --checkpoint"
        )
    depth = len(blocks(qmodel))
    if args.block is not None and not 0 <= args.block < depth:
        raise InputError(f"--block {args.block} does not exist: the model has blocks 0..{depth - 1}")
    reference = float_model(name, args.checkpoint, qmodel.meta["model_config"])
    dataset, source = eval_dataset(args, reference, qmodel.meta["img_size"])
    images, labels = load_subset(
        dataset, min(args.images, len(dataset)), args.batch_size, args.workers if args.data else 0,
        desc="report images",
    )
    analysis, written = write_report(
        qmodel, reference, images, labels, args.output, block=args.block, batch_size=args.batch_size
    )
    print(f"report on {len(images)} images of {source}:")
    print("\n".join(summary_lines(analysis)))
    for path in written.values():
        print(f"wrote {path}")
    return 0
