"""save / load of quantized models: tensors and plain metadata only, never pickled code.

The file is a ``torch.save`` dict read back with ``weights_only=True``. Loading rebuilds the
float Vim from its stored configuration, captures it, puts empty quantized linears where the
saved model had them and loads the state dict strictly.
"""

from __future__ import annotations

import os

import torch
import torch.fx

from .capture import blocks, capture
from .config import QuantConfig
from .models.vim import VisionMamba
from .passes.insert_observers import quantizable_linears
from .quant.linear import FakeQuantLinear, QuantizedLinear

FORMAT = "ptq4vm_fx.quantized/1"
_STAGES = ("quantized", "simulated")


def save(qmodel: torch.fx.GraphModule, path: str | os.PathLike) -> None:
    """Write a ``convert()`` result to ``path``."""
    meta = getattr(qmodel, "meta", {})
    if meta.get("stage") not in _STAGES:
        raise ValueError("save() takes the module returned by ptq4vm_fx.convert()")
    torch.save(
        {
            "format": FORMAT,
            "stage": meta["stage"],
            "model_name": meta.get("model_name"),
            "model_config": meta["model_config"],
            "quant_config": meta["quant_config"],
            "block_stats": meta.get("block_stats", {}),
            "state_dict": qmodel.state_dict(),
        },
        path,
    )


def _skeleton(config: QuantConfig, model_config: dict, packed: bool) -> torch.fx.GraphModule:
    """The captured float model with empty quantized linears where ``config`` puts them."""
    gm = capture(VisionMamba(**model_config))
    tokens = gm.meta["num_tokens"]
    dynamic = config.granularity == "per_token_dynamic"
    for _, block in blocks(gm):
        for node in quantizable_linears(block, config.linears):
            linear = block.get_submodule(node.target)
            if packed:
                q = QuantizedLinear(linear.in_features, linear.out_features, tokens, config.weight_bits,
                                    config.act_bits, dynamic, linear.bias is not None)
            else:
                q = FakeQuantLinear(linear.weight, linear.bias, tokens, config.weight_bits, config.act_bits, dynamic)
            block.set_submodule(node.target, q)
    return gm


def load(path: str | os.PathLike) -> torch.fx.GraphModule:
    """Read a file written by :func:`save`; returns the quantized GraphModule (eval mode)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"quantized model not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated files and foreign pickles raise several types
        raise ValueError(f"{path} is corrupt or not a ptq4vm_fx quantized model ({exc})") from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{path} is not a ptq4vm_fx quantized model (expected format {FORMAT!r})")
    try:
        config = QuantConfig.from_dict(obj["quant_config"])
        model_config, stage, state = obj["model_config"], obj["stage"], obj["state_dict"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: malformed ptq4vm_fx file ({exc})") from exc
    if stage not in _STAGES:
        raise ValueError(f"{path}: unknown stage {stage!r}")
    gm = _skeleton(config, model_config, packed=stage == "quantized")
    expected = gm.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and expected[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} does not match the model it describes: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shapes {wrong[:5]}"
        )
    gm.load_state_dict(state, strict=True)
    gm.meta.update(stage=stage, quant_config=config.to_dict(), model_name=obj.get("model_name"),
                   block_stats=obj.get("block_stats", {}))
    return gm.eval()
