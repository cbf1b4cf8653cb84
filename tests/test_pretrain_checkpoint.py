import os

import pytest
import torch

from pretrain import checkpoint as ckpt
from pretrain.errors import PretrainError


def minimal(epoch):
    return {
        "meta": {"arch": "resnet18"},
        "encoders": {},
        "model": {"w": torch.ones(2) * epoch},
        "epoch": epoch,
        "global_step": 10 * epoch,
    }


def test_save_writes_epoch_file_and_last_link(tmp_path):
    for epoch in (1, 2):
        path = ckpt.save_checkpoint(minimal(epoch), tmp_path, epoch)
    assert path.name == "epoch_0002.pth"
    last = tmp_path / "checkpoints" / "last.pth"
    assert os.readlink(last) == "epoch_0002.pth"
    loaded = ckpt.load_checkpoint(last)
    assert loaded["format"] == "ring-nce-pretrain" and loaded["version"] == 1
    assert loaded["epoch"] == 2
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_corrupt_foreign_and_missing_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x80\x02garbage")
    with pytest.raises(PretrainError, match="corrupt or truncated") as info:
        ckpt.load_checkpoint(bad)
    assert "\n" not in str(info.value)
    torch.save({"state_dict": {}}, tmp_path / "foreign.pth")
    with pytest.raises(PretrainError, match="not a ring-nce pretraining checkpoint"):
        ckpt.load_checkpoint(tmp_path / "foreign.pth")
    with pytest.raises(PretrainError, match="checkpoint not found"):
        ckpt.load_checkpoint(tmp_path / "absent.pth")


def test_latest_good_skips_a_corrupt_newest(tmp_path, capsys):
    ckpt.save_checkpoint(minimal(1), tmp_path, 1)
    ckpt.save_checkpoint(minimal(2), tmp_path, 2)
    newest = ckpt.epoch_path(tmp_path, 2)
    newest.write_bytes(newest.read_bytes()[:100])  # a truncated file
    path, loaded = ckpt.latest_good_checkpoint(tmp_path)
    assert path.name == "epoch_0001.pth" and loaded["epoch"] == 1
    assert "skipping" in capsys.readouterr().err
    ckpt.epoch_path(tmp_path, 1).write_bytes(b"")
    with pytest.raises(PretrainError, match="no loadable checkpoint"):
        ckpt.latest_good_checkpoint(tmp_path)
    assert ckpt.latest_good_checkpoint(tmp_path / "elsewhere") == (None, None)
