"""measure.Measured: wall time and the peak resident memory of a block of work."""

import time

import torch

from ptq4vm_fx.measure import Measured


def test_peak_memory_sees_a_temporary_allocation():
    with Measured(interval=0.001) as m:
        big = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, touched
        time.sleep(0.02)  # a few samples while it lives
        del big
    assert m.seconds >= 0.02 and m.peak_cuda_mib is None
    assert m.peak_rss_mib - m.start_rss_mib > 60
    assert m.to_dict()["peak_rss_mib"] == m.peak_rss_mib
