"""Pretraining checkpoints as fixed by docs/design.md: atomic writes, ``last.pth``, ``encoders``.

Files live in ``<output_dir>/checkpoints/epoch_XXXX.pth``; ``last.pth`` is a relative symlink
to the newest. Everything is written to a temp file in the same folder and renamed into place,
so a crash or preemption leaves either the old file or the new one, never half of one. The
content is plain tensors and Python containers, so ``torch.load(weights_only=True)`` reads it.
"""

import os
import re
import sys
from pathlib import Path

import torch

from pretrain.atomic_write import TEMP_SUFFIX, atomic_write
from pretrain.errors import PretrainError

FORMAT = "ring-nce-pretrain"
VERSION = 1
LAST = "last.pth"
EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pth$")
REQUIRED_KEYS = ("format", "version", "meta", "encoders", "model", "epoch", "global_step")


def checkpoint_dir(output_dir):
    return Path(output_dir) / "checkpoints"


def epoch_path(output_dir, epoch):
    return checkpoint_dir(output_dir) / f"epoch_{epoch:04d}.pth"


def point_last_at(path):
    """Atomically make ``last.pth`` (beside ``path``) a relative symlink to it."""
    link = path.parent / LAST
    tmp = path.parent / f".{LAST}.{os.getpid()}{TEMP_SUFFIX}"
    tmp.unlink(missing_ok=True)
    os.symlink(path.name, tmp)
    os.replace(tmp, link)


def save_checkpoint(checkpoint, output_dir, epoch):
    """Write ``epoch_XXXX.pth`` atomically, then repoint ``last.pth``; returns the path."""
    checkpoint = {"format": FORMAT, "version": VERSION, **checkpoint}
    path = epoch_path(output_dir, epoch)
    atomic_write(path, lambda handle: torch.save(checkpoint, handle), binary=True)
    point_last_at(path)
    return path


def load_checkpoint(path, map_location="cpu"):
    """Load and check a pretraining checkpoint; a bad file is a one-line PretrainError."""
    path = Path(path)
    if not path.is_file():
        raise PretrainError(f"checkpoint not found: {path} (check the path, or use resume=auto)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        reason = (str(error).strip() or "unreadable").splitlines()[0].split(". ")[0]
        raise PretrainError(
            f"checkpoint {path} is corrupt or truncated ({type(error).__name__}: {reason}); "
            "delete it to resume from an earlier one, or set resume=none to start over"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise PretrainError(
            f"{path} is not a ring-nce pretraining checkpoint (no format '{FORMAT}'); "
            "point resume at a file written by pretrain/run.py"
        )
    if checkpoint.get("version") != VERSION:
        raise PretrainError(
            f"checkpoint {path} has version {checkpoint.get('version')}, this code reads "
            f"version {VERSION}; use a matching ring-nce release"
        )
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise PretrainError(
            f"checkpoint {path} lacks {', '.join(missing)}; it is incomplete, delete it"
        )
    return checkpoint


def epoch_checkpoints(output_dir):
    """``epoch_XXXX.pth`` files of a run, newest first."""
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := EPOCH_FILE.match(p.name))]
    return [path for _, path in sorted(found, reverse=True)]


def latest_good_checkpoint(output_dir, warn=None):
    """``(path, checkpoint)`` of the newest loadable checkpoint, or ``(None, None)`` if none.

    A newer file that fails to load is skipped with a warning, so a run resumes from the last
    good state; if files exist but none loads, that is an error rather than a silent restart.
    """
    candidates = epoch_checkpoints(output_dir)
    failures = []
    for path in candidates:
        try:
            return path, load_checkpoint(path)
        except PretrainError as error:
            failures.append(str(error))
            print(f"warning: skipping {path}: {error}", file=warn or sys.stderr)
    if failures:
        raise PretrainError(
            f"no loadable checkpoint in {checkpoint_dir(output_dir)} ({len(failures)} corrupt); "
            "delete them or set resume=none to start over"
        )
    return None, None
