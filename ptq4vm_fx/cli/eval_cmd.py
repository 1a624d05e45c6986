"""``ptq4vm eval``: top-1/top-5 and throughput of a float and/or a quantized model, optionally the
quantized model compiled by the ptq4vm backend; several processes under torchrun."""

from __future__ import annotations

import torch
from tabulate import tabulate
from torch.utils.data import DataLoader

from .. import distributed
from ..data.bundled import MODEL_NAME
from ..errors import InputError
from ..evaluate import Evaluation, evaluate, logits_sqnr_db
from ..progress import hide_cuda_home_notice
from .outputs import check_output_file, write_json
from .selection import eval_dataset, float_model, loader, quantized_model, reference_model


def _table(evals: dict[str, Evaluation]) -> str:
    rows = [[label, f"{e.top1:.2f}", f"{e.top5:.2f}", f"{e.images_per_second:.1f}"] for label, e in evals.items()]
    return tabulate(rows, headers=["model", "top-1 %", "top-5 %", "images/s"], tablefmt="github")


def compiled(qmodel: torch.nn.Module, batches: DataLoader, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """``qmodel`` compiled with the ptq4vm backend (Triton INT8 kernels on CUDA), warmed up on a full and
    a one-smaller batch so that the timed run pays for no compilation (the second size makes the batch
    dimension dynamic)."""
    hide_cuda_home_notice()
    from ..lowering.backend import ptq4vm_backend

    model = torch.compile(qmodel, backend=ptq4vm_backend)
    images, _ = next(iter(batches))
    with torch.no_grad():
        for batch in (images, images[:-1]) if len(images) > 1 else (images,):
            model(batch.to(device, dtype))
    return model


def run(args) -> int:
    check_output_file(args.json, "--json")
    if args.compile and not args.quantized:
        raise InputError("--compile runs the quantized model through the ptq4vm backend: give --quantized")
    device = distributed.start(args.device)
    dtype = getattr(torch, args.dtype)
    try:
        models = {}
        if args.quantized:
            qmodel, name = quantized_model(args)
            reference = reference_model(name, qmodel.meta["model_config"])
            if args.checkpoint:
                models["float"] = float_model(name, args.checkpoint, qmodel.meta["model_config"])
            models["quantized"] = qmodel
        else:
            name = args.model or MODEL_NAME
            reference = models["float"] = float_model(name, args.checkpoint, args.model_kwargs)
        dataset, source = eval_dataset(args, reference, qmodel.meta["img_size"] if args.quantized else None)
        batches = loader(distributed.shard(dataset), args)
        models = {label: model.to(device, dtype) for label, model in models.items()}
        if args.compile:
            models["compiled"] = compiled(models["quantized"], batches, device, dtype)
        evals = {
            label: evaluate(model, batches, desc=f"{label} eval", device=device, total=len(batches.dataset),
                            dtype=dtype)
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
            print(f"{name} on {source}: {images} images, {distributed.world_size()} process(es), {device.type}, "
                  f"{args.dtype}")
            print(_table(evals))
            if "sqnr_db" in payload:
                print(f"top-1 drop {payload['top1_drop']:+.2f}, logits SQNR {payload['sqnr_db']:.1f} dB")
            if "compiled" in evals:
                print(f"compiled (ptq4vm backend) vs eager quantized: logits SQNR "
                      f"{payload['compiled_vs_eager_sqnr_db']:.1f} dB; images/s after two warm-up batches")
            if args.json:
                write_json(args.json, payload)
    finally:
        distributed.finish()
    return 0
