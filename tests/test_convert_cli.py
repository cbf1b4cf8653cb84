"""tools/convert_to_d2.py as a user runs it: a report on success, one `error:` line on failure."""

import os
import subprocess
import sys
from pathlib import Path

import torch
import torchvision

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "convert_to_d2.py"


def run_cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_cli_prints_the_detected_format_and_the_config_to_set(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "tv.pth")
    result = run_cli(
        tmp_path / "tv.pth",
        tmp_path / "d2.pkl",
        "--pixel-mean",
        "0.5",
        "0.5",
        "0.5",
        "--pixel-std",
        "0.25",
        "0.25",
        "0.25",
    )

    assert result.returncode == 0, result.stderr
    assert "detected: layout torchvision (torchvision-named state dict" in result.stdout
    assert "verification: max |diff|" in result.stdout
    # Values as Detectron2's command-line opts parse them (False, not JSON's false).
    assert "MODEL.RESNETS.STRIDE_IN_1X1 False" in result.stdout
    assert "MODEL.PIXEL_MEAN [127.5, 127.5, 127.5]" in result.stdout
    assert "INPUT.FORMAT RGB" in result.stdout
    assert (tmp_path / "d2.pkl").is_file() and (tmp_path / "d2.json").is_file()


def test_cli_error_is_one_line_exit_2_and_writes_nothing(tmp_path):
    (tmp_path / "notes.pth").write_text("not a checkpoint\n")
    result = run_cli(tmp_path / "notes.pth", tmp_path / "d2.pkl")

    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if "Warning" not in line]
    error_lines = [line for line in error_lines if line.startswith("error:")]
    assert len(error_lines) == 1 and "is a text file" in error_lines[0]
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.pth"]
