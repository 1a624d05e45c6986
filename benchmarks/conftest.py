"""The speedup suite runs on a CUDA GPU only (docs/design.md section 8: CPU timings are not speed
results). Without one every benchmark is collected and skipped, so `pytest benchmarks` exits 0.

Each benchmark adds a record (timings and speedups) through the ``record`` fixture, which also
asserts the speedups against benchmarks/thresholds.json; every record is written at once to
benchmarks/results/<gpu-name>-<date>.json (and into $OUT when that is set)."""

from pathlib import Path

import pytest
import torch

from .floors import Gpu
from .results import environment, load_thresholds, max_sm_clock_ghz, threshold, write_results
from .timing import median_ms

NO_GPU = "the benchmarks need a CUDA GPU (CPU timings are not speed results, docs/design.md section 8)"
_records: list[dict] = []


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_GPU)
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:  # the hook sees every item of the session: skip only benchmarks
            item.add_marker(skip)


@pytest.fixture(scope="session")
def thresholds():
    return load_thresholds()


@pytest.fixture(scope="session")
def copy_gbs() -> float:
    """Measured device-to-device copy bandwidth (GB/s, bytes read + written) of a 1 GiB buffer."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), flush_l2=False)
    return 2 * src.numel() / (ms * 1e-3) / 1e9


@pytest.fixture(scope="session")
def gpu(copy_gbs) -> Gpu:
    """The GPU the floors are computed for (benchmarks/floors.py): its SMs, maximum SM clock, copy bandwidth."""
    props = torch.cuda.get_device_properties(0)
    return Gpu.named(torch.cuda.get_device_name(0), props.multi_processor_count, copy_gbs, max_sm_clock_ghz())


@pytest.fixture
def record(thresholds):
    """record(benchmark, case, times_ms, candidate, baselines): store the timings (ms) and the
    speedups of ``candidate`` over each baseline, then assert each against its threshold."""

    def _record(benchmark: str, case: str, times_ms: dict, candidate: str, baselines: tuple, **extra):
        speedups = {b: times_ms[b] / times_ms[candidate] for b in baselines}
        limits = {b: threshold(thresholds, benchmark, b, case) for b in baselines}
        env = environment()
        _records.append({"benchmark": benchmark, "case": case, "times_ms": times_ms, "candidate": candidate,
                         "speedups": speedups, "thresholds": limits, "git_commit": env["git_commit"], **extra})
        write_results(env, _records)  # after every record: a run cut short keeps what it measured
        slow = {b: f"{speedups[b]:.2f}x < {limits[b]}x" for b in baselines if speedups[b] < limits[b]}
        assert not slow, f"{benchmark} {case}: {candidate} regressed against {slow}; times (ms): {times_ms}"

    return _record
