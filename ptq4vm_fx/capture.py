"""Model -> GraphModule: a torch.fx trace with one nested GraphModule per residual block.

The top-level graph calls each block (the family's ``block_classes``) as a module; each of those is
itself a GraphModule, traced with the family's ``leaf_classes`` (norms), linears and convs kept as
modules and the scan as ``ptq4vm::selective_scan`` nodes, then put in the form the passes read by
the family's ``canonicalize``. Passes walk every block graph; JLSS runs them one at a time.

The image size is fixed here (per-token static scales fix the token count): the family's, or for a
family whose models take any size, the size given (the calibration size). Unless the model refuses
other sizes itself, a guard after the input refuses them with an InputError.
"""

from __future__ import annotations

import copy

import torch
import torch.fx
from torch import nn

from .errors import InputError
from .models.family import ModelFamily, family_of


def check_input_size(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Raise an InputError unless the image batch ``x`` (batch, C, H, W) is height x width; returns ``x``."""
    if x.dim() == 4 and (x.shape[-2] != height or x.shape[-1] != width):
        raise InputError(
            f"input image size {x.shape[-2]}x{x.shape[-1]} does not match the model's {height}x{width}: the "
            "captured model runs at the size it was calibrated for (per-token static scales fix the token count)"
        )
    return x


class _Tracer(torch.fx.Tracer):
    """A tracer that keeps instances of ``leaves`` (and torch's own leaves) as call_module nodes."""

    def __init__(self, leaves: tuple[type[nn.Module], ...]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)


def check_supported(model: nn.Module) -> ModelFamily:
    """The model's family; an InputError naming the supported models otherwise."""
    return family_of(model)


def capture(model: nn.Module, image_size: tuple[int, int] | None = None) -> torch.fx.GraphModule:
    """Trace a supported model into a GraphModule (eval mode) with one GraphModule per block.

    image_size: (H, W) the model will run at; only read for a family whose models take any size
    (``ModelFamily.image_size`` None), where it is required. The GraphModule owns a copy of the
    parameters: passes never touch the caller's model."""
    family = family_of(model)
    size = family.image_size(model) or image_size
    if size is None:
        raise InputError(f"{type(model).__name__} takes any image size: capture needs the one it will run at")
    size = tuple(int(side) for side in size)
    model = copy.deepcopy(model).eval()
    top = torch.fx.GraphModule(model, _Tracer(family.block_classes + family.leaf_classes).trace(model),
                               class_name=f"Captured{type(model).__name__}")
    for name, module in list(top.named_modules()):
        if isinstance(module, family.block_classes):
            block = torch.fx.GraphModule(module, _Tracer(family.leaf_classes).trace(module),
                                         class_name="CapturedBlock")
            if family.canonicalize is not None:
                family.canonicalize(block)
            parent, _, child = name.rpartition(".")
            setattr(top.get_submodule(parent), child, block)
    if not family.model_checks_size:
        (placeholder,) = [n for n in top.graph.nodes if n.op == "placeholder"]
        with top.graph.inserting_after(placeholder):
            guarded = top.graph.call_function(check_input_size, (placeholder, *size))
        placeholder.replace_all_uses_with(guarded, delete_user_cb=lambda user: user is not guarded)
        top.recompile()
    top.meta["family"] = family.name
    top.meta["model_config"] = dict(model.config)
    top.meta["model_name"] = getattr(model, "model_name", None)
    top.meta["img_size"] = size
    return top


def blocks(gm: torch.fx.GraphModule) -> list[tuple[str, torch.fx.GraphModule]]:
    """The captured block GraphModules in execution order, as (qualified name, module)."""
    order = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    return [(t, gm.get_submodule(t)) for t in order if isinstance(gm.get_submodule(t), torch.fx.GraphModule)]
