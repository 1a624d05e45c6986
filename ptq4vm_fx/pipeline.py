"""The whole job: calibrate, convert, evaluate against the float model. Used by the CLI."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .api import convert, prepare
from .config import QuantConfig
from .errors import InputError
from .evaluate import Evaluation, evaluate, logits_sqnr_db
from .measure import Measured
from .progress import log, progress


def calibrate_and_convert(
    model: nn.Module, calib_images: Tensor, config: QuantConfig, batch_size: int = 64, simulate: bool = False
) -> tuple[torch.fx.GraphModule, Measured]:
    """prepare -> calibration batches of images (N, C, H, W) -> convert, on the model's device;
    returns the quantized model and the time and peak memory it took (:class:`Measured`)."""
    if len(calib_images) == 0:
        raise InputError("no calibration images")
    device = next(model.parameters()).device
    with Measured(device) as measured:
        prepared = prepare(model, calib_images[:1].to(device), config)
        with torch.no_grad():
            for batch in progress(calib_images.split(batch_size), desc="calibration", unit="batch"):
                prepared(batch.to(device))
        qmodel = convert(prepared, simulate=simulate)
    log.info("%s: calibrated on %d images and converted in %.1f s, peak RSS %.0f MiB", config.name,
             len(calib_images), measured.seconds, measured.peak_rss_mib)
    return qmodel, measured


@dataclass
class Result:
    method: str
    preset: str
    float_top1: float
    float_top5: float
    quant_top1: float
    quant_top5: float
    sqnr_db: float  # of the quantized logits against the float logits
    calibration_seconds: float  # prepare, calibration and convert
    calib_images: int
    eval_images: int
    peak_rss_mib: float | None = None  # the process's peak resident set during those (measure.py)
    peak_cuda_mib: float | None = None  # the CUDA allocator's peak during those, on a GPU

    @property
    def memory(self) -> str:
        """"peak RSS 1234 MiB" (", CUDA 56 MiB" on a GPU)."""
        cuda = "" if self.peak_cuda_mib is None else f", CUDA {self.peak_cuda_mib:.0f} MiB"
        return f"peak RSS {self.peak_rss_mib:.0f} MiB{cuda}"

    @property
    def drop(self) -> float:
        return self.float_top1 - self.quant_top1

    def to_dict(self) -> dict:
        return {**self.__dict__, "top1_drop": self.drop}


def quantize_and_evaluate(
    model: nn.Module,
    calib_images: Tensor,
    eval_batches: Iterable[tuple[Tensor, Tensor]],
    config: QuantConfig,
    float_eval: Evaluation | None = None,
    batch_size: int = 64,
    eval_images: int | None = None,
) -> tuple[torch.fx.GraphModule, Result]:
    """Quantize ``model`` with ``config`` and compare it with the float model.

    ``eval_batches``: a re-iterable of (images, labels) batches (a DataLoader), passed over once per
    model in the same order; ``float_eval`` reuses an earlier float evaluation on them (a sweep);
    ``eval_images`` sizes the progress bars. Everything runs on the model's device."""
    device = next(model.parameters()).device
    if float_eval is None:
        float_eval = evaluate(model, eval_batches, desc="float eval", device=device, total=eval_images)
    qmodel, measured = calibrate_and_convert(model, calib_images, config, batch_size)
    quant_eval = evaluate(qmodel, eval_batches, desc=f"{config.name} eval", device=device, total=eval_images)
    result = Result(
        method=config.method,
        preset=config.preset or f"w{config.weight_bits}a{config.act_bits}",
        float_top1=float_eval.top1,
        float_top5=float_eval.top5,
        quant_top1=quant_eval.top1,
        quant_top5=quant_eval.top5,
        sqnr_db=logits_sqnr_db(float_eval, quant_eval),
        calibration_seconds=measured.seconds,
        calib_images=len(calib_images),
        eval_images=quant_eval.images,
        peak_rss_mib=measured.peak_rss_mib,
        peak_cuda_mib=measured.peak_cuda_mib,
    )
    return qmodel, result
