"""The kernel benchmarks' paired calls compute the same thing (here on the CPU references, at Vim-T batch 1), so a
GPU run times two ways of one computation."""

import torch

from benchmarks.test_kernels import z_silu_calls


def test_in_proj_silu_paths_give_the_same_codes():
    in_gemm, in_scan = z_silu_calls("vim_tiny_patch16_224", 1, device="cpu")
    codes, codes_ref = in_gemm()[1], in_scan()[1]  # (output, int8 codes): the lowered Vim stores only the codes
    assert codes.dtype == torch.int8 and codes.shape == (1, 197, 384)
    assert codes.unique().numel() > 100  # the codes use the range: a comparison of constants would say nothing
    torch.testing.assert_close(codes, codes_ref, rtol=0, atol=0)
