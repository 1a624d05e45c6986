"""Benchmark results: the environment they were measured in, the stored speedup thresholds, and the
JSON file each run writes to benchmarks/results/<gpu-name>-<date>.json (also copied into $OUT when
that is set)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
THRESHOLDS = HERE / "thresholds.json"
RESULTS_DIR = HERE / "results"


def environment() -> dict:
    """GPU, library versions and the git commit of the working tree."""
    import triton

    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": torch.cuda.get_device_name(0),
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "sm_count": props.multi_processor_count,
        "max_sm_clock_ghz": max_sm_clock_ghz(),
        "compute_capability": f"{props.major}.{props.minor}",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def max_sm_clock_ghz() -> float | None:
    """GPU 0's maximum SM clock (GHz) as nvidia-smi reports it; None where nvidia-smi cannot say."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
        return float(out.strip()) / 1e3
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def _git_commit() -> str:
    """HEAD's hash, with "-dirty" when the tree has changes; "unknown (<why>)" outside a checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=HERE, capture_output=True, text=True,
                               check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        return f"unknown ({type(e).__name__})"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def load_thresholds() -> dict:
    """{benchmark: {baseline: minimum speedup}} from thresholds.json (keys starting with "_" are notes)."""
    data = json.loads(THRESHOLDS.read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def threshold(thresholds: dict, benchmark: str, baseline: str, case: str) -> float:
    """The minimum speedup of ``benchmark`` over ``baseline`` for ``case`` (e.g. "vim_base/b128"):
    the entry for the case if there is one, else the benchmark's "default"."""
    entry = thresholds[benchmark][baseline]
    return entry.get(case, entry["default"]) if isinstance(entry, dict) else entry


def write_results(env: dict, records: list[dict]) -> Path:
    """Write the run's JSON; returns its path. Records of an earlier run on the same GPU and day
    stay unless this run measured the same (benchmark, case) again, so the kernel and end-to-end
    suites can run as separate sessions into one file."""
    gpu = re.sub(r"[^a-z0-9]+", "-", env["gpu"].lower()).strip("-")
    path = RESULTS_DIR / f"{gpu}-{env['date'][:10]}.json"
    RESULTS_DIR.mkdir(exist_ok=True)
    new = {(r["benchmark"], r["case"]) for r in records}
    kept = []
    if path.exists():
        kept = [r for r in json.loads(path.read_text())["results"] if (r["benchmark"], r["case"]) not in new]
    path.write_text(json.dumps({"environment": env, "results": kept + records}, indent=2) + "\n")
    out = os.environ.get("OUT")
    if out:
        shutil.copy(path, Path(out) / path.name)
    return path
