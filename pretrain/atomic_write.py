"""The project's one way to write a file: whole or not at all, readable by collaborators.

A write goes to a temporary file beside its target (same file system, so the final rename is
atomic), is flushed to disk, made mode 0644 and renamed over the target. Readers therefore see
the old file or the new one, never half of one; a shared cluster's other users can read it
(mkstemp creates 0600). A write killed mid-way leaves ``.<name>.<random>.tmp``; the next run that
starts in that folder calls ``remove_stale_temp_files``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

TEMP_SUFFIX = ".tmp"
FILE_MODE = 0o644


def atomic_write(path, write: Callable, binary: bool = False) -> Path:
    """Call ``write(handle)`` on a temporary file, then rename it to ``path``; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb" if binary else "w") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text))


def write_json_atomic(path, data, indent: int = 2) -> Path:
    def dump(handle):
        json.dump(data, handle, indent=indent, default=str)
        handle.write("\n")

    return atomic_write(path, dump)


def is_temp_file(path: Path) -> bool:
    """True for a temporary file of ``atomic_write`` (hidden, ``.<name>.<random>.tmp``)."""
    return path.is_file() and path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def remove_stale_temp_files(*folders) -> list[Path]:
    """Delete the temporary files a killed write left in ``folders``; return what was removed.

    Call it only where a run is starting and nothing else writes there at the same time.
    """
    removed = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if is_temp_file(path):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
