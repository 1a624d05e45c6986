"""Quantizer math (fake quantization, qparams, grid search), observers and the quantized linear modules."""
