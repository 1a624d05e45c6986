"""The public workflow on the bundled model: faithfulness, accuracy, bad input."""

import pytest
import torch

import ptq4vm_fx
from ptq4vm_fx.errors import InputError
from ptq4vm_fx.evaluate import sqnr_db, topk_accuracy
from ptq4vm_fx.quant.linear import QuantizedLinear

# Integer vs fake-quant path of the same converted state: only float rounding differs.
FAITHFUL_SQNR_DB = 40.0


def test_integer_model_is_faithful_to_the_simulation(ptq4vm_w8a8, digits):
    _, qmodel, sim = ptq4vm_w8a8
    x = digits["test"].images
    with torch.no_grad():
        yq, ys = qmodel(x), sim(x)
    assert sqnr_db(ys, yq) >= FAITHFUL_SQNR_DB
    assert (yq.argmax(1) == ys.argmax(1)).float().mean().item() >= 0.995
    packed = [m for m in qmodel.modules() if isinstance(m, QuantizedLinear)]
    assert len(packed) == 24 and all(m.wq.dtype == torch.int8 for m in packed)


def test_w8a8_ptq4vm_within_0p3_points_of_float(ptq4vm_w8a8, float_model, digits):
    _, qmodel, _ = ptq4vm_w8a8
    x, y = digits["test"].images, digits["test"].labels
    with torch.no_grad():
        float_top1, quant_top1 = topk_accuracy(float_model(x), y), topk_accuracy(qmodel(x), y)
    assert quant_top1 >= float_top1 - 0.3


def test_convert_leaves_the_prepared_model_reusable(ptq4vm_w8a8):
    prepared, _, _ = ptq4vm_w8a8
    assert prepared.meta["stage"] == "prepared"
    with pytest.raises(ValueError, match="takes the module returned by ptq4vm_fx.prepare"):
        ptq4vm_fx.convert(ptq4vm_w8a8[1])


def test_wrong_image_size_after_quantization_is_named(ptq4vm_w8a8):
    with pytest.raises(InputError, match="input image size 16x16 does not match the model's 8x8"):
        ptq4vm_w8a8[1](torch.randn(2, 1, 16, 16))
    with pytest.raises(InputError, match=r"input images have 3 channel\(s\) but the model takes 1-channel images"):
        ptq4vm_w8a8[1](torch.randn(2, 3, 8, 8))


def test_quantized_linear_refuses_another_token_count(ptq4vm_w8a8):
    linear = ptq4vm_w8a8[1].get_submodule("layers.0").get_submodule("mixer.in_proj")
    with pytest.raises(ValueError, match="calibrated for 17 tokens"):
        linear(torch.randn(2, 65, 48))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_quantized_model_in_half_precision_keeps_its_scales(ptq4vm_w8a8, digits, dtype):
    """``qmodel.to(dtype)`` runs the float parts in half; the quantization parameters stay fp32
    (exact copies), the accuracy stays where fp32 has it."""
    import copy

    _, qmodel, _ = ptq4vm_w8a8
    half = copy.deepcopy(qmodel).to(dtype)
    for name, m in qmodel.named_modules():
        if isinstance(m, QuantizedLinear):
            h = half.get_submodule(name)
            assert all(torch.equal(h.get_buffer(b), m.get_buffer(b)) for b in ("w_scale", "act_scale", "inv_smooth"))
    x, y = digits["test"].images, digits["test"].labels
    with torch.no_grad():
        logits = half(x.to(dtype))
        assert logits.dtype == dtype
        assert topk_accuracy(logits.float(), y) >= topk_accuracy(qmodel(x), y) - 1.0


def test_unknown_preset_method_and_config_type():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="unknown preset 'w3a3'"):
        ptq4vm_fx.prepare(model, torch.randn(1, 2), "w3a3")
    with pytest.raises(ValueError, match="unknown method 'gptq'"):
        ptq4vm_fx.QuantConfig(method="gptq")
    with pytest.raises(InputError, match="unsupported model Linear"):
        ptq4vm_fx.prepare(model, torch.randn(1, 2), "w8a8")


def test_example_inputs_of_the_wrong_size_are_named(float_model):
    with pytest.raises(InputError, match="input image size 9x9"):
        ptq4vm_fx.prepare(float_model, torch.randn(1, 1, 9, 9), "w8a8")


def test_a_wrong_channel_count_is_named_by_prepare_and_forward(tiny):
    expected = r"input images have 1 channel\(s\) but the model takes 3-channel images \(batch of shape \(2, 1, 32, 32"
    x = torch.randn(2, 1, 32, 32)
    with pytest.raises(InputError, match=expected):
        ptq4vm_fx.prepare(tiny, x, "w8a8")
    with pytest.raises(InputError, match=expected):
        tiny(x)
    prepared = ptq4vm_fx.prepare(tiny, torch.randn(1, 3, 32, 32), ptq4vm_fx.QuantConfig.preset_config("w8a8", "pts"))
    with pytest.raises(InputError, match=expected):
        prepared(x)  # a calibration batch
    with pytest.raises(InputError, match=r"of shape \(batch, channels, H, W\), got \(3, 32, 32\)"):
        tiny(torch.randn(3, 32, 32))


def test_unknown_model_configuration_keys_list_the_valid_ones():
    import timm

    with pytest.raises(InputError, match="unknown model configuration key foo; valid keys: .*depth, .*embed_dim"):
        timm.create_model("vim_tiny_patch16_224", foo=1)
    assert timm.create_model("vim_tiny_patch16_224", depth=1, img_size=32, in_chans=1).config["channels"] == 1
    with pytest.raises(InputError, match=r"vim_tiny_patch16_224 with \{'img_size': 'a'\} is not a valid configuration"):
        timm.create_model("vim_tiny_patch16_224", img_size="a")
