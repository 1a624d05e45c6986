"""Output paths: checked before any work (a calibration is not thrown away for a typo), then written."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import InputError


def check_output_file(path: str | None, option: str) -> None:
    """Refuse a file path (``option`` names it) that cannot be written: a folder, a file in a missing
    folder or in one this process cannot write to, an existing file it cannot overwrite."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{option} {path} is a folder: give a file path")
    folder = target.parent
    if not folder.is_dir():
        raise InputError(f"{option} {path}: folder {folder} does not exist")
    if target.exists() and not os.access(target, os.W_OK):
        raise InputError(f"{option} {path}: the file is not writable")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: folder {folder} is not writable")


def check_output_folder(path: str, option: str) -> None:
    """Refuse a folder path (``option`` names it; created with its parents when written) that cannot be
    written: an existing file, or a nearest existing ancestor that is a file or not writable."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise InputError(f"{option} {path} is a file: give a folder")
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"{option} {path}: {existing} is a file, so the folder cannot be made")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: folder {existing} is not writable")


def write_json(path: str, payload) -> None:
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
