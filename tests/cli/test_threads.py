"""--threads: auto caps PyTorch's default at the idle cores, a number is taken as given, and a command
runs with the count and leaves the process's setting as it found it."""

import argparse
import os

import pytest
import torch

import ptq4vm_fx.cli
from ptq4vm_fx.cli import main
from ptq4vm_fx.cli.threads import AUTO, idle_cpus, parse_threads, resolve_threads
from ptq4vm_fx.errors import InputError


def test_parse_threads():
    assert parse_threads("auto") == AUTO
    assert parse_threads("3") == 3
    for bad in ["0", "-1", "two"]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse_threads(bad)


def test_auto_is_capped_at_the_idle_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.6, 0.0, 0.0))
    assert idle_cpus() == 1 and resolve_threads(AUTO) == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 0.0, 0.0))
    assert resolve_threads(AUTO) == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 0.0, 0.0))
    assert resolve_threads(AUTO) == 3
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert resolve_threads(AUTO) == 4
    assert resolve_threads(6) == 6
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # the user's own setting is respected
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 0.0, 0.0))
    assert resolve_threads(AUTO) == 4


def test_a_command_runs_with_its_threads_and_restores_the_setting(monkeypatch, capsys):
    seen = []

    def stop(*_):
        seen.append(torch.get_num_threads())
        raise InputError("stop here")

    monkeypatch.setattr(ptq4vm_fx.cli, "check_overrides", stop)
    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1
    assert main(["quantize", "--threads", str(wanted)]) == 2
    assert seen == [wanted] and torch.get_num_threads() == before
    assert "stop here" in capsys.readouterr().err
