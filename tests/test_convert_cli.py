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
    error_lines = result.stderr.splitlines()
    assert len(error_lines) == 1 and "is a text file" in error_lines[0]
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.pth"]


def test_entry_points_print_only_their_one_error_line(tmp_path):
    """No import-time warnings (torch.jit.script, Detectron2's Pillow deprecation) before it."""
    converter = run_cli(tmp_path / "missing.pth", tmp_path / "d2.pkl")
    assert converter.stderr.splitlines() == [
        f"error: checkpoint not found: {tmp_path / 'missing.pth'} (give the path of a .pth file)"
    ]
    trainer = subprocess.run(
        [sys.executable, str(REPO / "transfer" / "train_net.py"), "--config-file", "nope.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert len(trainer.stderr.splitlines()) == 1
    assert trainer.stderr.startswith("error: config file nope.yaml not found")


def test_only_the_known_warnings_are_silenced():
    code = (
        "import warnings, transfer.weights\n"
        "warnings.warn('`torch.jit.script` is deprecated elsewhere', FutureWarning)\n"
        "warnings.warn('LINEAR is deprecated, said by us', UserWarning)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    # same messages from another module or of another category still show
    assert "FutureWarning: `torch.jit.script` is deprecated elsewhere" in done.stderr
    assert "UserWarning: LINEAR is deprecated, said by us" in done.stderr


def test_the_run_time_noise_of_detectron2_runs_is_silenced_and_nothing_else():
    """torch.meshgrid's indexing warning (Detectron2's anchors), the list-of-arrays warning of
    its keypoints, the read-only-array warning of its RLE masks and torch's "No CUDA runtime" log
    line (its environment report): gone; the same from elsewhere, or another line of that logger,
    still shows."""
    code = (
        "import logging, warnings, numpy, torch, transfer\n"
        "from detectron2.data.detection_utils import annotations_to_instances\n"
        "from detectron2.structures import Keypoints\n"
        "torch.meshgrid(torch.arange(2), torch.arange(3))\n"
        "Keypoints([numpy.zeros((4, 3)), numpy.zeros((4, 3))])\n"
        "mask = numpy.ones((4, 4), dtype=numpy.uint8)\n"
        "mask.setflags(write=False)\n"
        "box = {'bbox': [0, 0, 2, 2], 'bbox_mode': 0, 'category_id': 0, 'segmentation': mask}\n"
        "annotations_to_instances([box], (4, 4), mask_format='bitmask')\n"
        "warnings.warn('Creating a tensor from a list of numpy.ndarrays is extremely slow: ours')\n"
        "warnings.warn('torch.meshgrid: in an upcoming release, said by us', UserWarning)\n"
        "log = logging.getLogger('torch.utils.cpp_extension')\n"
        "log.warning(\"No CUDA runtime is found, using CUDA_HOME='/usr/local/cuda'\")\n"
        "log.warning('another cpp_extension line')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert "said by us" in done.stderr and "another cpp_extension line" in done.stderr
    assert done.stderr.count("list of numpy.ndarrays") == 1 and "slow: ours" in done.stderr
    assert "Triggered internally" not in done.stderr and "No CUDA runtime" not in done.stderr
    assert "not writable" not in done.stderr
