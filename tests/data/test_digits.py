import pytest
import torch

from ptq4vm_fx.evaluate import topk_accuracy


def test_splits_are_fixed_disjoint_and_normalised(digits):
    sizes = {k: len(v.labels) for k, v in digits.items()}
    assert sizes == {"test": 360, "calib": 256, "train": 1181}
    assert digits["test"].images.shape == (360, 1, 8, 8)
    assert abs(digits["train"].images.mean().item()) < 1e-5
    flat = {k: {tuple(x.flatten().tolist()) for x in v.images} for k, v in digits.items()}
    assert len(flat["test"] & flat["calib"]) < 3  # the digits set has a few duplicate images
    from ptq4vm_fx.data.digits import load_digits_splits
    assert torch.equal(load_digits_splits()["test"].labels, digits["test"].labels)


def test_bundled_model_reaches_95_percent(float_model, digits):
    with torch.no_grad():
        logits = float_model(digits["test"].images)
    assert topk_accuracy(logits, digits["test"].labels) >= 95.0


def test_the_public_accessors_give_the_bundled_model_and_splits(digits):
    from ptq4vm_fx.data import MODEL_NAME, bundled_digits, bundled_model
    from ptq4vm_fx.errors import InputError

    images, labels = bundled_digits("calib")
    assert images.shape == (256, 1, 8, 8) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert torch.equal(images, digits["calib"].images) and torch.equal(labels, digits["calib"].labels)
    assert torch.equal(bundled_digits("test")[1], digits["test"].labels)
    model = bundled_model()
    assert model.model_name == MODEL_NAME and not model.training
    with pytest.raises(InputError, match="unknown split 'val' of the bundled digits; choose one of train, calib, test"):
        bundled_digits("val")


@pytest.mark.parametrize("name", ["vmamba_digits", "local_vssm_digits", "local_vim_digits"])
def test_each_family_has_a_bundled_model_reaching_95_percent(name, digits):
    """One trained model per family (scripts/train_digits.py --model NAME), each under 500 KB."""
    from ptq4vm_fx.data import bundled_model
    from ptq4vm_fx.data.bundled import checkpoint_path
    from ptq4vm_fx.models.family import family_of

    model = bundled_model(name)
    assert model.model_name == name and not model.training
    assert family_of(model).name == name.removesuffix("_digits")
    assert checkpoint_path(name).stat().st_size < 500_000
    with torch.no_grad():
        assert topk_accuracy(model(digits["test"].images), digits["test"].labels) >= 95.0


def test_an_unknown_bundled_model_is_named():
    from ptq4vm_fx.data import bundled_model
    from ptq4vm_fx.errors import InputError

    with pytest.raises(InputError, match="no bundled model 'vim_tiny_patch16_224'; bundled: vim_digits, vmamba_digits"):
        bundled_model("vim_tiny_patch16_224")
