"""The fused custom ops the lowering's rewrites produce: ``torch.ops.ptq4vm_fused.*``.

Each is defined once with :func:`ptq4vm_fx.ops.define_op` from its kernel module: the signature and
CPU implementation from the pure-PyTorch ``*_ref``, the Triton kernel's public function on CUDA, the
``*_fake`` for Dynamo, AOTAutograd and Inductor (which call them as opaque extern kernels). Inference
only: none has an autograd formula. Shapes, dtypes and numerics are in the kernels' docstrings
(docs/design.md sections 3 and 7): activations token-major ``(..., L, C)`` (``(batch, D, L)`` for
the conv and scan inputs), ``scale`` / ``zero_point`` (L,) per-token static, ``inv_smooth`` (C,).
Every output is a new tensor with the layout its fake promises: contiguous, except the float
(batch, D, L) outputs of the conv and the scans, stored token-major (:func:`ptq4vm_fx.scan.token_major`).

The ``ptq4vm::`` ops a quantized model calls (``quantize_per_token``, ``int8_linear``) run their
kernels on CUDA themselves: no rewrite is needed to lower them. ``conv1d_silu`` and
``bidirectional_scan`` quantize nothing: a float model lowers to them too.
"""

from __future__ import annotations

import torch

from ..kernels import int8_linear as _gemm
from ..kernels import quantize as _quantize
from ..kernels import selective_scan as _scan
from ..ops import define_op

int8_linear_quantize = define_op("ptq4vm_fused::int8_linear_quantize", _gemm.int8_linear_quantize_ref,
                                 _gemm.int8_linear_quantize, _gemm.int8_linear_quantize_fake)
int8_linear_softplus = define_op("ptq4vm_fused::int8_linear_softplus", _gemm.int8_linear_softplus_ref,
                                 _gemm.int8_linear_softplus, _gemm.int8_linear_softplus_fake)
int8_linear_silu = define_op("ptq4vm_fused::int8_linear_silu", _gemm.int8_linear_silu_ref, _gemm.int8_linear_silu,
                             _gemm.int8_linear_silu_fake)
add_rmsnorm_quantize = define_op("ptq4vm_fused::add_rmsnorm_quantize", _quantize.add_rmsnorm_quantize_ref,
                                 _quantize.add_rmsnorm_quantize, _quantize.add_rmsnorm_quantize_fake)
conv1d_silu_quantize = define_op("ptq4vm_fused::conv1d_silu_quantize", _quantize.conv1d_silu_quantize_ref,
                                 _quantize.conv1d_silu_quantize, _quantize.conv1d_silu_quantize_fake)
conv1d_silu = define_op("ptq4vm_fused::conv1d_silu", _quantize.conv1d_silu_ref, _quantize.conv1d_silu,
                        _quantize.conv1d_silu_fake)
bidirectional_scan = define_op("ptq4vm_fused::bidirectional_scan", _scan.bidirectional_scan_ref,
                               _scan.bidirectional_scan, _scan.bidirectional_scan_fake)
bidirectional_scan_quantize = define_op("ptq4vm_fused::bidirectional_scan_quantize",
                                        _scan.bidirectional_scan_quantize_ref, _scan.bidirectional_scan_quantize,
                                        _scan.bidirectional_scan_quantize_fake)

# The ops as the graph calls them (torch.ops.ptq4vm_fused.<name>.default), for the rewrites.
FUSED_OPS = torch.ops.ptq4vm_fused
