"""The README: its Python snippet runs as written, its sweep tables come from a sweep's JSON, and the
files its commands write into the repository root are ignored by git."""

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _first_python_block() -> str:
    match = re.search(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
    assert match, "the README has no ```python block"
    return match.group(1)


def test_the_python_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    code = _first_python_block()
    for step in ("prepare(", "prepared(batch)", "convert(", 'torch.compile(qmodel, backend="ptq4vm")', "save(",
                 "load("):
        assert step in code
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    try:
        exec(compile(code, str(ROOT / "README.md"), "exec"), namespace)
    finally:
        torch._dynamo.reset()
    top1 = float(re.search(r"quantized top-1: ([\d.]+) %", capsys.readouterr().out).group(1))
    assert top1 >= 95.0
    assert (tmp_path / "q.pt").is_file() and namespace["qmodel"].meta["stage"] == "quantized"


def _readme_tables():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "scripts" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(method, preset, top1, sqnr, seconds):
    return {"model": "vim_digits", "data": "bundled digits", "method": method, "preset": preset,
            "float_top1": 98.33333, "float_top5": 100.0, "quant_top1": top1, "quant_top5": 100.0, "sqnr_db": sqnr,
            "calibration_seconds": seconds, "calib_images": 256, "eval_images": 360, "top1_drop": 98.33333 - top1}


def test_readme_tables_writes_what_the_sweep_json_says(tmp_path, capsys):
    script = _readme_tables()
    rows = [_row("minmax", "w8a8", 98.61111, 22.986, 0.346), _row("ptq4vm", "w8a8", 98.33333, 32.14, 16.05),
            _row("minmax", "w4a4", 79.44444, 3.49, 0.31), _row("ptq4vm", "w4a4", 98.05556, 14.83, 23.94)]
    (tmp_path / "sweep.json").write_text(json.dumps(rows))
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\nbefore\n\n<!-- sweep:begin -->\nstale table\n<!-- sweep:end -->\n\nafter\n")
    argv = [str(tmp_path / "sweep.json"), "--readme", str(readme), "--machine", "a test box"]
    assert script.main(argv) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n\n<!-- sweep:begin -->\n")
    assert text.endswith("<!-- sweep:end -->\n\nafter\n")
    assert "stale table" not in text
    lines = text.splitlines()
    assert lines.count("| bits | minmax | ptq4vm |") == 2
    assert "| W8A8 | 98.61 / 23.0 | 98.33 / 32.1 |" in lines and "| W4A4 | 79.44 / 3.5 | 98.06 / 14.8 |" in lines
    assert "| W8A8 | 0.3 | 16.1 |" in lines and "| W4A4 | 0.3 | 23.9 |" in lines
    assert lines.index("| W8A8 | 98.61 / 23.0 | 98.33 / 32.1 |") < lines.index("| W4A4 | 79.44 / 3.5 | 98.06 / 14.8 |")
    prose = " ".join(text.split())
    assert "float top-1 98.33 %; one image is 0.28 points" in prose and "calibrated on 256 calibration images" in prose
    assert "Measured with `ptq4vm sweep --json sweep.json` on a test box" in prose
    assert max(len(line) for line in lines) <= 100
    assert script.main(argv) == 0 and readme.read_text() == text  # idempotent

    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="expected one <!-- sweep:begin --> line"):
        script.main(argv)
    rows[1]["float_top1"] = 90.0
    (tmp_path / "sweep.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="disagree on float_top1"):
        script.main(argv)


def test_readme_tables_replace_the_block_of_the_sweeps_model(tmp_path):
    """The default model's block has the bare markers, another model's markers name it; only the block of
    the JSON's model changes."""
    script = _readme_tables()
    rows = [dict(_row("minmax", "w8a8", 98.61111, 40.13, 3.9), model="vmamba_digits"),
            dict(_row("ptq4vm", "w8a8", 98.61111, 40.09, 97.8), model="vmamba_digits")]
    (tmp_path / "sweep.json").write_text(json.dumps(rows))
    vim_block = "<!-- sweep:begin -->\nvim tables\n<!-- sweep:end -->\n"
    readme = tmp_path / "README.md"
    readme.write_text(f"{vim_block}\n<!-- sweep:begin vmamba_digits -->\nstale\n<!-- sweep:end vmamba_digits -->\n")
    argv = [str(tmp_path / "sweep.json"), "--readme", str(readme), "--machine", "a test box", "--command",
            "ptq4vm sweep --model vmamba_digits --json s.json"]
    assert script.main(argv) == 0
    text = readme.read_text()
    assert text.startswith(vim_block) and "stale" not in text
    block = text.split("<!-- sweep:begin vmamba_digits -->\n")[1].split("\n<!-- sweep:end vmamba_digits -->")[0]
    assert "| W8A8 | 98.61 / 40.1 | 98.61 / 40.1 |" in block and "| W8A8 | 3.9 | 97.8 |" in block
    prose = " ".join(block.split())
    assert "of `vmamba_digits`" in prose and "`ptq4vm sweep --model vmamba_digits --json s.json`" in prose
    readme.write_text(vim_block)
    with pytest.raises(ValueError, match="expected one <!-- sweep:begin vmamba_digits --> line"):
        script.main(argv)


def test_the_readme_holds_one_generated_sweep_block():
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- sweep:begin -->\n")[1].split("\n<!-- sweep:end -->")[0]
    assert text.count("<!-- sweep:begin -->") == 1 and "scripts/readme_tables.py" in block
    assert block.count("| bits | minmax | dynamic | smoothquant | pts | pts_smooth | ptq4vm |") == 2


def test_the_readme_holds_a_generated_block_per_bundled_model():
    from ptq4vm_fx.data.bundled import BUNDLED_MODELS, MODEL_NAME

    text = (ROOT / "README.md").read_text()
    for name in BUNDLED_MODELS:
        if name == MODEL_NAME:
            continue  # the bare markers above
        begin, end = f"<!-- sweep:begin {name} -->", f"<!-- sweep:end {name} -->"
        assert text.count(begin) == 1 and text.count(end) == 1, name
        block = text.split(begin + "\n")[1].split("\n" + end)[0]
        assert f"`{name}`" in block and "scripts/readme_tables.py" in block
        assert block.count("| bits | minmax | dynamic | smoothquant | pts | pts_smooth | ptq4vm |") == 2


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_what_the_documented_commands_write_into_the_root_is_ignored():
    def ignored(path: str) -> bool:
        run = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT, check=False)
        assert run.returncode in (0, 1)
        return run.returncode == 0

    for path in ("q.pt", "metrics.json", "report/index.html", "sweep.json", "sweep_vq.json", "vim_t_w8a8.pt",
                 "vim_t_w8a8.json"):
        assert ignored(path), path
    for path in ("tests/q.pt", "ptq4vm_fx/report/index.html", "scripts/sweep.json"):  # anchored to the root
        assert not ignored(path), path


