import json
import os
import subprocess
import sys

import pytest
import torch

from ptq4vm_fx import distributed
from ptq4vm_fx.cli import main


def test_single_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.launched()
    assert distributed.start("cpu") == torch.device("cpu")
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    values = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce(values) is values
    data = list(range(7))
    assert distributed.shard(data) is data


def test_shards_are_disjoint_and_cover_the_data(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    shards = []
    for rank in range(3):
        monkeypatch.setattr(distributed, "rank", lambda r=rank: r)
        shards.append(list(distributed.shard(list(range(10)))))
    assert sorted(i for shard in shards for i in shard) == list(range(10))
    assert [len(s) for s in shards] == [4, 3, 3]
    with pytest.raises(ValueError, match="2 images cannot be split over 3 processes"):
        distributed.shard([0, 1])


def test_only_eval_runs_under_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["quantize", "--quiet"]) == 2
    assert "only `ptq4vm eval` runs under torchrun" in capsys.readouterr().err


def test_two_gloo_processes_give_the_single_process_accuracy(
    tiny_quantized, tiny_checkpoint, image_folder, tmp_path, capsys
):
    args = ["eval", "--quantized", str(tiny_quantized), "--checkpoint", str(tiny_checkpoint), "--data",
            str(image_folder), "--workers", "0", "--batch-size", "4", "--device", "cpu"]
    assert main([*args, "--json", str(tmp_path / "single.json"), "--quiet"]) == 0
    capsys.readouterr()
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "ptq4vm_fx.cli",
            *args,
            "--json",
            str(tmp_path / "multi.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    single, multi = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("single", "multi"))
    assert multi["processes"] == 2 and single["processes"] == 1
    for model in ("float", "quantized"):
        assert multi[model]["images"] == single[model]["images"] == 15
        assert multi[model]["top1"] == single[model]["top1"]
        assert multi[model]["top5"] == single[model]["top5"]
    assert multi["sqnr_db"] == pytest.approx(single["sqnr_db"], rel=1e-4)
    assert run.stdout.count("2 process(es)") == 1  # only rank 0 prints
