"""prepare / convert: the user-facing quantization workflow."""

from __future__ import annotations

import copy

import torch
import torch.fx
from torch import nn

from .capture import capture, check_supported
from .config import WEIGHT_METHODS, QuantConfig, resolve_config
from .errors import InputError
from .measure import Measured
from .passes.fold_smoothing import fold_smoothing
from .passes.insert_observers import insert_observers, remove_observers
from .passes.jlss import run_jlss
from .passes.pack_weights import pack_weights
from .passes.quantize_linears import quantize_linears
from .passes.record_inputs import RECORDER, insert_input_recorder, remove_input_recorder
from .passes.vector_quantize import quantize_weights, weight_layers
from .progress import log


def prepare(model: nn.Module, example_inputs, config: QuantConfig | str | None = None) -> torch.fx.GraphModule:
    """Capture ``model`` and insert calibration observers.

    example_inputs: a (batch, C, H, W) tensor or a 1-tuple of one, at the image size the model will
    be calibrated and run at. Run calibration batches through the returned module under
    ``torch.no_grad()``, then call :func:`convert`. The weight methods (rtn, VQ) plan their layers
    here (layers their codebook does not fit stay float, or are refused if named in ``linears``);
    weight-only configs insert no observers, only the input recorder.
    """
    config = resolve_config(config)
    explicit = config.linears is not None
    config = config.for_family(check_supported(model))
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or len(example_inputs) != 1:
        raise InputError("example_inputs must be one image batch tensor (or a 1-tuple of one)")
    model.eval()
    with torch.no_grad():
        model(*example_inputs)  # validates the input shape with a clear error
    size = tuple(example_inputs[0].shape[-2:])
    gm = capture(model, size)
    if size != gm.meta["img_size"]:
        (height, width), name = gm.meta["img_size"], getattr(model, "model_name", None) or type(model).__name__
        raise InputError(f"example inputs are {size[0]}x{size[1]} images but {name} is configured for "
                         f"{height}x{width}: calibrate at that size or build the model for {size[0]}x{size[1]}")
    weight_method = config.method in WEIGHT_METHODS
    if weight_method:
        weight_layers(gm, config, explicit)
    if not config.weight_only and insert_observers(gm, config.linears) == 0:
        raise InputError(f"nothing to quantize: the model has no linear named one of {config.linears} in a block")
    insert_input_recorder(gm, keep=config.grid_search or config.jlss or weight_method)
    gm.meta["quant_config"] = config.to_dict()
    gm.meta["stage"] = "prepared"
    return gm


def convert(prepared: torch.fx.GraphModule, simulate: bool = False) -> torch.fx.GraphModule:
    """Quantize a calibrated ``prepare()`` result (which is left unchanged).

    Returns the integer model (int8 weights, ``ptq4vm::int8_linear``), or with ``simulate=True`` the
    fake-quant model built from the same state; for the weight methods, the model with VQLinear /
    VQActLinear modules (rtn: nn.Linear holding the rounded weights). ``meta`` records the per-block
    stats, ``convert_seconds``, ``peak_rss_mib`` and on CUDA ``peak_cuda_mib`` (:mod:`.measure`) and
    the layers a weight method keeps float (``float_layers``: name -> why).
    """
    if not isinstance(prepared, torch.fx.GraphModule) or prepared.meta.get("stage") != "prepared":
        raise InputError("convert() takes the module returned by ptq4vm_fx.prepare()")
    recorder = prepared.get_submodule(RECORDER)
    if recorder.batches == 0:
        raise InputError(
            "convert() needs calibration: run the prepared model on calibration batches "
            "(under torch.no_grad()) before converting"
        )
    config = QuantConfig.from_dict(prepared.meta["quant_config"])
    weight_method = config.method in WEIGHT_METHODS
    if simulate and weight_method:
        raise InputError(f"simulate=True is for the integer methods: {config.method} models run the same modules "
                         "(the VQ op's reference off CUDA) in both")
    with Measured(next(prepared.parameters()).device) as measured:
        qgm = copy.deepcopy(prepared)
        images = recorder.images() if recorder.keep else None
        remove_input_recorder(qgm)
        if not config.weight_only:
            quantize_linears(qgm, config)
        stats, kept = {}, {}
        if config.grid_search or config.jlss or weight_method:
            fgm = copy.deepcopy(prepared)
            remove_input_recorder(fgm)
            remove_observers(fgm)
            if weight_method:
                layers, kept = weight_layers(fgm, config, explicit=False)
                stats = quantize_weights(qgm, fgm, images, config, layers)
            else:
                stats = run_jlss(qgm, fgm, images, config)
        folded = fold_smoothing(qgm) if config.smooth and not weight_method else 0
        packed = 0 if simulate else pack_weights(qgm)
    qgm.meta.update(
        stage="simulated" if simulate else "quantized",
        block_stats=stats,
        folded=folded,
        packed=packed,
        float_layers=kept,
        convert_seconds=measured.seconds,
        peak_rss_mib=measured.peak_rss_mib,
        peak_cuda_mib=measured.peak_cuda_mib,
    )
    log.info("converted %s: %d smoothing scales folded, %d linears packed", config.name, folded, packed)
    return qgm
