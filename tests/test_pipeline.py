import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ptq4vm_fx.config import QuantConfig
from ptq4vm_fx.evaluate import evaluate, sqnr_db
from ptq4vm_fx.pipeline import calibrate_and_convert, quantize_and_evaluate


def test_quantize_and_evaluate_matches_separate_evaluations(float_model, digits):
    test = digits["test"]
    loader = DataLoader(TensorDataset(test.images, test.labels), batch_size=100)
    config = QuantConfig.preset_config("w8a8", "pts_smooth")
    qmodel, result = quantize_and_evaluate(
        float_model, digits["calib"].images[:64], loader, config, batch_size=32
    )
    float_eval, quant_eval = evaluate(float_model, loader), evaluate(qmodel, loader)
    assert (result.float_top1, result.float_top5) == (float_eval.top1, float_eval.top5)
    assert (result.quant_top1, result.quant_top5) == (quant_eval.top1, quant_eval.top5)
    assert result.sqnr_db == pytest.approx(sqnr_db(float_eval.logits, quant_eval.logits))
    assert result.calib_images == 64 and result.eval_images == 360 and result.calibration_seconds > 0
    assert result.to_dict()["top1_drop"] == pytest.approx(result.float_top1 - result.quant_top1)
    assert result.preset == "w8a8" and result.method == "pts_smooth"
    # a sweep reuses the float evaluation
    _, again = quantize_and_evaluate(float_model, digits["calib"].images[:64], loader, config, float_eval)
    assert again.quant_top1 == result.quant_top1 and again.sqnr_db == pytest.approx(result.sqnr_db)


def test_no_calibration_images_is_an_error(float_model):
    with pytest.raises(ValueError, match="no calibration images"):
        calibrate_and_convert(float_model, torch.empty(0, 1, 8, 8), QuantConfig.preset_config("w8a8", "pts"))
