"""Model families: the one place each family declares what the rest of the project needs of it.

A family file (``models/zoo.py`` for Vim, ``models/vmamba.py``, ...) builds its models and registers
one :class:`ModelFamily`; capture, passes, serialization, the CLI and the report read it and never
name a family's classes (docs/design.md section 11). Adding a family is one file and its spec.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch.fx
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import register_model
from torch import nn

from ..errors import InputError


@dataclass(frozen=True)
class ModelFamily:
    """What capture, the passes, serialization, the CLI and the report need to know of a family.

    name: "vim", "vmamba", ...; model_class: the top-level nn.Module (its ``config`` dict holds its
    constructor arguments, so ``model_class(**config)`` rebuilds it); model_names: the registered
    names (timm), ``create(name, **overrides)`` builds one; config_keys: the keys ``overrides`` may
    hold; block_classes: the residual blocks, each
    captured as its own GraphModule (the JLSS unit); leaf_classes: modules kept whole inside a block
    graph (norms, ...); fold_norms: norms whose per-channel weight (and bias) absorbs the smoothing
    1/m of the one linear they feed; linears: the quantized linears by last name component, each a
    name or an fnmatch pattern (``"x_proj_[0-9]*"``: one linear per scan direction); alpha: the default
    SmoothQuant migration strength; scan_orders: the scan's direction orders, in words (report,
    docs); image_size(model) -> (H, W) the model is built for, or None when it takes any size (the
    calibration size is then fixed at capture); model_checks_size: the model refuses other sizes
    itself (Vim: its position embedding), else capture guards the captured graph at its size;
    channel_dim: the channel dim of a block's output (JLSS's cosine is taken over it);
    canonicalize(block): a family's rewrite of a captured block graph into the form the passes read
    (call_module ``nn.Linear`` on (..., tokens, channels)), or None; official_jlss: the QuantConfig
    fields (JLSS epochs, batch, learning rates) the public PTQ4VM code runs this family with (recipe
    "official", docs/design.md section 5), or None where that code has no settings for it.
    """

    name: str
    model_class: type[nn.Module]
    model_names: Callable[[], list[str]]
    create: Callable[..., nn.Module]
    config_keys: Callable[[], list[str]]
    block_classes: tuple[type[nn.Module], ...]
    leaf_classes: tuple[type[nn.Module], ...]
    fold_norms: tuple[type[nn.Module], ...]
    linears: tuple[str, ...]
    alpha: float
    scan_orders: tuple[str, ...]
    image_size: Callable[[nn.Module], tuple[int, int] | None]
    model_checks_size: bool = False
    channel_dim: int = -1
    canonicalize: Callable[[torch.fx.GraphModule], None] | None = None
    official_jlss: dict | None = None

    def build(self, config: dict) -> nn.Module:
        """The float model of a recorded configuration (``model.config``)."""
        return self.model_class(**config)


def selects(patterns: Iterable[str], name: str) -> bool:
    """Whether the linear ``name`` (last name component) is one of ``patterns`` (names or fnmatch patterns)."""
    return any(name == p or fnmatchcase(name, p) for p in patterns)


FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Add ``family`` to :data:`FAMILIES` (called once by its family file, on import)."""
    FAMILIES[family.name] = family
    return family


def family_of(model: nn.Module) -> ModelFamily:
    """The family of a float model (the most derived registered class in its MRO, so a subclass registered
    as a family of its own is never taken for its base's); an InputError naming the supported classes
    otherwise."""
    for cls in type(model).__mro__:
        for family in FAMILIES.values():
            if family.model_class is cls:
                return family
    supported = ", ".join(f"{f.model_class.__name__} ({f.name})" for f in FAMILIES.values())
    raise InputError(
        f"unsupported model {type(model).__name__}: ptq4vm_fx quantizes {supported} "
        "(build one with timm.create_model('vim_tiny_patch16_224') after importing ptq4vm_fx)"
    )


def family_named(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise InputError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def model_names() -> list[str]:
    """Every registered model name, all families."""
    return [name for family in FAMILIES.values() for name in family.model_names()]


def family_of_name(model_name: str) -> ModelFamily:
    """The family that registers ``model_name``; an InputError listing the known names otherwise."""
    for family in FAMILIES.values():
        if model_name in family.model_names():
            return family
    raise InputError(f"unknown model {model_name!r}; known models: {', '.join(model_names())}")


def create_model(model_name: str, **overrides) -> nn.Module:
    """A registered model by name, any family; ``overrides`` change its configuration."""
    return family_of_name(model_name).create(model_name, **overrides)


def check_overrides(model_name: str, overrides: dict) -> None:
    """Refuse configuration keys the model's family does not have, listing the valid ones."""
    valid = family_of_name(model_name).config_keys()
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise InputError(
            f"unknown model configuration key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"valid keys: {', '.join(valid)}"
        )


# ---- what the family files share to build and register their named models ----------------------------

_TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "features_only")


def model_overrides(name: str, known: Collection[str], pretrained: bool, overrides: dict) -> dict:
    """``overrides`` (the model's keyword arguments) less those timm passes every model; an InputError
    for a name not in ``known`` (listing them) or ``pretrained=True`` (no weights are downloaded)."""
    if name not in known:
        raise InputError(f"unknown model {name!r}; known models: {', '.join(known)}")
    if pretrained:
        raise InputError(
            f"{name}: no weights are downloaded; build with pretrained=False and load an official "
            "checkpoint with ptq4vm_fx.models.load_checkpoint(model, path)"
        )
    return {key: value for key, value in overrides.items() if key not in _TIMM_ONLY_KWARGS}


def named_model(model: nn.Module, name: str, input_size: tuple[int, int, int]) -> nn.Module:
    """``model`` with its registered name and timm's data config (``pretrained_cfg``: images of
    ``input_size`` (C, H, W), ImageNet mean and std); returns it."""
    model.model_name = name
    model.pretrained_cfg = dict(
        input_size=tuple(input_size), crop_pct=0.875, interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, num_classes=model.num_classes,
    )  # fmt: skip
    return model


def register_with_timm(name: str, create: Callable[..., nn.Module], doc: str) -> Callable[..., nn.Module]:
    """Register ``name`` with timm (``timm.create_model(name, **overrides)`` calls ``create(name,
    pretrained=..., **overrides)``) as an entry point of ``create``'s module, and bind it there under
    ``name``, as a timm model module's own entry points are; returns the entry point."""

    def entry(pretrained: bool = False, **kwargs) -> nn.Module:
        return create(name, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = create.__module__
    entry.__doc__ = doc
    setattr(sys.modules[create.__module__], name, entry)
    return register_model(entry)


def constructor_keys(cls: type[nn.Module]) -> list[str]:
    """The keyword arguments ``cls`` takes (its ``**kwargs`` catch-all left out), sorted."""
    return sorted(k for k, p in inspect.signature(cls).parameters.items() if p.kind is not p.VAR_KEYWORD)
