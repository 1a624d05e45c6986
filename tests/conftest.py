"""Shared fixtures. Triton runs through its interpreter when there is no GPU; TRITON_INTERPRET
must be set before triton is first imported, so it is set here, before anything else."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import ptq4vm_fx  # noqa: E402
from ptq4vm_fx.data.bundled import bundled_model  # noqa: E402
from ptq4vm_fx.data.digits import load_digits_splits  # noqa: E402
from ptq4vm_fx.models import create_vim  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "requires_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def digits():
    return load_digits_splits()


@pytest.fixture(scope="session")
def float_model():
    """The bundled, trained digits Vim (eval mode). Do not modify it in a test."""
    return bundled_model()


def tiny_vim(**overrides):
    """A small random Vim: 2 blocks, 32x32 images, 8x8 patches -> 17 tokens (an odd count)."""
    torch.manual_seed(0)
    kw = dict(depth=2, img_size=32, patch_size=8, stride=8, embed_dim=32, num_classes=10)
    kw.update(overrides)
    return create_vim("vim_tiny_patch16_224", **kw).eval()


@pytest.fixture
def tiny():
    return tiny_vim()


def randomly_smoothed(model, x, image_size=None, linears=None):
    """``model`` captured (at ``image_size``, for a family that takes any size) with ``linears`` (default:
    its family's) as pts_smooth FakeQuantLinears observed on ``x``, then quantization off and random
    smoothing scales (seed 0): a float GraphModule equal to ``model`` up to rounding, on which
    fold_smoothing's folds can be checked for exactness."""
    from ptq4vm_fx.capture import capture
    from ptq4vm_fx.models.family import family_of
    from ptq4vm_fx.passes.insert_observers import insert_observers
    from ptq4vm_fx.passes.quantize_linears import quantize_linears
    from ptq4vm_fx.quant.linear import FakeQuantLinear

    family = family_of(model)
    gm = capture(model, image_size)
    insert_observers(gm, family.linears if linears is None else linears)
    with torch.no_grad():
        gm(x)
    quantize_linears(gm, ptq4vm_fx.QuantConfig(method="pts_smooth", linears=linears).for_family(family))
    g = torch.Generator().manual_seed(0)
    for module in gm.modules():
        if isinstance(module, FakeQuantLinear):
            module.quant_enabled = False
            with torch.no_grad():
                module.log_smooth.copy_(torch.randn(module.log_smooth.shape, generator=g))
    return gm


def calibrated(model, images, config, batch_size=64):
    prepared = ptq4vm_fx.prepare(model, images[:1], config)
    with torch.no_grad():
        for batch in images.split(batch_size):
            prepared(batch)
    return prepared


@pytest.fixture(scope="session")
def ptq4vm_w8a8(float_model, digits):
    """(prepared, integer model, simulated model) of the full method at W8A8 on the bundled model."""
    prepared = calibrated(float_model, digits["calib"].images, "w8a8")
    return prepared, ptq4vm_fx.convert(prepared), ptq4vm_fx.convert(prepared, simulate=True)


# ---- real-data workflow: an ImageNet-layout folder and a small 3-class Vim checkpoint -------------

TINY_CLASSES = ("cat", "dog", "fox")
TINY_KWARGS = {"depth": 2, "img_size": 32, "patch_size": 8, "stride": 8, "embed_dim": 32,
               "num_classes": len(TINY_CLASSES)}


def make_image_folder(root, per_class=5, seed=0):
    """root/<class>/<i>.png|jpg for TINY_CLASSES: random images of varying size, one grayscale per class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in TINY_CLASSES:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(36 + 3 * i, 44 - 2 * i, 3), dtype=np.uint8)
            image = Image.fromarray(pixels).convert("L" if i == 0 else "RGB")
            image.save(root / c / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """DIR with train/ and val/, each 3 classes x 5 images (the ImageNet layout)."""
    root = tmp_path_factory.mktemp("imagenet")
    make_image_folder(root / "train", seed=0)
    make_image_folder(root / "val", seed=1)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Path of a random 3-class 32x32 Vim (TINY_KWARGS) saved as {'model': state_dict}."""
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pt"
    torch.save({"model": tiny_vim(num_classes=len(TINY_CLASSES)).state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def tiny_cli_model(tiny_checkpoint):
    """The CLI arguments that name the tiny checkpoint's model."""
    return ["--model", "vim_tiny_patch16_224", "--checkpoint", str(tiny_checkpoint),
            "--model-kwargs", *(f"{k}={v}" for k, v in TINY_KWARGS.items())]


@pytest.fixture(scope="session")
def tiny_quantized(tmp_path_factory, image_folder):
    """Path of the tiny model quantized with the full PTQ4VM method (JLSS included) on 12 train images."""
    from ptq4vm_fx.data.imagefolder import ImageFolder, eval_transform, load_subset
    from ptq4vm_fx.pipeline import calibrate_and_convert

    model = tiny_vim(num_classes=len(TINY_CLASSES))
    images, _ = load_subset(ImageFolder(image_folder / "train", eval_transform(model)), 12)
    qmodel, _ = calibrate_and_convert(model, images, ptq4vm_fx.QuantConfig.preset_config("w8a8"))
    path = tmp_path_factory.mktemp("quantized") / "tiny_q.pt"
    ptq4vm_fx.save(qmodel, path)
    return path
