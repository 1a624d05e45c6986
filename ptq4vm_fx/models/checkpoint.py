"""Loading float checkpoints: official hustvl/Vim files and plain state dicts."""

from __future__ import annotations

import argparse
import functools
import os
import re
import warnings

import torch
from torch import nn

from ..errors import InputError
from .family import FAMILIES


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in ``path``: ``{'model': sd, ...}`` (hustvl/Vim, DeiT style), ``{'state_dict': sd}``
    or a bare state dict. Never unpickles code: ``weights_only=True``, with argparse.Namespace (the
    official files' ``args``) allowed as plain data."""
    obj = load_tensors(path, "a float checkpoint", [argparse.Namespace])
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_ema"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"checkpoint {path} holds no state dict (expected {{'model': state_dict, ...}})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_tensors(path: str | os.PathLike, what: str, allowed: list[type] = ()) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors, plain containers and the ``allowed``
    types only. A missing, unreadable, truncated or code-carrying file is refused with one
    :class:`InputError` line that says what the file is not (``what``: "a float checkpoint").
    Nothing of torch's message or warnings is passed on: they advise ``weights_only=False``, which
    would run the code a malicious file carries."""
    if not os.path.exists(path):
        raise InputError(f"no such file: {path} (expected {what})")
    if not os.path.isfile(path):
        raise InputError(f"{path} is not {what} (it is not a file)")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(allowed)):
            warnings.filterwarnings("ignore", module=r"torch\._weights_only_unpickler")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # garbage, truncation and refused pickles raise several types, all the file's fault
        raise InputError(
            f"{path} is not {what} (not a readable torch.save archive of tensors and plain data)"
        ) from None


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load ``path`` into ``model`` with strict key and shape checks; returns the model."""
    state = read_state_dict(path)
    check_state_dict(model, state, f"checkpoint {path}")
    model.load_state_dict(state, strict=True)
    return model


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Raise InputError (one line: "<source> does not fit <model name>: ...") naming the missing keys,
    unexpected keys and wrong shapes, and the family whose keys ``state_dict`` holds when it is another
    one's. A module may take other shapes for its own tensors: ``alternative_shapes()`` -> {name: shape}
    (VMamba's Linear2d: an (out, in, 1, 1) weight)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    alternative = {
        f"{prefix}.{name}" if prefix else name: shape
        for prefix, module in model.named_modules() if hasattr(module, "alternative_shapes")
        for name, shape in module.alternative_shapes().items()
    }  # fmt: skip
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape not in (v.shape, alternative.get(k))
    ]

    def listed(what: str, items: list[str]) -> str:
        return f"{what} ({len(items)}): {', '.join(items[:8])}{', ...' if len(items) > 8 else ''}"

    problems = [
        listed(what, items)
        for what, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong))
        if items
    ]
    if problems:
        name = getattr(model, "model_name", type(model).__name__)
        other = _family_of_keys(state_dict) if missing and unexpected else None
        own = next((f.name for f in FAMILIES.values() if isinstance(model, f.model_class)), None)
        holds = f" (it holds a {other} model, not a {own} one)" if other not in (None, own) else ""
        raise InputError(f"{source} does not fit {name}{holds}: " + "; ".join(problems))


class CheckedLoading:
    """A model mixin: ``load_state_dict(..., strict=True)`` raises :func:`check_state_dict`'s InputError
    before loading anything, instead of torch's multi-line RuntimeError."""

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if strict:
            check_state_dict(self, state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _key_patterns(keys) -> set[str]:
    """State-dict keys with their indices (block, direction) replaced by '#'."""
    return {re.sub(r"\d+", "#", key) for key in keys}


@functools.cache
def _family_patterns() -> dict[str, frozenset[str]]:
    """{family name: key patterns of its first registered model} (weightless, on the meta device)."""
    patterns = {}
    with torch.device("meta"):
        for family in FAMILIES.values():
            name = family.model_names()[0]
            patterns[family.name] = frozenset(_key_patterns(family.create(name).state_dict()))
    return patterns


def _family_of_keys(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The family whose key patterns ``state_dict`` shares most of (Jaccard index), if at least half."""
    keys = _key_patterns(state_dict)
    score = {name: len(keys & p) / len(keys | p) for name, p in _family_patterns().items()}
    best = max(score, key=score.get, default=None)
    return best if best is not None and score[best] >= 0.5 else None
