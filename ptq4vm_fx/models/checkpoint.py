"""Loading float checkpoints: official hustvl/Vim files and plain state dicts."""

from __future__ import annotations

import argparse
import os
import warnings

import torch
from torch import nn

from ..errors import InputError


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
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(
            f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}"
        )
    if wrong:
        problems.append(f"wrong shapes ({len(wrong)}): {', '.join(wrong[:8])}")
    if problems:
        name = getattr(model, "model_name", type(model).__name__)
        raise InputError(f"checkpoint {path} does not fit {name}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model