def test_readme_tables_of_a_weight_method_sweep_go_to_their_own_block(tmp_path):
    """A weight-method sweep: methods as rows under the float row, presets as columns, seconds and peak
    memory; its own block beside the integer methods' one, which stays as it is."""
    script = _readme_tables()
    rows = [dict(_row(method, preset, top1, sqnr, seconds), peak_rss_mib=1200.4)
            for preset, method, top1, sqnr, seconds in (("w3a16", "rtn", 97.22222, 16.61, 2.4),
                                                        ("w3a16", "vimvq", 98.33333, 24.93, 68.9),
                                                        ("w1a16", "rtn", 77.22222, 2.64, 1.8),
                                                        ("w1a16", "vimvq", 97.77778, 15.51, 80.7))]
    (tmp_path / "sweep.json").write_text(json.dumps(rows))
    int_block = "<!-- sweep:begin -->\nint8 tables\n<!-- sweep:end -->\n"
    readme = tmp_path / "README.md"
    readme.write_text(f"{int_block}\n<!-- sweep:begin vim_digits weights -->\nstale\n"
                      "<!-- sweep:end vim_digits weights -->\n")
    assert script.main([str(tmp_path / "sweep.json"), "--readme", str(readme), "--machine", "a test box"]) == 0
    text = readme.read_text()
    assert text.startswith(int_block) and "stale" not in text
    lines = text.split("<!-- sweep:begin vim_digits weights -->\n")[1].splitlines()
    table = lines[lines.index("| method | W3A16 | W1A16 |"):]
    assert table[2:5] == ["| float | 98.33 / - | 98.33 / - |", "| rtn | 97.22 / 16.6 | 77.22 / 2.6 |",
                          "| vimvq | 98.33 / 24.9 | 97.78 / 15.5 |"]
    assert "| vimvq | 68.9 s, 1200 MiB | 80.7 s, 1200 MiB |" in lines
    (tmp_path / "mixed.json").write_text(json.dumps(rows + [_row("ptq4vm", "w8a8", 98.33333, 32.1, 16.0)]))
    with pytest.raises(ValueError, match="either the weight methods or the others"):
        script.main([str(tmp_path / "mixed.json"), "--readme", str(readme), "--machine", "a test box"])
