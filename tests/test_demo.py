"""``make demo``'s shortened variant end to end: every stage runs on real data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.demo import SAMPLERS, report, selected_budget

REPO = Path(__file__).resolve().parents[1]
# what a clean terminal must not show (issue 20): library warnings between the progress lines
LIBRARY_NOISE = ("Warning", "torch.meshgrid", "No CUDA runtime", "CUDA_HOME")


def table_rows(lines):
    return [line.split("|")[1].strip() for line in lines if line.startswith("| ")][1:]


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
    terminal = done.stdout + done.stderr
    assert not [word for word in LIBRARY_NOISE if word in terminal], terminal[-3000:]
    headline, photos = (run_dir / "results.md").read_text().split("Real-photo check")
    assert "AP on held-out scenes" in headline and "over 1 seed)" in headline
    assert table_rows(headline.splitlines()) == [
        "raw pixels",
        "random init",
        "uniform-MoCo",
        "ring-MoCo",
    ]
    assert "evaluated on those same photos" in photos
    assert table_rows(photos.splitlines()) == ["uniform-MoCo", "ring-MoCo"]
    summary = json.loads((run_dir / "results.json").read_text())
    scenes, real = summary["transfer"]["scenes"], summary["transfer"]["photos"]
    assert sorted(scenes) == ["random", "ring", "uniform"] and sorted(real) == ["ring", "uniform"]
    for encoder in ("random", "uniform", "ring"):
        assert sorted(scenes[encoder]) == ["0"]  # seeds, as JSON keys
        for seed, result in scenes[encoder].items():
            assert set(result) == {"bbox", "segm"}
            output = run_dir / "transfer" / encoder / "scenes" / f"seed_{seed}"
            assert json.loads((output / "results.json").read_text()) == result
            config = (output / "config.yaml").read_text()
            assert "fmnist_scenes_test" in config and f"SEED: {seed}" in config
            # random init loads nothing; the pretrained rows their own converted weights
            weights = run_dir / "detectron2" / f"{encoder}_moco.pkl"
            assert ("WEIGHTS: ''" if encoder == "random" else f"WEIGHTS: {weights}") in config
    for sampler in ("uniform", "ring"):
        evaluation = summary["evaluation"][sampler]
        assert 0.1 < evaluation["knn20_top1"] <= 1.0  # 10 classes: better than chance
        assert 0.1 < evaluation["linear_top1"] <= 1.0
        assert set(real[sampler]["0"]) == {"bbox", "segm"}
        report = json.loads((run_dir / "detectron2" / f"{sampler}_moco.json").read_text())
        assert report["verification"]["max_abs_diff"] <= 1e-4
        assert (run_dir / "pretrain" / f"{sampler}_moco" / "checkpoints" / "last.pth").is_file()


def test_tables_give_intervals_paired_differences_and_say_what_the_photos_are():
    """Two seeds: mean ± 95% CI per row, the box-AP difference to random init paired by seed,
    "n/a" where a run made no prediction; the photos table is labelled train = test."""
    budget = selected_budget({"DEMO_FAST": "1"})
    budget = type(budget)(**{**budget.__dict__, "scenes_seeds": 2})
    accuracy = {"knn20_top1": 0.75, "linear_top1": 0.78}
    evaluations = {"raw pixels": accuracy, "uniform": accuracy, "ring": accuracy}
    converted = {s: (Path(f"{s}.pkl"), {"verification": {"max_abs_diff": 0.0}}) for s in SAMPLERS}

    def ap(box, mask):
        return {"bbox": {"AP": box}, "segm": {"AP": mask}}

    transfers = {
        "scenes": {
            "random": {0: ap(20.0, 18.0), 1: ap(22.0, 20.0)},
            "uniform": {0: ap(25.0, 21.0), 1: ap(26.0, 22.0)},
            "ring": {0: ap(24.0, 20.0), 1: ap(None, None)},
        },
        "photos": {"uniform": {0: ap(50.0, 40.0)}, "ring": {0: ap(30.0, 20.0)}},
    }
    text = report(evaluations, converted, transfers, budget)
    headline, photos = text.split("Real-photo check")
    rows = {line.split("|")[1].strip(): line for line in headline.splitlines() if line[:2] == "| "}
    # random: 21 ± t(0.975, 1) * 1 = 12.7; uniform minus random: 4.5 ± 12.7 * 0.5
    assert "| 21.0 ± 12.7 | 19.0 ± 12.7 | - |" in rows["random init"]
    assert "| 25.5 ± 6.4 | 21.5 ± 6.4 | +4.5 ± 6.4 |" in rows["uniform-MoCo"]
    assert rows["ring-MoCo"].endswith("| n/a | n/a | n/a |")
    assert "over 2 seeds" in headline and "evaluated on those same photos" in photos
    assert "| uniform-MoCo | 50.0 | 40.0 |" in photos
