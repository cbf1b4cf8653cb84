"""The one atomic-write helper: whole files, mode 0644 under any umask, nothing left on failure."""

import json
import os
import stat

import pytest

from pretrain.atomic_write import (
    atomic_write,
    remove_stale_temp_files,
    write_json_atomic,
    write_text_atomic,
)


def test_written_files_are_0644_under_a_strict_umask(tmp_path):
    previous = os.umask(0o077)
    try:
        text = write_text_atomic(tmp_path / "a" / "report.md", "hello\n")
        data = write_json_atomic(tmp_path / "metrics.json", {"loss": 1.5})
    finally:
        os.umask(previous)
    assert text.read_text() == "hello\n" and json.loads(data.read_text()) == {"loss": 1.5}
    assert {stat.S_IMODE(p.stat().st_mode) for p in (text, data)} == {0o644}


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    target = write_text_atomic(tmp_path / "eval.json", "old")

    def crash(handle):
        handle.write("half of the new")
        raise KeyboardInterrupt  # a kill mid-write, as BaseException

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path):
    stale = tmp_path / ".epoch_0003.pth.k2j4.tmp"
    stale.write_bytes(b"x")
    kept = [tmp_path / "epoch_0003.pth", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for path in kept:
        path.write_bytes(b"x")
    assert remove_stale_temp_files(tmp_path, tmp_path / "missing") == [stale]
    assert all(path.exists() for path in kept) and not stale.exists()
