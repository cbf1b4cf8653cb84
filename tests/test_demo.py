"""``make demo``'s shortened variant end to end: every stage runs on real data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fast_demo_runs_every_stage(tmp_path):
    run_dir = tmp_path / "demo"
    env = {**os.environ, "DEMO_FAST": "1", "DEMO_DIR": str(run_dir)}
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "demo.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"everything is under {run_dir}" in done.stdout
    table = (run_dir / "results.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in table[2:]] == [
        "raw pixels",
        "uniform-MoCo",
        "ring-MoCo",
    ]
    summary = json.loads((run_dir / "results.json").read_text())
    for sampler in ("uniform", "ring"):
        evaluation = summary["evaluation"][sampler]
        assert 0.1 < evaluation["knn20_top1"] <= 1.0  # 10 classes: better than chance
        assert 0.1 < evaluation["linear_top1"] <= 1.0
        transfer = summary["transfer"][sampler]
        assert set(transfer["mask"]) == {"bbox", "segm"}
        assert set(transfer["keypoints"]) == {"bbox", "keypoints"}
        report = json.loads((run_dir / "detectron2" / f"{sampler}_moco.json").read_text())
        assert report["verification"]["max_abs_diff"] <= 1e-4
        assert (run_dir / "pretrain" / f"{sampler}_moco" / "checkpoints" / "last.pth").is_file()
        for task in ("mask", "keypoints"):
            output = run_dir / "transfer" / f"{sampler}_moco" / task
            assert json.loads((output / "results.json").read_text()) == transfer[task]
