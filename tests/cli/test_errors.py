"""The CLI's error policy: bad input is one line on stderr and exit code 2, before any work where it can
be known before; anything else (a bug, a CUDA error) propagates with its traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ptq4vm_fx
from ptq4vm_fx.cli import main
from ptq4vm_fx.data import bundled_digits, bundled_model


def _ptq4vm(*argv: str) -> subprocess.CompletedProcess:
    """The command as a person runs it, in a process of its own."""
    return subprocess.run([sys.executable, "-m", "ptq4vm_fx.cli", *argv], capture_output=True, text=True,
                          check=False, timeout=300)


@pytest.mark.parametrize("argv, message", [
    (["quantize", "--model", "vim_huge"], "unknown model 'vim_huge'; known models: "),
    (["quantize", "--model-kwargs", "foo=1"], "unknown model configuration key foo; valid keys: channels, "),
    (["quantize", "--json", "{tmp}/no/such/folder/m.json"], "--json {tmp}/no/such/folder/m.json: folder "),
])
def test_bad_input_is_one_line_on_stderr_and_exit_2(argv, message, tmp_path, capsys):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("ptq4vm: error: " + message.format(tmp=tmp_path)), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert out == ""


def test_bad_input_in_a_process_of_its_own():
    """As a person runs the command: exit code 2 and the one line reach the shell, and nothing else is
    written (no warning at import); one case, the others run in-process above (same checks, without the
    2-3 s of a fresh interpreter importing torch each)."""
    run = _ptq4vm("quantize", "--model", "vim_huge")
    assert run.returncode == 2
    assert run.stderr.startswith("ptq4vm: error: unknown model 'vim_huge'; known models: "), run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert run.stdout == ""


@pytest.mark.parametrize("argv, message", [
    (["quantize", "--device", "tpu"], "unknown device 'tpu': give cpu, cuda or cuda:N"),
    (["eval", "--device", "cuda:64"], "device cuda:64 was asked for but "),
    (["quantize", "--model", "vim_tiny_patch16_224", "--checkpoint", "x.pth", "--model-kwargs", "depth=-1"],
     "vim_tiny_patch16_224 with {'depth': -1} is not a valid configuration"),
])
def test_bad_devices_and_configurations_are_bad_input(argv, message, capsys):
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ptq4vm: error: {message}") and err.count("\n") == 1, err


def test_argparse_usage_errors_keep_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", "--method", "gptq"])
    assert exit_info.value.code == 2 and "invalid choice: 'gptq'" in capsys.readouterr().err


def test_an_internal_error_propagates_with_its_traceback(monkeypatch):
    def calibration_crashes(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")

    monkeypatch.setattr("ptq4vm_fx.cli.quantize.quantize_and_evaluate", calibration_crashes)
    with pytest.raises(RuntimeError, match="illegal memory access") as info:
        main(["quantize", "--method", "pts", "--quiet"])
    assert info.traceback[-1].name == "calibration_crashes"


def test_a_bug_is_not_reported_as_bad_input(monkeypatch):
    def evaluation_has_a_bug(*args, **kwargs):
        raise TypeError("evaluate() got an unexpected keyword argument 'dtype' (injected)")

    monkeypatch.setattr("ptq4vm_fx.cli.eval_cmd.evaluate", evaluation_has_a_bug)
    with pytest.raises(TypeError, match="unexpected keyword argument") as info:
        main(["eval", "--quiet"])
    assert info.traceback[-1].name == "evaluation_has_a_bug"


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command loads a model or calibrates."""
    def forbidden(*args, **kwargs):
        pytest.fail("the command started working before it checked its output paths")

    for target in ("ptq4vm_fx.pipeline.calibrate_and_convert", "ptq4vm_fx.cli.selection.bundled_model",
                   "ptq4vm_fx.cli.selection.load"):
        monkeypatch.setattr(target, forbidden)


def _unwritable(monkeypatch, folder: Path) -> None:
    """Make ``folder`` read-only for os.access (chmod does not bind root, whom tests may run as)."""
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != folder and access(path, mode, **kw))


@pytest.mark.parametrize("argv, message", [
    (["quantize", "--json", "{tmp}/no/m.json"], "--json {tmp}/no/m.json: folder {tmp}/no does not exist"),
    (["quantize", "--output", "{tmp}"], "--output {tmp} is a folder: give a file path"),
    (["quantize", "--output", "{tmp}/locked/q.pt"], "--output {tmp}/locked/q.pt: folder {tmp}/locked is not writable"),
    (["sweep", "--json", "{tmp}/file/s.json"], "--json {tmp}/file/s.json: folder {tmp}/file does not exist"),
    (["eval", "--json", "{tmp}/locked/e.json"], "--json {tmp}/locked/e.json: folder {tmp}/locked is not writable"),
    (["report", "q.pt", "--output", "{tmp}/file"], "--output {tmp}/file is a file: give a folder"),
    (["report", "q.pt", "--output", "{tmp}/file/report"], "--output {tmp}/file/report: {tmp}/file is a file"),
    (["report", "q.pt", "--output", "{tmp}/locked/a/b"], "--output {tmp}/locked/a/b: folder {tmp}/locked is not"),
])
def test_unwritable_outputs_fail_before_any_work(argv, message, tmp_path, monkeypatch, capsys, no_work):
    (tmp_path / "file").write_text("")
    (tmp_path / "locked").mkdir()
    _unwritable(monkeypatch, tmp_path / "locked")
    assert main([*(a.format(tmp=tmp_path) for a in argv), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ptq4vm: error: {message.format(tmp=tmp_path)}") and err.count("\n") == 1, err


def test_a_block_the_model_lacks_is_refused_before_the_report(tmp_path, capsys):
    images, _ = bundled_digits("calib")
    prepared = ptq4vm_fx.prepare(bundled_model(), images[:1], ptq4vm_fx.QuantConfig.preset_config("w8a8", "minmax"))
    with torch.no_grad():
        prepared(images[:8])
    ptq4vm_fx.save(ptq4vm_fx.convert(prepared), tmp_path / "q.pt")
    assert main(["report", str(tmp_path / "q.pt"), "--block", "4", "--output", str(tmp_path / "r"), "--quiet"]) == 2
    assert capsys.readouterr().err == "ptq4vm: error: --block 4 does not exist: the model has blocks 0..3\n"
    assert not (tmp_path / "r").exists()
