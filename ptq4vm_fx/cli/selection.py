"""What the commands run on: the float or quantized model and the calibration and evaluation data,
picked from --model, --checkpoint, --model-kwargs, --quantized and --data (the bundled digits Vim
and its data by default; each bundled model runs on the bundled data without other arguments)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .. import distributed
from ..data.bundled import BUNDLED_MODELS, bundled_model, load_digits_splits
from ..data.imagefolder import ImageFolder, check_classes, eval_transform, load_subset, split_dirs
from ..errors import InputError
from ..models import load_checkpoint
from ..models.family import check_overrides, create_model, family_of
from ..serialization import load

BUNDLED_DATA = "bundled digits"


# ---- models --------------------------------------------------------------------------------------


def float_model(name: str, checkpoint: str | None, overrides: dict) -> nn.Module:
    """The float model ``name`` with ``overrides`` and the weights in ``checkpoint`` (the bundled
    weights for a bundled model when no checkpoint is given)."""
    check_overrides(name, overrides)  # an unknown name too
    if overrides:
        reference_model(name, overrides)  # a value the model refuses (forward_type='v2') is named first
    if checkpoint is not None:
        return load_checkpoint(create_model(name, **overrides), checkpoint).eval()
    if name not in BUNDLED_MODELS:
        raise InputError(f"--checkpoint is required for {name} (weights are never downloaded; bundled models: "
                         f"{', '.join(BUNDLED_MODELS)})")
    model = bundled_model(name)
    if any(model.config.get(key) != value for key, value in overrides.items()):
        raise InputError(f"the bundled {name} weights fit its own configuration only: give --checkpoint")
    return model


def quantized_model(args) -> tuple[torch.fx.GraphModule, str]:
    """The quantized model in ``args.quantized`` and its model name."""
    qmodel = load(args.quantized)
    name = qmodel.meta.get("model_name")
    if name is None and args.model is None:
        raise InputError(f"{args.quantized} records no model name: give --model")
    if args.model is not None and name is not None and args.model != name:
        raise InputError(f"{args.quantized} holds a quantized {name}, not {args.model}")
    if args.model_kwargs:
        raise InputError(f"--model-kwargs: {args.quantized} fixes the model configuration")
    return qmodel, name or args.model


def reference_model(name: str, config: dict) -> nn.Module:
    """A weightless (meta-device) ``name`` with ``config``: its data config and class count."""
    with torch.device("meta"):
        return create_model(name, **config)


# ---- data ----------------------------------------------------------------------------------------


def _require_bundled(model: nn.Module) -> None:
    """Refuse the bundled digits (8x8 images) for a model that is no bundled one or not built for 8x8."""
    name = getattr(model, "model_name", type(model).__name__)
    if name not in BUNDLED_MODELS or family_of(model).image_size(model) not in (None, (8, 8)):
        raise InputError(
            f"the bundled digits data fits only the bundled models ({', '.join(BUNDLED_MODELS)}); this model is "
            f"{name}: give --data DIR"
        )


def eval_dataset(args, model: nn.Module, image_size: tuple[int, int] | None = None) -> tuple[Dataset, str]:
    """The evaluation set as (image (C, H, W) float32, label) items, and where it comes from; --data images
    at ``image_size`` (a quantized model's) where given, else at the model's data config's size."""
    if args.data is None:
        _require_bundled(model)
        test = load_digits_splits()["test"]
        return TensorDataset(test.images, test.labels), BUNDLED_DATA
    _, folder = split_dirs(args.data)
    dataset = ImageFolder(folder, eval_transform(model, image_size))
    check_classes(dataset, model.num_classes)
    return dataset, str(folder)


def calibration_images(args, model: nn.Module) -> torch.Tensor:
    """(--calib-images, C, H, W) float32: the bundled calibration split or a fixed-seed subset of DIR."""
    if args.data is None:
        _require_bundled(model)
        calib = load_digits_splits()["calib"].images
        if args.calib_images > len(calib):
            raise InputError(f"--calib-images {args.calib_images}: the bundled set has {len(calib)} calibration images")
        return calib[: args.calib_images]
    folder, _ = split_dirs(args.data)
    dataset = ImageFolder(folder, eval_transform(model))
    if args.calib_images > len(dataset):
        raise InputError(f"--calib-images {args.calib_images}: {folder} has {len(dataset)} images")
    images, _ = load_subset(dataset, args.calib_images, args.batch_size, args.workers, desc="calibration images")
    return images


def loader(dataset: Dataset, args) -> DataLoader:
    """Batches of (images (B, C, H, W), labels (B,)) in a fixed order; worker processes only for --data."""
    return DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers if args.data else 0)


# ---- the setup quantize and sweep share ------------------------------------------------------------


@dataclass
class QuantizeSetup:
    """The float model on its device, its calibration images and its evaluation batches."""

    device: torch.device
    model: nn.Module
    calib: torch.Tensor  # (N, C, H, W) float32, on the CPU
    loader: DataLoader  # (images, labels) batches of the evaluation set
    eval_images: int
    source: str  # where the evaluation images come from


def quantize_setup(args) -> QuantizeSetup:
    """The float model, calibration images and evaluation batches that --model, --checkpoint,
    --model-kwargs, --data, --calib-images and --device name."""
    device = distributed.resolve_device(args.device)
    model = float_model(args.model, args.checkpoint, args.model_kwargs).to(device)
    dataset, source = eval_dataset(args, model)
    calib = calibration_images(args, model)
    return QuantizeSetup(device, model, calib, loader(dataset, args), len(dataset), source)
