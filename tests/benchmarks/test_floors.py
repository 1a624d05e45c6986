"""The floor arithmetic of the benchmark records (benchmarks/floors.py) against numbers computed by hand:
Vim-S at batch 128 on an H100 SXM (132 SMs, 1.98 GHz boost clock, 3007 GB/s measured copy bandwidth,
benchmarks/results/nvidia-h100-80gb-hbm3-2026-11-23.json; 1979 INT8 TOPS dense)."""

import pytest

from benchmarks.floors import Gpu, Work, floor_ms, linear_work, scan_work, vim_floor_ms, vim_layer_work, with_floor

H100 = Gpu(sms=132, clock_ghz=1.98, copy_gbs=3007.0, int8_tops=1979.0, fp16_tflops=989.4)
BDL = 128 * 768 * 197  # Vim-S b128: batch x d_inner x tokens = 19,365,888


def test_scan_floor_vim_s_b128_fp32_inputs():
    work = scan_work(batch=128, d_inner=768, tokens=197, d_state=16, act_bytes=4)
    # 16 decays per (b, d, t) and direction: 619,708,416; softplus x 2 + SiLU: 6 per (b, d, t): 116,195,328
    assert work.mufu == 619_708_416 + 116_195_328 == 735_903_744
    assert work.fp32 == 4 * 619_708_416 == 2_478_833_664
    # fp32 u, delta (x 2 directions), B, C (x 2), z; A (768 x 16) + D + delta_bias (768 each) x 2 in fp32;
    # int8 codes out: 4 x (4 x 19,365,888 + 4 x 403,456 + 19,365,888) + 8 x 13,824 + 19,365,888
    assert work.nbytes == 393_773_056 + 110_592 + 19_365_888 == 413_249_536
    floor = floor_ms(work, H100)
    # 735,903,744 / (16 x 132 x 1.98e9 = 4.18176e12 per s) = 0.17598 ms; FP32: / 3.345408e13 = 0.07410 ms;
    # HBM: 413,249,536 / 3.007e12 = 0.13743 ms
    assert floor["mufu_ms"] == pytest.approx(0.175979, rel=1e-5)
    assert floor["fp32_ms"] == pytest.approx(0.0740966, rel=1e-5)
    assert floor["hbm_ms"] == pytest.approx(0.137429, rel=1e-5)
    assert floor["bound"] == "mufu" and floor["floor_ms"] == floor["mufu_ms"]
    # the measured 0.999 ms of that JSON reached 17.6 % of it
    assert with_floor(work, H100, 0.9992)["floor_fraction"] == pytest.approx(0.1761, abs=1e-4)


def test_scan_floor_fp16_inputs_halves_the_bytes_only():
    work = scan_work(128, 768, 197, 16, act_bytes=2)
    assert work.nbytes == 196_886_528 + 110_592 + 19_365_888  # 216,363,008: 0.07195 ms at 3007 GB/s
    assert floor_ms(work, H100)["hbm_ms"] == pytest.approx(0.0719531, rel=1e-5)
    assert floor_ms(work, H100)["mufu_ms"] == pytest.approx(0.175979, rel=1e-5)


def test_linear_floor_vim_s_in_proj_b128_is_memory_bound():
    """m = 128 x 197 = 25,216, n = 1536, k = 384, fp16 output: 2mnk = 29,746,003,968 INT8 ops (0.015031 ms
    at 1979 TOPS); 25,216 x 384 + 1536 x 384 + 2 x 25,216 x 1536 = 87,736,320 bytes (0.029178 ms): the
    roofline caps it at 52 % of the INT8 peak (docs/design.md section 8)."""
    floor = floor_ms(linear_work(25_216, 1536, 384, out_bytes=2), H100)
    assert floor["int8_ms"] == pytest.approx(0.0150308, rel=1e-5)
    assert floor["hbm_ms"] == pytest.approx(0.0291773, rel=1e-5)
    assert floor["bound"] == "hbm" and floor["int8_ms"] / floor["floor_ms"] == pytest.approx(0.515, abs=1e-3)
    # an fp16 GEMM: 2-byte operands, the FP16 peak
    fp16 = floor_ms(linear_work(25_216, 1536, 384, out_bytes=2, int8=False), H100)
    assert fp16["fp16_ms"] == pytest.approx(29_746_003_968 / 989.4e12 * 1e3, rel=1e-9)
    assert fp16["hbm_ms"] == pytest.approx((2 * (9_682_944 + 589_824) + 77_463_552) / 3007e9 * 1e3, rel=1e-9)


