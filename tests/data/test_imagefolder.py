import pytest
import torch
from torchvision.transforms import CenterCrop, InterpolationMode, Normalize, Resize

from ptq4vm_fx.data.imagefolder import ImageFolder, check_classes, eval_transform, load_subset, split_dirs
from ptq4vm_fx.errors import InputError
from ptq4vm_fx.models import create_vim
from tests.conftest import TINY_CLASSES, make_image_folder, tiny_vim


def _steps(transform):
    return {type(t): t for t in transform.transforms}


def test_vim_eval_transform_is_resize_256_crop_224_bicubic_imagenet_norm():
    with torch.device("meta"):
        model = create_vim("vim_tiny_patch16_224")
    steps = _steps(eval_transform(model))
    assert steps[Resize].size == 256 and steps[Resize].interpolation == InterpolationMode.BICUBIC
    assert steps[CenterCrop].size == (224, 224)
    assert steps[Normalize].mean.tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert steps[Normalize].std.tolist() == pytest.approx([0.229, 0.224, 0.225])


def test_small_models_get_the_transform_scaled_to_their_image_size():
    steps = _steps(eval_transform(tiny_vim()))
    assert steps[Resize].size == 36 and steps[CenterCrop].size == (32, 32)  # 32 / 0.875 = 36.6


def test_folder_items_are_normalised_model_sized_tensors(image_folder):
    data = ImageFolder(image_folder / "val", eval_transform(tiny_vim()))
    assert len(data) == 15 and data.classes == list(TINY_CLASSES)
    image, label = data[0]  # 0.jpg of cat is grayscale: converted to RGB
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 0
    assert -3 < image.mean().item() < 3 and image.std().item() > 0.1
    assert [label for _, label in data.samples] == [0] * 5 + [1] * 5 + [2] * 5


def test_split_dirs(image_folder, tmp_path):
    assert split_dirs(image_folder) == (image_folder / "train", image_folder / "val")
    assert split_dirs(image_folder / "val") == (image_folder / "val", image_folder / "val")
    (tmp_path / "train").mkdir()
    with pytest.raises(InputError, match="has train/ but no val/"):
        split_dirs(tmp_path)
    with pytest.raises(InputError, match="image folder not found: .*nowhere"):
        split_dirs(tmp_path / "nowhere")


def test_missing_empty_and_flat_folders_are_named(tmp_path):
    transform = eval_transform(tiny_vim())
    with pytest.raises(InputError, match="image folder not found"):
        ImageFolder(tmp_path / "nowhere", transform)
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match=r"no images in .*empty: expected .*<class>/<image>"):
        ImageFolder(tmp_path / "empty", transform)
    make_image_folder(tmp_path / "flat")
    (tmp_path / "flat" / "cat" / "1.png").rename(tmp_path / "flat" / "loose.png")
    with pytest.raises(InputError, match="images outside class folders .*loose.png"):
        ImageFolder(tmp_path / "flat", transform)


def test_unreadable_image_names_the_file(tmp_path):
    make_image_folder(tmp_path / "data")
    (tmp_path / "data" / "dog" / "3.png").write_bytes(b"\x89PNG truncated")
    data = ImageFolder(tmp_path / "data", eval_transform(tiny_vim()))
    with pytest.raises(InputError, match=r"cannot read image .*dog/3\.png"):
        data[8]


def test_class_count_must_match_the_head(image_folder):
    data = ImageFolder(image_folder / "val", eval_transform(tiny_vim()))
    check_classes(data, 3)
    with pytest.raises(InputError, match="has 3 class folders but the model's head has 1000 classes"):
        check_classes(data, 1000)


def test_rgb_folders_need_a_3_channel_model(float_model):
    with pytest.raises(InputError, match="vim_digits takes 1-channel input"):
        eval_transform(float_model)


def test_subset_is_fixed_by_the_seed(image_folder):
    data = ImageFolder(image_folder / "train", eval_transform(tiny_vim()))
    a, la = load_subset(data, 6)
    b, lb = load_subset(data, 6, batch_size=4)
    assert a.shape == (6, 3, 32, 32) and torch.equal(a, b) and torch.equal(la, lb)
    assert len({tuple(x.flatten()[:20].tolist()) for x in a}) == 6  # drawn without replacement
    assert not torch.equal(load_subset(data, 6, seed=1)[0], a)
    with pytest.raises(InputError, match="cannot draw 16 images from a set of 15"):
        load_subset(data, 16)
