"""Progress bars and the package logger.

Bars are shown on a terminal only: silent under ``--quiet`` (``set_quiet(True)``), when stderr is
not a TTY, and on every process but the first under torch.distributed. Messages go to the
``ptq4vm_fx`` logger (``--verbose`` shows its INFO records: per-block JLSS losses, timings).
"""

from __future__ import annotations

import logging
import sys

import torch
from tqdm.auto import tqdm

from . import distributed

log = logging.getLogger("ptq4vm_fx")
_quiet = False
# torch.utils.cpp_extension logs this when first imported (Inductor imports it) on a machine with a CUDA
# toolkit but no CUDA GPU: a notice about its own CUDA lookup, not about the user's run
CUDA_HOME_NOTICE = "No CUDA runtime is found"


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def bars_enabled() -> bool:
    return not _quiet and sys.stderr.isatty() and distributed.is_main()


def progress(iterable=None, **kwargs) -> tqdm:
    """tqdm over ``iterable`` (or a manual bar with ``total=``), disabled unless ``bars_enabled()``."""
    return tqdm(iterable, disable=not bars_enabled(), leave=False, dynamic_ncols=True, **kwargs)


class _DropCudaHomeNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(CUDA_HOME_NOTICE)


def hide_cuda_home_notice() -> None:
    """On a machine without a CUDA GPU, keep torch.utils.cpp_extension's "No CUDA runtime is found, using
    CUDA_HOME=..." notice off the screen (call it before torch.compile); every other record of that
    logger still shows."""
    if torch.cuda.is_available():
        return
    logger = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _DropCudaHomeNotice) for f in logger.filters):
        logger.addFilter(_DropCudaHomeNotice())