def test_unknown_peak_leaves_the_tensor_term_out():
    floor = floor_ms(Work(int8=1e12, nbytes=3007e6), Gpu(sms=132, clock_ghz=1.98, copy_gbs=3007.0))
    assert floor["int8_ms"] is None and floor["bound"] == "hbm" and floor["floor_ms"] == pytest.approx(1.0)


def test_named_gpu_reads_the_tables():
    gpu = Gpu.named("NVIDIA H100 80GB HBM3", sms=132, copy_gbs=3007.0)
    assert (gpu.clock_ghz, gpu.int8_tops, gpu.fp16_tflops) == (1.98, 1979.0, 989.4)
    assert Gpu.named("NVIDIA H100 80GB HBM3", 132, 3007.0, clock_ghz=1.755).clock_ghz == 1.755
    with pytest.raises(ValueError, match="no SM clock"):
        Gpu.named("Some GPU", sms=10, copy_gbs=100.0)


def test_end_to_end_floor_is_the_sum_of_the_kernels_floors():
    layer = vim_layer_work(d_model=384, d_state=16, tokens=197, batch=128, act_bytes=4, int8=True)
    assert set(layer) == {"add_rmsnorm", "in_proj", "conv1d_silu x2", "x_proj x2", "dt_proj x2",
                          "bidirectional_scan", "out_proj"}
    assert layer["bidirectional_scan"] == scan_work(128, 768, 197, 16, 4)
    total = vim_floor_ms(24, layer, H100)
    assert total["per_kernel_ms"]["bidirectional_scan"] == pytest.approx(24 * 0.175979, rel=1e-5)
    assert total["floor_ms"] == pytest.approx(sum(24 * floor_ms(w, H100)["floor_ms"] for w in layer.values()))
    # two convs / x_projs / dt_projs a block: twice one launch's floor
    one_conv = floor_ms(Work(mufu=2 * BDL, fp32=4 * BDL, nbytes=9 * BDL), H100)["floor_ms"]
    assert total["per_kernel_ms"]["conv1d_silu x2"] == pytest.approx(24 * 2 * one_conv)


def test_scan_work_of_one_direction_and_without_softplus():
    """A single-direction scan (the small-batch kernel's benchmark) and the scan whose softplus dt_proj's
    GEMM took: Vim-S b1; and two kernels' work adds up field by field."""
    bdl = 768 * 197
    one = scan_work(1, 768, 197, 16, act_bytes=4, out_bytes=4, directions=1)
    # 16 decays + softplus (2) + SiLU (2) per (b, d, t); u, delta, z, B, C (16 each) fp32; A, D, delta_bias; y fp32
    assert one.mufu == 16 * bdl + 4 * bdl and one.fp32 == 4 * 16 * bdl
    assert one.nbytes == 4 * (3 * bdl + 2 * 16 * 197) + 4 * (768 * 16 + 2 * 768) + 4 * bdl
    both = scan_work(1, 768, 197, 16, act_bytes=4)
    assert scan_work(1, 768, 197, 16, act_bytes=4, softplus=False).mufu == both.mufu - 4 * bdl
    # with both epilogue fusions of the lowered fp32 Vim the scan's MUFU is its 32 decays a (b, d, t) alone
    assert scan_work(1, 768, 197, 16, act_bytes=4, softplus=False, silu=False).mufu == 2 * 16 * bdl
    assert one + both == Work(one.mufu + both.mufu, one.fp32 + both.fp32, 0, 0, one.nbytes + both.nbytes)
