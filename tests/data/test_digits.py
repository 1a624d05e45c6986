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
