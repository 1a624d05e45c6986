"""The VQ GEMM kernel against its reference, and the codes' bit packing."""

import pytest
import torch

from ptq4vm_fx.kernels.vq_linear import (
    code_bits,
    decode_weight,
    pack_codes,
    packed_row_bytes,
    unpack_codes,
    vq_linear,
    vq_linear_ref,
)


def _make(M, N, K, k, d, seed=0, dyadic=True, bias=True):
    """Activations, packed codes, codebook, bias. ``dyadic``: values on a coarse binary grid
    (x in [-2, 2) step 1/4, codewords in [-4, 4) step 1/16, bias step 1/8), so every product and
    every partial sum is exact in fp32 and any summation order gives the same bits."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, k, (N, K // d), generator=g)
    codes[0, 0] = k - 1  # the largest code is decoded too
    if dyadic:
        x = torch.randint(-8, 8, (M, K), generator=g) / 4
        codebook = torch.randint(-64, 64, (k, d), generator=g) / 16
        b = torch.randint(-16, 16, (N,), generator=g) / 8
    else:
        x, codebook, b = torch.randn(M, K, generator=g), torch.randn(k, d, generator=g), torch.randn(N, generator=g)
    return x, pack_codes(codes, code_bits(k)), codebook.half(), b.float() if bias else None


SHAPES = [  # (M, N, K, k, d): M = 1, ragged M / N / K against the 16 x 16 x 32 interpreter tiles,
    (1, 5, 6, 64, 2),  # several K steps, every code width from 1 to 8 bits
    (17, 33, 40, 16, 4),
    (7, 20, 72, 256, 8),
    (5, 9, 24, 2, 3),
    (3, 18, 10, 48, 1),
    (20, 3, 36, 4, 4),
    (33, 17, 66, 8, 2),
    (6, 7, 30, 32, 3),
    (2, 5, 14, 128, 7),
]


@pytest.mark.parametrize("M,N,K,k,d", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_ref_exactly_on_dyadic_values(device, M, N, K, k, d, dtype):
    x, codes, codebook, bias = _make(M, N, K, k, d, seed=M * 100 + K)
    y = vq_linear(x.to(device, dtype), codes.to(device), codebook.to(device), bias.to(device))
    assert y.dtype == dtype and y.shape == (M, N)
    assert torch.equal(y.cpu(), vq_linear_ref(x.to(dtype), codes, codebook, bias))


def test_random_values_within_fp32_summation_error(device):
    """Random values: kernel and reference sum the same exact products in different orders, so they
    differ by at most 2 * gamma_K * sum_c |x w| (gamma_K = K u / (1 - K u), u = 2^-24)."""
    M, N, K = 19, 21, 96
    x, codes, codebook, bias = _make(M, N, K, 16, 4, seed=5, dyadic=False)
    y = vq_linear(x.to(device), codes.to(device), codebook.to(device), bias.to(device)).cpu()
    y_ref = vq_linear_ref(x, codes, codebook, bias)
    w = decode_weight(codes, codebook, K)
    gamma = K * 2.0**-24 / (1 - K * 2.0**-24)
    bound = 2 * gamma * (x.abs().double() @ w.abs().double().t() + bias.abs().double()[None])
    assert ((y.double() - y_ref.double()).abs() <= bound).all()
    assert not torch.equal(y_ref, torch.zeros_like(y_ref))


def test_strided_activations_and_no_bias(device):
    x, codes, codebook, _ = _make(9, 11, 40, 16, 2, seed=3, bias=False)
    xt = x.t().contiguous().to(device).t()  # (M, K) with stride (1, M)
    y = vq_linear(xt, codes.to(device), codebook.to(device))
    assert torch.equal(y.cpu(), vq_linear_ref(x, codes, codebook))


def test_empty_batch(device):
    x, codes, codebook, bias = _make(0, 4, 8, 16, 2)
    assert vq_linear(x.to(device), codes.to(device), codebook.to(device), bias.to(device)).shape == (0, 4)


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_unpack_round_trip(bits):
    g = torch.Generator().manual_seed(bits)
    for groups in (1, 7, 24):
        codes = torch.randint(0, 1 << bits, (5, groups), generator=g)
        codes[-1] = (1 << bits) - 1
        packed = pack_codes(codes, bits)
        assert packed.dtype == torch.uint8 and packed.shape == (5, packed_row_bytes(groups, bits))
        assert packed.shape[1] == -(-groups * bits // 8)
        assert torch.equal(unpack_codes(packed, groups, bits), codes)


def test_packing_layout():
    """Little-endian bit stream: two 4-bit codes a byte, low nibble first; 6-bit codes straddle bytes."""
    assert pack_codes(torch.tensor([[1, 2, 15]]), 4).tolist() == [[0x21, 0x0F]]
    # 6-bit codes 1, 2, 3, 63: stream 100000 010000 110000 111111 -> bytes 0x81, 0x30, 0xFC
    assert pack_codes(torch.tensor([[1, 2, 3, 63]]), 6).tolist() == [[0x81, 0x30, 0xFC]]
    assert pack_codes(torch.tensor([[1, 0, 1, 1, 0, 0, 0, 0, 1]]), 1).tolist() == [[0x0D, 0x01]]


def test_bad_arguments_are_refused():
    x, codes, codebook, bias = _make(4, 6, 12, 16, 4)
    with pytest.raises(ValueError, match="multiple of the codeword length"):
        vq_linear_ref(x[:, :10], codes, codebook, bias)
    with pytest.raises(ValueError, match="codes must have shape"):
        vq_linear_ref(x, codes[:, :1], codebook, bias)
    with pytest.raises(ValueError, match="codebook must have dtype"):
        vq_linear_ref(x, codes, codebook.float(), bias)
    with pytest.raises(ValueError, match="2 to 256 codewords"):
        vq_linear_ref(x, codes, torch.zeros(300, 4, dtype=torch.float16), bias)
