import base64
import io
import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

import ptq4vm_fx
from ptq4vm_fx.cli import main
from ptq4vm_fx.evaluate import sqnr_db
from ptq4vm_fx.report.analysis import (
    HISTOGRAM_BINS,
    detail_block,
    quantized_layers,
    smoothed_float_weights,
)
from tests.conftest import calibrated

PLOTS = ("token_ranges", "channel_absmax", "histograms", "block_cosine")
TINY_TOKENS = 17  # 4 x 4 patches + the class token


@pytest.fixture(scope="module")
def tiny_report(tiny_quantized, tiny_checkpoint, image_folder, tmp_path_factory):
    """The report of the tiny PTQ4VM model on the image folder, made as a user makes it."""
    out = tmp_path_factory.mktemp("report")
    assert main(["report", str(tiny_quantized), "--checkpoint", str(tiny_checkpoint), "--data", str(image_folder),
                 "--workers", "0", "--images", "12", "--output", str(out), "--quiet"]) == 0
    return out, json.loads((out / "report.json").read_text())


def _png(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def _assert_a_real_plot(pixels: np.ndarray):
    assert pixels.shape[0] >= 300 and pixels.shape[1] >= 400
    assert pixels.std() > 20  # not blank
    colours = {tuple(p) for p in pixels[::4, ::4].reshape(-1, 3)}
    assert len(colours) > 50  # lines, fills, text in several colours


def test_table_has_one_finite_row_per_quantized_linear(tiny_report, tiny_quantized):
    out, report = tiny_report
    layers = [name for name, _ in quantized_layers(ptq4vm_fx.load(tiny_quantized))]
    assert [row["layer"] for row in report["rows"]] == layers and len(layers) == 12
    for row in report["rows"]:
        assert row["bits"] == "W8A8"
        for key in ("act_min", "act_max", "clipped_pct", "weight_sqnr_db", "act_sqnr_db", "output_cosine"):
            assert math.isfinite(row[key]), (row["layer"], key)
        assert row["act_min"] < row["act_max"] and 0 <= row["clipped_pct"] < 20
        assert (
            row["weight_sqnr_db"] > 30 and row["act_sqnr_db"] > 10 and 0.99 < row["output_cosine"] <= 1 + 1e-6
        )
    markdown = (out / "layers.md").read_text()
    assert len(re.findall(r"^\| layers\.\d\.mixer\.\w+ ", markdown, re.MULTILINE)) == 12
    assert report["summary"]["images"] == 12 and report["summary"]["quantized_linears"] == 12


def test_plot_data_has_one_point_per_token_and_channel(tiny_report, tiny_quantized):
    _, report = tiny_report
    block = report["detail_block"]
    modules = dict(quantized_layers(ptq4vm_fx.load(tiny_quantized)))
    detail = [name for name in modules if name.startswith(block + ".")]
    assert len(detail) == 6 and set(report["token_ranges"]) == set(detail) == set(report["channel_absmax"])
    for name in detail:
        ranges = report["token_ranges"][name]
        assert all(len(ranges[k]) == TINY_TOKENS for k in ("x_min", "x_max", "quant_min", "quant_max"))
        assert all(lo <= hi for lo, hi in zip(ranges["x_min"], ranges["x_max"]))
        # what the quantizer represents per token: codes -128..127 (8 bits, signed) minus the zero point
        scale, zero_point = modules[name].static_act_qparams()
        torch.testing.assert_close(torch.tensor(ranges["quant_min"]), (-128 - zero_point) * scale)
        torch.testing.assert_close(torch.tensor(ranges["quant_max"]), (127 - zero_point) * scale)
        absmax = report["channel_absmax"][name]
        assert len(absmax["float"]) == len(absmax["smoothed"]) == modules[name].in_features
        hist = report["histograms"][name]
        assert len(hist["edges"]) == HISTOGRAM_BINS + 1 and len(hist["float"]) == HISTOGRAM_BINS
        values = 12 * TINY_TOKENS * modules[name].in_features  # few enough to be kept all
        assert sum(hist["float"]) == sum(hist["smoothed"]) == values
    assert list(report["blocks"]) == ["layers.0", "layers.1"]
    for stats in report["blocks"].values():
        assert 0.99 < stats["cos_before"] <= stats["cos_after"] + 1e-4 and len(stats["epoch_losses"]) == 10


def test_pngs_are_real_plots_and_the_html_embeds_them(tiny_report):
    out, _ = tiny_report
    html = (out / "index.html").read_text()
    embedded = [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]
    files = [(out / f"{name}.png").read_bytes() for name in PLOTS]
    assert embedded == files
    for data in files:
        _assert_a_real_plot(_png(data))
    assert html.count("<tr>") == 12 + 1 and "layers.1.mixer.out_proj" in html
    assert "<script" not in html and 'src="http' not in html  # self-contained


@pytest.fixture(scope="module")
def bundled_pts_smooth(float_model, digits):
    """(integer, simulated) models of one pts_smooth calibration of the bundled model: 1/m folded."""
    prepared = calibrated(
        float_model, digits["calib"].images[:128], ptq4vm_fx.QuantConfig.preset_config("w4a8", "pts_smooth")
    )
    return ptq4vm_fx.convert(prepared), ptq4vm_fx.convert(prepared, simulate=True)


def test_rebuilt_float_weights_of_an_integer_model_equal_the_exact_ones(bundled_pts_smooth, float_model):
    """From what the layers record (smoothing scales, x_proj's rows folded by dt_proj's 1/m), the
    integer model's smoothed float weights equal the fake-quant model's exact ``weight * m``."""
    integer, simulated = bundled_pts_smooth
    recovered = smoothed_float_weights(integer, float_model)
    modules = dict(quantized_layers(simulated))
    exact = {name: module.effective_weight() for name, module in modules.items()}
    assert list(recovered) == list(exact) and len(recovered) == 24
    assert sum(bool((m.row_fold != 1).any()) for m in modules.values()) == 8  # x_proj, x_proj_b of 4 blocks
    for name, module in quantized_layers(integer):
        w_dq = module.dequantized_weight()
        assert torch.allclose(w_dq, modules[name].dequantized_weight(), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(recovered[name], exact[name], rtol=1e-5, atol=1e-6, msg=name)
        assert abs(sqnr_db(recovered[name], w_dq) - sqnr_db(exact[name], w_dq)) < 1e-3, name


def test_bundled_report_without_block_stats(bundled_pts_smooth, tmp_path, capsys):
    ptq4vm_fx.save(bundled_pts_smooth[0], tmp_path / "q.pt")
    out = tmp_path / "report"
    assert (
        main(
            [
                "report",
                str(tmp_path / "q.pt"),
                "--output",
                str(out),
                "--images",
                "32",
                "--block",
                "0",
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "report on 32 images of bundled digits" in printed and f"wrote {out / 'index.html'}" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["detail_block"] == "layers.0" and report["blocks"] == {} and len(report["rows"]) == 24
    assert all(len(r["x_min"]) == 17 for r in report["token_ranges"].values())  # 8x8 digits, 2x2 patches
    assert (
        not (out / "block_cosine.png").exists()
        and "No per-block JLSS statistics" in (out / "index.html").read_text()
    )
    for name in PLOTS[:3]:
        _assert_a_real_plot(_png((out / f"{name}.png").read_bytes()))


def test_detail_block_choice(tiny_quantized, bundled_pts_smooth):
    qmodel = ptq4vm_fx.load(tiny_quantized)
    worst = max(qmodel.meta["block_stats"], key=lambda b: qmodel.meta["block_stats"][b]["loss_after"])
    assert detail_block(qmodel) == worst and detail_block(qmodel, 0) == "layers.0"
    assert detail_block(bundled_pts_smooth[0]) == "layers.2"  # no block stats: the middle of 4
    with pytest.raises(ValueError, match=r"block 5 does not exist: the model has blocks 0\.\.1"):
        detail_block(qmodel, 5)


@pytest.mark.parametrize("preset", ["w2a16", "w2a8"])
def test_vq_rows_give_bits_and_codebook_usage(float_model, digits, preset):
    from ptq4vm_fx.report.analysis import analyse
    from ptq4vm_fx.report.page import markdown

    qmodel = ptq4vm_fx.convert(calibrated(float_model, digits["calib"].images[:64],
                                          ptq4vm_fx.QuantConfig.preset_config(preset, "vq_kmeans")))
    analysis = analyse(qmodel, float_model, digits["test"].images[:16], digits["test"].labels[:16])
    assert len(analysis.rows) == 16  # dt_proj(_b) stay float: in_features 3, d = 4
    for row in analysis.rows:
        module = qmodel.get_submodule(row["layer"])
        assert row["bits"] == f"VQ2A{preset.split('a')[1]}" and row["nominal_bits"] == 2.0
        assert row["stored_bits"] == module.storage_bits > 2.0 and row["k"] == 256 and row["d"] == 4
        usage = row["codebook_usage"]
        assert sum(usage) == module.out_features * module.in_features // 4 and usage == sorted(usage, reverse=True)
        assert row["codewords_used"] == sum(c > 0 for c in usage) and 0 < row["code_entropy_bits"] <= 8
        w_eff = float_model.get_submodule(row["layer"]).weight * module.smooth  # the weight the codebook fits
        assert row["weight_sqnr_db"] == pytest.approx(sqnr_db(w_eff, module.weight()), abs=1e-3)
        assert (row["act_sqnr_db"] is None) == (preset == "w2a16") and 0.9 < row["output_cosine"] <= 1 + 1e-6
    assert analysis.summary["vq_nominal_bits"] == 2.0 and analysis.summary["vq_stored_bits"] > 2.0
    assert "| layers.0.mixer.in_proj " in markdown(analysis) and "/256 (" in markdown(analysis)
