import json
import subprocess
import sys

from ptq4vm_fx.cli import main


def test_quantize_writes_metrics_and_a_loadable_model(tmp_path, capsys):
    out, metrics = tmp_path / "q.pt", tmp_path / "m.json"
    assert main(["quantize", "--method", "pts_smooth", "--preset", "w8a8", "--output", str(out),
                 "--json", str(metrics), "--quiet"]) == 0
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


def test_console_script_is_installed():
    run = subprocess.run([sys.executable, "-m", "ptq4vm_fx.cli", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "quantize" in run.stdout
