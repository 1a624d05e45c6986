"""Image folders in the ImageNet layout, DIR/<class>/<image>, through timm's eval transform.

``split_dirs(DIR)``: a DIR with train/ and val/ subfolders (ImageNet) calibrates on DIR/train and
evaluates on DIR/val; any other DIR is used for both. Classes are the class folder names in
timm's (natural) sort order, class i being the model's output i. Images are preprocessed as Vim
evaluates them: timm's eval transform from the model's ``pretrained_cfg`` (resize to
img_size / crop_pct, bicubic, center crop to the model's img_size, ImageNet mean/std).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.data.readers.img_extensions import get_img_extensions
from timm.data.readers.reader_image_folder import find_images_and_targets
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import InputError
from ..progress import progress

SUBSET_SEED = 0


def split_dirs(root: str | os.PathLike) -> tuple[Path, Path]:
    """(calibration folder, evaluation folder) of ``root``: (root/train, root/val) or (root, root)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"image folder not found: {root}")
    train, val = root / "train", root / "val"
    if train.is_dir() and val.is_dir():
        return train, val
    if train.is_dir() or val.is_dir():
        have, lack = ("train", "val") if train.is_dir() else ("val", "train")
        raise InputError(
            f"{root} has {have}/ but no {lack}/: give a folder with both (the ImageNet layout) "
            f"or the image folder itself ({root / have})"
        )
    return root, root


def eval_transform(model: nn.Module, image_size: tuple[int, int] | None = None) -> Callable[[Image.Image], Tensor]:
    """timm's eval transform for ``model`` (a zoo model, which carries ``pretrained_cfg``):
    RGB PIL image -> (3, H, W) float32 normalised tensor at the model's image size, or at ``image_size``
    (H, W) where given (a quantized model's: the size its scales were calibrated for)."""
    if not hasattr(model, "pretrained_cfg"):
        raise InputError(
            f"{type(model).__name__} has no pretrained_cfg: build it with ptq4vm_fx.models.create_model"
        )
    config = resolve_data_config(model=model)
    if image_size is not None:
        config["input_size"] = (config["input_size"][0], *image_size)
    if config["input_size"][0] != 3:
        raise InputError(
            f"image folders hold RGB images but {getattr(model, 'model_name', 'the model')} takes "
            f"{config['input_size'][0]}-channel input (the bundled digits model uses the bundled data)"
        )
    return create_transform(**config, is_training=False)


class ImageFolder(Dataset):
    """The images under root/<class>/…; items are (transform(image) (3, H, W) float32, class index)."""

    def __init__(self, root: str | os.PathLike, transform: Callable[[Image.Image], Tensor]):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"image folder not found: {self.root}")
        samples, class_to_idx = find_images_and_targets(str(self.root))
        if not samples:
            raise InputError(
                f"no images in {self.root}: expected {self.root}/<class>/<image> with one of the extensions "
                f"{', '.join(get_img_extensions())}"
            )
        loose = [path for path, _ in samples if Path(path).parent == self.root]
        if loose:
            raise InputError(
                f"{self.root} holds images outside class folders (e.g. {Path(loose[0]).name}): "
                f"expected {self.root}/<class>/<image>"
            )
        self.samples = samples
        self.classes = sorted(class_to_idx, key=class_to_idx.get)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except OSError as exc:  # PIL's UnidentifiedImageError and truncated-file errors are OSErrors
            raise InputError(f"cannot read image {path}: {exc}") from exc
        return self.transform(rgb), label


def check_classes(dataset: ImageFolder, num_classes: int) -> None:
    """Raise unless the folder has one class folder per output of the model's head."""
    if len(dataset.classes) != num_classes:
        raise InputError(
            f"{dataset.root} has {len(dataset.classes)} class folders but the model's head has "
            f"{num_classes} classes"
        )


def load_subset(
    dataset: Dataset,
    count: int,
    batch_size: int = 64,
    workers: int = 0,
    seed: int = SUBSET_SEED,
    desc: str = "loading images",
) -> tuple[Tensor, Tensor]:
    """``count`` items drawn without replacement with a fixed seed, as (images (count, C, H, W)
    float32, labels (count,) int64). The same ``seed`` draws the same images on every machine."""
    if not 1 <= count <= len(dataset):
        raise InputError(f"cannot draw {count} images from a set of {len(dataset)}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
    loader = DataLoader(Subset(dataset, order.tolist()), batch_size=batch_size, num_workers=workers)
    images, labels = [], []
    with progress(total=count, desc=desc, unit="img") as bar:
        for x, y in loader:
            images.append(x)
            labels.append(y)
            bar.update(len(y))
    return torch.cat(images), torch.cat(labels)
