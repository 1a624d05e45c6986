"""The VQ GEMM against FP16 at Vim-T/S/B shapes, and each model's weight bytes per variant.

* ``ptq4vm::vq_linear`` (the Triton kernel: each weight tile decoded from packed codes and the fp16
  codebook inside the K loop, fp16 tensor-core dot, fp32 accumulation) on fp16 activations against an
  FP16 linear (cuBLAS) on the decoded weight, for every mixer linear the preset's codebook fits, at
  batch 1, 8 and 128 (M = batch x 197 tokens), per VQ preset (w3: k=64 d=2, w2: k=256 d=4, w1: k=256
  d=8). Each record carries the floor (benchmarks/floors.py: FP16 tensor-core work or the bytes moved:
  fp16 activations read and output written once, the packed codes and the codebook read once).
* The weight bytes of each model's quantized linears per variant (benchmarks/vq_sizes.py).

Not yet run on a GPU: the thresholds are provisional (thresholds.json).
"""

import pytest
import torch

from ptq4vm_fx.kernels.vq_linear import code_bits, pack_codes
from ptq4vm_fx.quant.vq import PRESETS as VQ_PRESETS

from .floors import Work, with_floor
from .shapes import MODELS, vim_shape
from .timing import median_ms
from .vq_sizes import VARIANTS, layer_bytes, weight_bytes

pytestmark = pytest.mark.requires_cuda


def vq_problem(model: str, linear: str, batch: int, preset: str, device="cuda") -> dict:
    """fp16 activations (batch, L, K), random codes packed (N, R), an fp16 codebook (k, d), an fp32 bias,
    and the decoded weight in fp16 (exact: its values are codewords) for the FP16 baseline."""
    shape = vim_shape(model)
    k_in, n_out = shape.linear(linear)
    k, d = VQ_PRESETS[preset]
    g = torch.Generator(device=device).manual_seed(0)
    codes = torch.randint(0, k, (n_out, k_in // d), device=device, generator=g)
    codebook = (torch.randn(k, d, device=device, generator=g) / k_in**0.5).half()
    return {"x": torch.randn(batch, shape.tokens, k_in, device=device, generator=g).half(),
            "codes": pack_codes(codes, code_bits(k)), "codebook": codebook,
            "bias": torch.randn(n_out, device=device, generator=g),
            "w16": codebook[codes].reshape(n_out, k_in), "m": batch * shape.tokens, "n": n_out, "k": k_in}


def vq_gemm(p: dict) -> torch.Tensor:
    return torch.ops.ptq4vm.vq_linear(p["x"], p["codes"], p["codebook"], p["bias"])


def fp16_linear(p: dict) -> torch.Tensor:
    return torch.nn.functional.linear(p["x"], p["w16"], p["bias"].half())


def vq_work(p: dict) -> Work:
    """2mnk FP16 tensor-core ops; bytes: fp16 activations read and fp16 output written once, the packed
    codes and the codebook read once, the fp32 bias."""
    return Work(fp16=2 * p["m"] * p["n"] * p["k"],
                nbytes=2 * p["m"] * p["k"] + p["codes"].numel() + 2 * p["codebook"].numel() + 2 * p["m"] * p["n"]
                + 4 * p["n"])


@pytest.mark.parametrize("batch", [1, 8, 128])
@pytest.mark.parametrize("preset", list(VQ_PRESETS))
@pytest.mark.parametrize("linear", ["in_proj", "x_proj", "dt_proj", "out_proj"])
@pytest.mark.parametrize("model", MODELS)
def test_vq_linear(model, linear, preset, batch, record, benchmark, gpu):
    k_in, n_out = vim_shape(model).linear(linear)
    if layer_bytes(k_in, n_out, preset)[1]:
        pytest.skip(f"{preset}'s codebook does not fit {linear} ({n_out}x{k_in}): the layer stays FP16")
    p = vq_problem(model, linear, batch, preset)
    torch.testing.assert_close(vq_gemm(p), fp16_linear(p), rtol=2e-2, atol=2e-2)
    times = {"vq_linear": median_ms(lambda: vq_gemm(p), graph=True),
             "fp16_matmul": median_ms(lambda: fp16_linear(p), graph=True)}
    floor = with_floor(vq_work(p), gpu, times["vq_linear"])
    benchmark.extra_info.update(times_ms=times)
    benchmark.pedantic(lambda: (vq_gemm(p), torch.cuda.synchronize()), rounds=50, warmup_rounds=5)
    record("vq_linear", f"{vim_shape(model).short}/{linear}/{preset}/b{batch}", times, "vq_linear",
           ("fp16_matmul",), mnk=(p["m"], p["n"], p["k"]), **floor,
           weight_bytes={"fp16": 2 * n_out * k_in, "vq": layer_bytes(k_in, n_out, preset)[0]})


@pytest.mark.parametrize("model", MODELS)
def test_model_weight_bytes(model, record):
    """The quantized linears' weight bytes of the whole model per variant (a record without timings)."""
    sizes = {variant: weight_bytes(model, variant) for variant in VARIANTS}
    assert sizes["w1a16"]["bytes"] < sizes["w2a16"]["bytes"] < sizes["w3a16"]["bytes"] < sizes["int8"]["bytes"]
    record("weight_bytes", vim_shape(model).short, {}, None, (), weight_bytes=sizes)
