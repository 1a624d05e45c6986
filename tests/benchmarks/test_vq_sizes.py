"""The weight bytes per variant of the VQ benchmark records (benchmarks/vq_sizes.py) against hand counts."""

import pytest

from benchmarks.vq_sizes import layer_bytes, weight_bytes

# Vim-T: d_model 192, d_inner 384, dt_rank 12, d_state 16, 24 blocks. Per block: in_proj 192 -> 768,
# x_proj(_b) 384 -> 44, dt_proj(_b) 12 -> 384, out_proj 384 -> 192: 264,192 weights
VIM_T_WEIGHTS = 24 * (192 * 768 + 2 * 384 * 44 + 2 * 12 * 384 + 384 * 192)


def test_vim_t_w2_counts_codes_and_codebooks():
    # k = 256, d = 4: one byte a code; codebook 256 x 4 fp16 = 2048 bytes a layer
    in_proj, x_proj, dt_proj, out_proj = 768 * 48 + 2048, 44 * 96 + 2048, 384 * 3 + 2048, 192 * 96 + 2048
    expected = 24 * (in_proj + 2 * x_proj + 2 * dt_proj + out_proj)
    got = weight_bytes("vim_tiny_patch16_224", "w2a16")
    assert got["bytes"] == expected == 1_880_064 and got["weights"] == VIM_T_WEIGHTS == 6_340_608
    assert got["bits_per_weight"] == pytest.approx(2.372, abs=1e-3) and got["fp16_layers"] == []
    assert weight_bytes("vim_tiny_patch16_224", "fp16")["bytes"] == 2 * VIM_T_WEIGHTS


def test_layers_the_codebook_does_not_fit_stay_fp16():
    # w1: d = 8 does not divide Vim-T's dt_rank 12, it divides Vim-S's 24
    assert weight_bytes("vim_tiny_patch16_224", "w1a16")["fp16_layers"] == ["dt_proj", "dt_proj_b"]
    assert weight_bytes("vim_small_patch16_224", "w1a16")["fp16_layers"] == []
    assert layer_bytes(12, 384, "w1a16") == (2 * 12 * 384, True)
    # w3: k = 64, d = 2, 6-bit codes: a row of 96 codes is 72 bytes; codebook 64 x 2 fp16
    assert layer_bytes(192, 768, "w3a16") == (768 * 72 + 256, False)
    assert layer_bytes(192, 768, "int8") == (768 * 192 + 8 * 768, False)
    assert layer_bytes(4, 8, "w2a16") == (2 * 4 * 8, True)  # 8 sub-vectors < k = 256
