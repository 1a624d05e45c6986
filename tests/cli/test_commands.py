import importlib.metadata
import io
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ptq4vm_fx.cli import main
from tests.conftest import make_image_folder
from tests.lowering.lowering_helpers import EMULATES_CASTS_ON_CPU


def test_quantize_writes_metrics_and_a_loadable_model(tmp_path, capsys):
    out, metrics = tmp_path / "q.pt", tmp_path / "m.json"
    assert (
        main(
            [
                "quantize",
                "--method",
                "pts_smooth",
                "--preset",
                "w8a8",
                "--output",
                str(out),
                "--json",
                str(metrics),
                "--quiet",
            ]
        )
        == 0
    )
    result = json.loads(metrics.read_text())
    for key in ("float_top1", "quant_top1", "sqnr_db", "calibration_seconds", "preset", "method"):
        assert key in result
    assert result["preset"] == "w8a8" and result["method"] == "pts_smooth"
    assert result["quant_top1"] >= result["float_top1"] - 1.0
    assert out.stat().st_size > 0
    assert "pts_smooth-w8a8: float top-1" in capsys.readouterr().out


def test_sweep_prints_one_table(capsys):
    assert main(["sweep", "--methods", "minmax", "pts", "--presets", "w8a8", "w4a4", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| method" in out and out.count("| minmax") == 2 and out.count("| pts ") == 2


def test_bad_input_exits_2_with_a_message(capsys):
    assert main(["quantize", "--model", "vim_huge", "--quiet"]) == 2
    assert "unknown model 'vim_huge'" in capsys.readouterr().err
    assert main(["quantize", "--model", "vim_tiny_patch16_224", "--quiet"]) == 2
    assert "--checkpoint is required" in capsys.readouterr().err
    assert main(["quantize", "--calib-images", "5000", "--quiet"]) == 2
    assert "has 256 calibration images" in capsys.readouterr().err


def test_console_script_is_installed(capsys):
    """``ptq4vm`` is installed beside the interpreter and runs ``ptq4vm_fx.cli:main``, whose --help lists
    the commands. (``python -m ptq4vm_fx.cli`` in a process of its own: test_eval_in_a_real_process and
    tests/cli/test_errors.py's test_bad_input_in_a_process_of_its_own.)"""
    (script,) = [ep for ep in importlib.metadata.entry_points(group="console_scripts") if ep.name == "ptq4vm"]
    assert script.load() is main and Path(sys.executable).with_name("ptq4vm").is_file()
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "quantize" in capsys.readouterr().out


# ---- eval on the bundled data ----------------------------------------------------------------------


def test_a_saved_bundled_model_evaluates_with_no_other_argument(tmp_path, capsys):
    q, metrics, evaluation = tmp_path / "q.pt", tmp_path / "m.json", tmp_path / "e.json"
    assert (
        main(["quantize", "--method", "pts_smooth", "--output", str(q), "--json", str(metrics), "--quiet"])
        == 0
    )
    assert main(["eval", "--quantized", str(q), "--json", str(evaluation), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "vim_digits on bundled digits: 360 images" in out and "| quantized |" in out and "images/s" in out
    m, e = json.loads(metrics.read_text()), json.loads(evaluation.read_text())
    assert e["quantized"]["top1"] == m["quant_top1"] and e["quantized"]["images"] == 360
    assert e["quantized"]["images_per_second"] > 0 and "float" not in e
    assert main(["eval", "--json", str(evaluation), "--quiet"]) == 0  # the bundled float model
    assert json.loads(evaluation.read_text())["float"]["top1"] == m["float_top1"]

    # the compiled model (the ptq4vm backend; on the CPU its fused ops run their references)
    assert main(["eval", "--quantized", str(q), "--compile", "--json", str(evaluation), "--quiet"]) == 0
    assert "compiled (ptq4vm backend) vs eager quantized: logits SQNR" in capsys.readouterr().out
    e = json.loads(evaluation.read_text())
    assert e["compiled"]["top1"] == e["quantized"]["top1"] == m["quant_top1"] and e["compiled"]["images"] == 360
    assert e["compiled_vs_eager_sqnr_db"] >= 40

    # the same in fp16 (the float parts in half precision, the scales in fp32)
    args = ["eval", "--quantized", str(q), "--compile", "--dtype", "float16", "--json", str(evaluation), "--quiet"]
    assert main(args) == 0
    assert "360 images, 1 process(es), cpu, float16" in capsys.readouterr().out
    e = json.loads(evaluation.read_text())
    assert e["dtype"] == "float16" and e["compiled"]["top1"] == e["quantized"]["top1"]
    assert e["compiled_vs_eager_sqnr_db"] >= (40 if EMULATES_CASTS_ON_CPU else 30)
    assert abs(e["quantized"]["top1"] - m["quant_top1"]) <= 1.0


# ---- an ImageNet-layout folder and a user's checkpoint ----------------------------------------------


def test_quantize_eval_sweep_on_an_image_folder(image_folder, tiny_cli_model, tmp_path, capsys):
    q, metrics, evaluation = tmp_path / "q.pt", tmp_path / "m.json", tmp_path / "e.json"
    data = ["--data", str(image_folder), "--workers", "0", "--quiet"]
    assert (
        main(
            [
                "quantize",
                *tiny_cli_model,
                *data,
                "--method",
                "pts_smooth",
                "--calib-images",
                "10",
                "--output",
                str(q),
                "--json",
                str(metrics),
            ]
        )
        == 0
    )
    m = json.loads(metrics.read_text())
    assert m["data"] == str(image_folder / "val") and m["eval_images"] == 15 and m["calib_images"] == 10
    assert (
        main(
            [
                "eval",
                "--quantized",
                str(q),
                "--checkpoint",
                tiny_cli_model[3],
                *data,
                "--json",
                str(evaluation),
            ]
        )
        == 0
    )
    e = json.loads(evaluation.read_text())
    assert (e["float"]["top1"], e["quantized"]["top1"]) == (m["float_top1"], m["quant_top1"])
    assert e["sqnr_db"] == pytest.approx(m["sqnr_db"]) and e["model"] == "vim_tiny_patch16_224"
    assert "top-1 drop" in capsys.readouterr().out
    assert (
        main(
            [
                "sweep",
                *tiny_cli_model,
                *data,
                "--calib-images",
                "10",
                "--methods",
                "minmax",
                "pts",
                "--presets",
                "w8a8",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "on 15 images of" in out and "10 calibration images" in out
    assert out.count("| minmax") == 1 and out.count("| pts ") == 1


def test_folder_problems_exit_2_and_say_what_is_wrong(image_folder, tiny_cli_model, tmp_path, capsys):
    def error(*argv):
        assert main([*argv, "--quiet"]) == 2
        return capsys.readouterr().err

    quantize = ["quantize", *tiny_cli_model, "--workers", "0"]
    assert "image folder not found: " + str(tmp_path / "nowhere") in error(
        *quantize, "--data", str(tmp_path / "nowhere")
    )
    (tmp_path / "empty").mkdir()
    assert "no images in " + str(tmp_path / "empty") in error(*quantize, "--data", str(tmp_path / "empty"))
    (tmp_path / "half" / "train").mkdir(parents=True)
    assert "has train/ but no val/" in error(*quantize, "--data", str(tmp_path / "half"))
    assert "--calib-images 100: " + str(image_folder / "train") + " has 15 images" in error(
        *quantize, "--data", str(image_folder), "--calib-images", "100"
    )
    two = tmp_path / "two"
    make_image_folder(two)
    shutil.rmtree(two / "fox")
    assert "has 2 class folders but the model's head has 3 classes" in error(*quantize, "--data", str(two))
    assert "this model is vim_tiny_patch16_224: give --data DIR" in error(*quantize)
    assert "vim_digits takes 1-channel input" in error("eval", "--data", str(image_folder))


def test_an_unreadable_image_is_named_also_from_loader_workers(
    image_folder, tiny_cli_model, tmp_path, capsys
):
    broken = tmp_path / "broken"
    make_image_folder(broken)
    (broken / "dog" / "3.png").write_bytes(b"\x89PNG, then nothing")
    assert main(["eval", *tiny_cli_model, "--data", str(broken), "--workers", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ptq4vm: error: cannot read image " + str(broken / "dog" / "3.png"))
    assert "Traceback" not in err and err.count("\n") == 1


def test_model_and_file_problems_exit_2(tiny_quantized, tiny_cli_model, tmp_path, capsys):
    def error(*argv):
        assert main([*argv, "--quiet"]) == 2
        return capsys.readouterr().err

    assert "no such file: " + str(tmp_path / "q.pt") in error("eval", "--quantized", str(tmp_path / "q.pt"))
    assert "--compile runs the quantized model through the ptq4vm backend: give --quantized" in error(
        "eval", "--compile")
    assert "holds a quantized vim_tiny_patch16_224, not vim_digits" in error(
        "eval", "--quantized", str(tiny_quantized), "--model", "vim_digits"
    )
    assert "give the float checkpoint of vim_tiny_patch16_224 with --checkpoint" in error(
        "report", str(tiny_quantized)
    )
    assert "--model-kwargs: " in error(
        "eval", "--quantized", str(tiny_quantized), "--model-kwargs", "depth=3"
    )
    if not torch.cuda.is_available():
        assert "device cuda was asked for but no CUDA GPU is available" in error("eval", "--device", "cuda")
        assert "device cuda was asked for but no CUDA GPU is available" in error("quantize", "--device", "cuda")
    for argv, message in [
        (["eval", "--model-kwargs", "depth"], "expected KEY=VALUE"),
        (["quantize", "--calib-images", "0"], "must be at least 1, got 0"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


# ---- progress bars and logs ------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize(
    "quiet, terminal, bars", [(False, True, True), (True, True, False), (False, False, False)]
)
def test_progress_bars_only_on_a_terminal_and_not_quiet(monkeypatch, capsys, quiet, terminal, bars):
    stderr = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert main(["eval", *(["--quiet"] if quiet else [])]) == 0
    assert ("float eval" in stderr.getvalue()) == bars
    assert ("img/s" in stderr.getvalue()) == bars


def test_verbose_logs_the_per_block_jlss_losses(image_folder, tiny_cli_model, caplog):
    caplog.set_level(logging.DEBUG, logger="ptq4vm_fx")
    data = ["--data", str(image_folder), "--workers", "0", "--calib-images", "6", "--quiet"]
    assert main(["quantize", *tiny_cli_model, *data, "--verbose"]) == 0
    messages = [
        r.getMessage() for r in caplog.records if r.name.startswith("ptq4vm_fx") and r.levelno == logging.INFO
    ]
    assert any(m.startswith("layers.0: 1-cos") for m in messages) and any(
        m.startswith("layers.1: 1-cos") for m in messages
    )
    caplog.clear()
    assert main(["quantize", *tiny_cli_model, *data, "--method", "pts"]) == 0
    assert not [r for r in caplog.records if r.name.startswith("ptq4vm_fx") and r.levelno == logging.INFO]


def test_eval_in_a_real_process(tiny_quantized, image_folder):
    """The console script, compiling too: stderr stays empty (on a CPU machine with a CUDA toolkit, torch's
    "No CUDA runtime is found, using CUDA_HOME=..." notice is kept off the screen)."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ptq4vm_fx.cli",
            "eval",
            "--quantized",
            str(tiny_quantized),
            "--data",
            str(image_folder),
            "--workers",
            "1",
            "--compile",
            "--batch-size",
            "8",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "vim_tiny_patch16_224 on " + str(image_folder / "val") + ": 15 images" in run.stdout
    assert "| quantized |" in run.stdout and "| compiled  |" in run.stdout and run.stderr == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch logs the notice only without a CUDA GPU")
def test_only_the_cuda_home_notice_is_hidden():
    from ptq4vm_fx.progress import hide_cuda_home_notice

    hide_cuda_home_notice()
    logger = logging.getLogger("torch.utils.cpp_extension")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local/cuda")
        logger.error("Error building extension 'ptq4vm'")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["Error building extension 'ptq4vm'"]


def test_vq_quantize_eval_report_and_sweep(tmp_path, capsys):
    """The weight methods through every command: 2-bit k-means VQ on the bundled model, saved, evaluated
    (eager and compiled), reported; a sweep runs only the presets each method takes."""
    out = tmp_path / "vq.pt"
    assert main(["quantize", "--method", "vq_kmeans", "--output", str(out), "--json", str(tmp_path / "m.json"),
                 "--quiet"]) == 0  # the weight methods' default preset: w2a16
    printed = capsys.readouterr().out
    assert "vq_kmeans-w2a16: float top-1 98.33%" in printed and "peak RSS" in printed
    assert "kept float: 8 linear(s)" in printed and "layers.0.mixer.dt_proj: in_features=3 is not divisible" in printed
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["method"] == "vq_kmeans" and metrics["quant_top1"] > 90 and metrics["peak_rss_mib"] > 100
    assert main(["eval", "--quantized", str(out), "--compile", "--batch-size", "90", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| compiled  |" in printed
    assert float(printed.split("vs eager quantized: logits SQNR ")[1].split(" dB")[0]) > 80
    assert main(["report", str(out), "--output", str(tmp_path / "report"), "--images", "16", "--quiet"]) == 0
    assert "VQ weights: 2 bits per weight nominal" in capsys.readouterr().out
    assert (tmp_path / "report" / "codebook_usage.png").exists()
    assert main(["sweep", "--methods", "rtn", "vq_kmeans", "pts", "--presets", "w1a16", "w8a8", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("| rtn ") == printed.count("| vq_kmeans ") == printed.count("| pts ") == 1
    assert main(["sweep", "--methods", "vimvq", "--presets", "w4a4", "--quiet"]) == 2
    assert "no method of vimvq takes preset w4a4" in capsys.readouterr().err
