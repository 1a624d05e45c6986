"""Constructor argument checks the family files share (VSSM, LocalVSSM, LocalVim): each refuses a value
with one :class:`InputError` line naming the model (``model``: "VSSM"), the argument and what is supported."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import InputError


def refuse_unknown(model: str, kwargs: dict) -> None:
    """Refuse keyword arguments the official constructor does not take."""
    if kwargs:
        raise InputError(f"{model}: unknown keyword arguments: {', '.join(sorted(kwargs))}")


def positive_int(model: str, name: str, value) -> int:
    """``value`` if it is an int >= 1 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{model}: {name}={value!r} is not supported: expected a positive integer")
    return value


def choice(model: str, name: str, value, supported: Sequence, lower: bool = False):
    """``value`` (lower-cased with ``lower``, as the official code does for layer names) if supported."""
    key = value.lower() if lower and isinstance(value, str) else value
    if key not in supported:
        raise InputError(f"{model}: {name}={value!r} is not supported; supported: {', '.join(map(str, supported))}")
    return key


def stage_widths(model: str, depths: Sequence[int], dims: int | Sequence[int]) -> tuple[list[int], list[int]]:
    """(depths, dims) per stage, checked; an int ``dims`` doubles per stage, as in the official VSSMs."""
    depths = [positive_int(model, "depths", d) for d in depths]
    dims = [int(dims * 2**i) for i in range(len(depths))] if isinstance(dims, int) else list(dims)
    if len(dims) != len(depths):
        raise InputError(f"{model}: dims={dims} and depths={depths} must have the same length")
    for d in dims:
        positive_int(model, "dims", d)
    return depths, dims


def ssm_conv_size(model: str, ssm_conv) -> int:
    """The depthwise conv's kernel size: odd, or < 2 for no conv."""
    if isinstance(ssm_conv, bool) or not isinstance(ssm_conv, int) or (ssm_conv > 1 and ssm_conv % 2 == 0):
        raise InputError(
            f"{model}: ssm_conv={ssm_conv!r} is not supported; supported: an odd kernel size, or < 2 for no conv"
        )
    return ssm_conv


def no_checkpointing(model: str, use_checkpoint) -> None:
    """Refuse ``use_checkpoint=True``: activation checkpointing is for training."""
    if use_checkpoint:
        raise InputError(f"{model}: use_checkpoint=True (activation checkpointing for training) is not supported")
