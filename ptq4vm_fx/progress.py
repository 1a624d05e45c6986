"""Progress bars: shown on a terminal, silent under ``--quiet`` or when stderr is not a TTY."""

from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm

log = logging.getLogger("ptq4vm_fx")
_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def progress(iterable=None, **kwargs) -> tqdm:
    """tqdm over ``iterable`` that is disabled when quiet or not attached to a terminal."""
    disable = _quiet or not sys.stderr.isatty()
    return tqdm(iterable, disable=disable, leave=False, dynamic_ncols=True, **kwargs)
