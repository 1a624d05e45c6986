"""Token orders of 2D scans as the maps ``ptq4vm::ordered_scan`` reads (docs/design.md section 6).

A direction is ``(order, window, flip)``: ``order`` "h" (row-major tokens), "v" (column-major) or "w"
(``window`` x ``window`` windows in row-major order, row-major inside each; the map zero-padded at the
bottom / right to window multiples, the padded tokens scanned), ``flip`` scanned backwards. For an
(H, W) map whose tokens are numbered row-major (``x.flatten(2)``), :func:`token_orders` gives, per
direction, the token read at each scan step (-1: a padded token) and :func:`token_scatters` the token
each step's output goes to under LocalMamba's merge. The maps are built once per (directions, H, W,
device) and cached; :func:`sequence_maps` and :func:`sequence_scan_maps` give LocalVim's (its conv1d
runs over each direction's sequence, the class token inserted in it). Inside an FX graph each is one
opaque call (``torch.fx.wrap`` in the calling module), and Dynamo reads a cached map as a constant of
the compiled graph (it records the first call's cache store as a side effect).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["token_orders", "token_scatters", "sequence_maps", "sequence_scan_maps"]

DirectionSpec = tuple[str, int, bool]  # (order "h" | "v" | "w", window size (0 unless "w"), flip)

_CACHE: dict[tuple, Tensor] = {}


def _cached(key: tuple, build: Callable[[], Tensor]) -> Tensor:
    """The cached maps under ``key``, built by ``build()`` on the first call."""
    maps = _CACHE.get(key)
    if maps is None:
        maps = _CACHE[key] = build()
    return maps


def _reads(order: str, window: int, height: int, width: int) -> Tensor:
    """(S,) int64: the token read at each step of the unflipped order (-1 for a padded token)."""
    tokens = torch.arange(height * width).view(height, width)
    if order == "h":
        return tokens.flatten()
    if order == "v":
        return tokens.t().flatten()
    padded = torch.full((-(-height // window) * window, -(-width // window) * window), -1)
    padded[:height, :width] = tokens
    groups_h, groups_w = padded.shape[0] // window, padded.shape[1] // window
    return padded.view(groups_h, window, groups_w, window).permute(0, 2, 1, 3).flatten()


def _writes(order: str, window: int, height: int, width: int) -> Tensor:
    """(S,) int64: the token each step's output goes to under LocalMamba's merge (-1 where the step reads a
    padded token): the read token, except for "v", whose official merge reads the column-major output back
    as if it were an (H, W) map (step a W + b to token b H + a; the inverse of the read order only when
    H == W)."""
    if order != "v":
        return _reads(order, window, height, width)
    return torch.arange(height * width).view(width, height).t().flatten()


def _maps(kind: str, x: Tensor, directions: tuple[DirectionSpec, ...]) -> Tensor:
    """The cached (K, S) int32 maps of ``kind`` ("reads" or "writes") for x's (H, W) and device."""
    height, width = int(x.shape[-2]), int(x.shape[-1])

    def build() -> Tensor:
        step = _reads if kind == "reads" else _writes
        rows = [step(order, window, height, width) for order, window, _ in directions]
        if len({len(row) for row in rows}) != 1:
            raise ValueError(f"directions {directions} have different lengths on a {height}x{width} map: "
                             "one ordered scan sums directions of one length")
        rows = [row.flip(0) if flip else row for row, (_, _, flip) in zip(rows, directions)]
        return torch.stack(rows).to(device=x.device, dtype=torch.int32)

    return _cached((kind, directions, height, width, x.device), build)


def token_orders(x: Tensor, directions: tuple[DirectionSpec, ...]) -> Tensor:
    """(K, S) int32 on x's device: step i of direction k reads token ``[k, i]`` of the (batch, C, H, W)
    map ``x`` flattened row-major (-1: a zero-padded token). Every direction must have the same S."""
    return _maps("reads", x, directions)


def token_scatters(x: Tensor, directions: tuple[DirectionSpec, ...]) -> Tensor:
    """(K, S) int32: the token each step's output goes to under LocalMamba's merge (-1: dropped), the
    scatter map of :func:`token_orders`'s orders."""
    return _maps("writes", x, directions)


def _sequence(row: Tensor, height: int, width: int, cls: bool, flip: bool) -> Tensor:
    """LocalVim's sequence of a grid-token map row (row-major grid indices, -1 kept): each grid token g as its
    index among the H W (+ 1) natural tokens (g + 1 past the middle class token at c = H W // 2), and with
    the class token the index c inserted at step c (at S - c for a flipped direction, S the row's length)."""
    if not cls:
        return row
    c = height * width // 2
    row = torch.where(row >= c, row + 1, row)
    q = len(row) - c if flip else c
    return torch.cat((row[:q], torch.tensor([c]), row[q:]))


def sequence_maps(x: Tensor, direction: DirectionSpec, height: int, width: int, cls: bool) -> Tensor:
    """(2, S) int32 on x's device for LocalVim's direction over an (H, W) token grid whose T = H W (+ 1 with the
    middle class token, at natural index H W // 2) tokens x holds in natural order: row 0 the token each step
    of the unflipped sequence reads (the conv's and z's input; -1: a zero-padded window token), row 1 the token
    its output goes to under LocalMamba's merge (-1: dropped). A flipped direction keeps the unflipped
    sequence (its conv runs anticausal and its scan backwards over it) with the class token at S - H W // 2."""
    order, window, flip = direction

    def build() -> Tensor:
        rows = [_sequence(step(order, window, height, width), height, width, cls, flip) for step in (_reads, _writes)]
        return torch.stack(rows).to(device=x.device, dtype=torch.int32)

    return _cached(("sequence", direction, height, width, cls, x.device), build)


def sequence_scan_maps(x: Tensor, direction: DirectionSpec, height: int, width: int, cls: bool) -> Tensor:
    """(3, S) int32: LocalVim's direction as ``ptq4vm::ordered_scan`` walks it (its ``order``, ``z_order`` and
    ``scatter``, K = 1 each): per scan step the sequence position of u, delta, B and C (S - 1 down to 0 for a
    flipped direction), and :func:`sequence_maps`'s two rows in that step order."""

    def build() -> Tensor:
        reads_writes = sequence_maps(x, direction, height, width, cls)
        maps = torch.cat((torch.arange(reads_writes.shape[1], device=x.device, dtype=torch.int32)[None], reads_writes))
        return maps.flip(1) if direction[2] else maps

    return _cached(("sequence_scan", direction, height, width, cls, x.device), build)
