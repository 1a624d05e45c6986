"""Model -> GraphModule: a torch.fx trace with one nested GraphModule per residual block.

The top-level graph calls ``layers.<i>`` as modules; each of those is itself a GraphModule
(traced with norms, linears and convs kept as modules, the scan as one ``ptq4vm::selective_scan``
node). Passes walk every graph; JLSS runs the block GraphModules one at a time.
"""

from __future__ import annotations

import copy

import torch
import torch.fx
from torch import nn

from .errors import InputError
from .models.vim import Block, RMSNorm, VisionMamba

SUPPORTED_MODELS = (VisionMamba,)


class _TopTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (Block, RMSNorm)) or super().is_leaf_module(m, qualname)


class _BlockTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, RMSNorm) or super().is_leaf_module(m, qualname)


def check_supported(model: nn.Module) -> None:
    if not isinstance(model, SUPPORTED_MODELS):
        names = ", ".join(cls.__name__ for cls in SUPPORTED_MODELS)
        raise InputError(
            f"unsupported model {type(model).__name__}: ptq4vm_fx quantizes {names} "
            "(build one with timm.create_model('vim_tiny_patch16_224') after importing ptq4vm_fx)"
        )


def capture(model: nn.Module) -> torch.fx.GraphModule:
    """Trace a supported model into a GraphModule (eval mode) with one GraphModule per block.

    The GraphModule owns a copy of the parameters: passes never touch the caller's model."""
    check_supported(model)
    model = copy.deepcopy(model).eval()
    top = torch.fx.GraphModule(model, _TopTracer().trace(model), class_name="CapturedVim")
    for name, module in list(top.named_modules()):
        if isinstance(module, Block):
            block = torch.fx.GraphModule(module, _BlockTracer().trace(module), class_name="CapturedBlock")
            parent, _, child = name.rpartition(".")
            setattr(top.get_submodule(parent), child, block)
    top.meta["model_config"] = dict(model.config)
    top.meta["model_name"] = getattr(model, "model_name", None)
    top.meta["num_tokens"] = model.num_tokens
    top.meta["img_size"] = tuple(model.patch_embed.img_size)
    return top


def blocks(gm: torch.fx.GraphModule) -> list[tuple[str, torch.fx.GraphModule]]:
    """The captured block GraphModules in execution order, as (qualified name, module)."""
    order = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    return [(t, gm.get_submodule(t)) for t in order if isinstance(gm.get_submodule(t), torch.fx.GraphModule)]

