"""The whole job on tensors: calibrate, convert, evaluate. Used by the CLI and the demo sweep."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .api import convert, prepare
from .config import QuantConfig
from .evaluate import predict, sqnr_db, topk_accuracy
from .progress import progress


def calibrate_and_convert(model: nn.Module, calib_images: Tensor, config: QuantConfig, batch_size: int = 64,
                          simulate: bool = False) -> tuple[torch.fx.GraphModule, float]:
    """prepare -> calibration batches -> convert; returns the quantized model and the seconds it took."""
    if len(calib_images) == 0:
        raise ValueError("no calibration images")
    start = time.perf_counter()
    prepared = prepare(model, calib_images[:1], config)
    with torch.no_grad():
        for batch in progress(calib_images.split(batch_size), desc="calibration"):
            prepared(batch)
    qmodel = convert(prepared, simulate=simulate)
    return qmodel, time.perf_counter() - start


@dataclass
class Result:
    method: str
    preset: str
    float_top1: float
    quant_top1: float
    sqnr_db: float
    calibration_seconds: float

    @property
    def drop(self) -> float:
        return self.float_top1 - self.quant_top1

    def to_dict(self) -> dict:
        return {**self.__dict__, "top1_drop": self.drop}


def quantize_and_evaluate(model: nn.Module, calib_images: Tensor, test_images: Tensor, test_labels: Tensor,
                          config: QuantConfig, float_logits: Tensor | None = None, batch_size: int = 64
                          ) -> tuple[torch.fx.GraphModule, Result]:
    """Quantize with ``config`` and compare with the float model on the test images."""
    if float_logits is None:
        float_logits = predict(model, test_images, batch_size, desc="float eval")
    qmodel, seconds = calibrate_and_convert(model, calib_images, config, batch_size)
    quant_logits = predict(qmodel, test_images, batch_size, desc="quantized eval")
    result = Result(
        method=config.method,
        preset=config.preset or f"w{config.weight_bits}a{config.act_bits}",
        float_top1=topk_accuracy(float_logits, test_labels),
        quant_top1=topk_accuracy(quant_logits, test_labels),
        sqnr_db=sqnr_db(float_logits, quant_logits),
        calibration_seconds=seconds,
    )
    return qmodel, result
