"""Progress bars and the package logger.

Bars are shown on a terminal only: silent under ``--quiet`` (``set_quiet(True)``), when stderr is
not a TTY, and on every process but the first under torch.distributed. Messages go to the
``ptq4vm_fx`` logger (``--verbose`` shows its INFO records: per-block JLSS losses, timings).
"""

from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm

from . import distributed

log = logging.getLogger("ptq4vm_fx")
_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def bars_enabled() -> bool:
    return not _quiet and sys.stderr.isatty() and distributed.is_main()


def progress(iterable=None, **kwargs) -> tqdm:
    """tqdm over ``iterable`` (or a manual bar with ``total=``), disabled unless ``bars_enabled()``."""
    return tqdm(iterable, disable=not bars_enabled(), leave=False, dynamic_ncols=True, **kwargs)
