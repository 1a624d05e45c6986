"""save / load of quantized models: tensors and plain metadata only, never pickled code.

The file is a ``torch.save`` dict read back with ``weights_only=True``. It records the float model's
configuration, the image size it was captured at and, for every quantized module the saved model
holds, its qualified name, class and constructor arguments (read from the module, not re-derived
from the config). Loading rebuilds the float model (its family's class), captures it at that size,
puts an empty module of each recorded kind where the record says, and loads the state dict
strictly: a record and a state dict that disagree are refused.
"""

from __future__ import annotations

import os

import torch
import torch.fx
from torch import nn

from .capture import capture
from .config import QuantConfig
from .errors import InputError
from .models.checkpoint import load_tensors
from .models.family import family_named
from .quant.linear import QUANTIZED_LINEARS
from .quant.vq_linear import VQ_LINEARS

FORMAT_PREFIX = "ptq4vm_fx.quantized/"
# 3: VMamba's and LocalVSSM's per-direction x_proj / dt_proj take the row-major tokens (their scans read them
# through order maps), so their per-token scales are in that order; 2 held them in each direction's scan
# order (padded windows included). 2: the quantized modules are recorded; 1 re-derived them from the config
FORMAT = FORMAT_PREFIX + "3"
_STAGES = ("quantized", "simulated")
_WHAT = "a ptq4vm_fx quantized model file"
# the recorded kinds; each declares its constructor arguments and their types (INIT_ARGS)
_KINDS = {cls.__name__: cls for cls in (*QUANTIZED_LINEARS, *VQ_LINEARS)}


def quantized_modules(qmodel: nn.Module) -> list[dict]:
    """[{'name': 'layers.0.mixer.in_proj', 'kind': 'QuantizedLinear', 'args': {...}}, ...]: every
    quantized module of ``qmodel`` in module order, as :func:`save` records them."""
    return [
        {"name": name, "kind": type(module).__name__, "args": module.init_args()}
        for name, module in qmodel.named_modules()
        if isinstance(module, tuple(_KINDS.values()))
    ]


def save(qmodel: torch.fx.GraphModule, path: str | os.PathLike) -> None:
    """Write a ``convert()`` result to ``path``."""
    meta = getattr(qmodel, "meta", {})
    if meta.get("stage") not in _STAGES:
        raise InputError("save() takes the module returned by ptq4vm_fx.convert()")
    torch.save(
        {
            "format": FORMAT,
            "stage": meta["stage"],
            "model_name": meta.get("model_name"),
            "family": meta["family"],
            "model_config": meta["model_config"],
            "img_size": list(meta["img_size"]),
            "quant_config": meta["quant_config"],
            "block_stats": meta.get("block_stats", {}),
            "modules": quantized_modules(qmodel),
            "state_dict": qmodel.state_dict(),
        },
        path,
    )


def _check_record(path, record) -> None:
    """Refuse a module record that is not a list of {'name': str, 'kind': known class, 'args': ...}."""
    def malformed(what: str) -> InputError:
        return InputError(f"{path}: malformed ptq4vm_fx file ({what})")

    if not isinstance(record, list):
        raise malformed("its module record is not a list")
    for entry in record:
        if not isinstance(entry, dict) or set(entry) != {"name", "kind", "args"} or not isinstance(entry["name"], str):
            raise malformed(f"module record entry {entry!r}")
        if entry["kind"] not in _KINDS:
            raise malformed(f"{entry['name']}: unknown module kind {entry['kind']!r}")
        args, schema = entry["args"], _KINDS[entry["kind"]].INIT_ARGS
        if not isinstance(args, dict) or set(args) != set(schema) or not all(
            type(args[key]) is kind for key, kind in schema.items()
        ):
            raise malformed(f"{entry['name']}: constructor arguments {args!r}")


def _skeleton(path, family: str, model_config: dict, img_size, record: list[dict]) -> torch.fx.GraphModule:
    """The captured float model (at the recorded image size) with an empty recorded module in place of each
    recorded linear."""
    if not isinstance(model_config, dict):
        raise InputError(f"{path}: malformed ptq4vm_fx file (model configuration {model_config!r})")
    if img_size is not None and not (isinstance(img_size, list) and len(img_size) == 2
                                     and all(type(side) is int and side > 0 for side in img_size)):
        raise InputError(f"{path}: malformed ptq4vm_fx file (image size {img_size!r})")
    try:
        gm = capture(family_named(family).build(model_config), img_size)
    except (TypeError, ValueError) as exc:  # an InputError is a ValueError
        raise InputError(f"{path}: malformed ptq4vm_fx file (model configuration: {exc})") from None
    if img_size is not None and tuple(img_size) != gm.meta["img_size"]:
        height, width = gm.meta["img_size"]
        raise InputError(f"{path} does not match the model it describes: it records image size "
                         f"{img_size[0]}x{img_size[1]}, the model is built for {height}x{width}")
    for entry in record:
        name, args = entry["name"], entry["args"]
        try:
            linear = gm.get_submodule(name)
        except AttributeError:
            linear = None
        if not isinstance(linear, nn.Linear):
            raise InputError(f"{path} does not match the model it describes: {name} is not a linear of it")
        if (linear.in_features, linear.out_features) != (args["in_features"], args["out_features"]):
            raise InputError(
                f"{path} does not match the model it describes: {name} is recorded as "
                f"{args['in_features']}->{args['out_features']}, the model's linear is "
                f"{linear.in_features}->{linear.out_features}"
            )
        gm.set_submodule(name, _KINDS[entry["kind"]].empty(**args))
    return gm


def load(path: str | os.PathLike) -> torch.fx.GraphModule:
    """Read a file written by :func:`save`; returns the quantized GraphModule (eval mode)."""
    obj = load_tensors(path, _WHAT)
    version = obj.get("format") if isinstance(obj, dict) else None
    if not isinstance(version, str) or not version.startswith(FORMAT_PREFIX):
        raise InputError(f"{path} is not {_WHAT} (it records no {FORMAT_PREFIX}* format)")
    if version != FORMAT:
        raise InputError(
            f"{path} is a ptq4vm_fx quantized model in format {version!r}, which this version does not read "
            f"(it reads {FORMAT!r}): quantize the model again"
        )
    absent = [key for key in ("stage", "family", "model_config", "quant_config", "modules", "state_dict")
              if key not in obj]
    if absent:
        raise InputError(f"{path}: malformed ptq4vm_fx file (no {', '.join(absent)})")
    model_config, stage, state, record = obj["model_config"], obj["stage"], obj["state_dict"], obj["modules"]
    try:
        config = QuantConfig.from_dict(obj["quant_config"])
    except (TypeError, ValueError) as exc:  # an InputError is a ValueError
        raise InputError(f"{path}: malformed ptq4vm_fx file (quantization config: {exc})") from None
    if stage not in _STAGES:
        raise InputError(f"{path}: malformed ptq4vm_fx file (unknown stage {stage!r})")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: malformed ptq4vm_fx file (its state dict is not a dict of tensors)")
    _check_record(path, record)
    gm = _skeleton(path, obj["family"], model_config, obj.get("img_size"), record)
    expected = gm.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and expected[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise InputError(
            f"{path} does not match the model it describes (its module record and state dict disagree): "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}"
        )
    try:
        gm.load_state_dict(state, strict=True)
    except InputError as exc:  # a quantized module's own check of its tensors (VQ codes out of range, ...)
        raise InputError(f"{path}: {exc}") from None
    gm.meta.update(stage=stage, quant_config=config.to_dict(), model_name=obj.get("model_name"),
                   block_stats=obj.get("block_stats", {}))
    return gm.eval()
