"""Weight bytes of Vim-T/S/B's quantized linears per variant: FP16, INT8 (W8A8) and the VQ presets.

Pure arithmetic over benchmarks/shapes.py (tested on the CPU, tests/benchmarks/test_vq_sizes.py). Per
block the six mixer linears (in_proj, x_proj, x_proj_b, dt_proj, dt_proj_b, out_proj); biases apart
(every variant keeps them in fp32). A VQ layer stores its packed codes (each row's K/d codes of
ceil(log2 k) bits, padded to a byte, ``kernels/vq_linear.py``) and its fp16 codebook; a layer the
codebook does not fit (d does not divide K, or fewer than k sub-vectors) stays FP16, as the pass
leaves it (docs/design.md section 13). INT8 stores int8 weights and per row an fp32 scale and an
int32 column sum.
"""

from __future__ import annotations

from ptq4vm_fx.kernels.vq_linear import code_bits, packed_row_bytes
from ptq4vm_fx.models.zoo import VIM_CONFIGS
from ptq4vm_fx.quant.vq import PRESETS as VQ_PRESETS

from .shapes import vim_shape

LINEARS = ("in_proj", "x_proj", "x_proj_b", "dt_proj", "dt_proj_b", "out_proj")
VARIANTS = ("fp16", "int8", *VQ_PRESETS)


def layer_bytes(k_in: int, n_out: int, variant: str) -> tuple[int, bool]:
    """(bytes of one (n_out, k_in) weight in ``variant``, whether it is stored as FP16)."""
    if variant == "fp16":
        return 2 * n_out * k_in, True
    if variant == "int8":
        return n_out * k_in + 8 * n_out, False
    k, d = VQ_PRESETS[variant]
    if k_in % d or n_out * k_in // d < k:
        return 2 * n_out * k_in, True
    return n_out * packed_row_bytes(k_in // d, code_bits(k)) + 2 * k * d, False


def weight_bytes(model: str, variant: str) -> dict:
    """{"bytes", "weights", "bits_per_weight", "fp16_layers"} of the model's quantized linears in ``variant``
    (fp16_layers: per block, the linears kept in FP16)."""
    shape, depth = vim_shape(model), VIM_CONFIGS[model]["depth"]
    total, weights, kept = 0, 0, []
    for name in LINEARS:
        k_in, n_out = shape.linear(name.removesuffix("_b"))
        nbytes, fp16 = layer_bytes(k_in, n_out, variant)
        total += depth * nbytes
        weights += depth * k_in * n_out
        if fp16 and variant != "fp16":
            kept.append(name)
    return {"bytes": total, "weights": weights, "bits_per_weight": 8 * total / weights, "fp16_layers": kept}
