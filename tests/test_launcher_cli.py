"""tools/submit.py without a cluster: local jobs, example sweeps, one-line errors."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher.sweep import load_sweep, planned_runs

REPO = Path(__file__).resolve().parents[1]


def run_submit(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "submit.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("cluster", ["local", "debug"])
def test_probe_runs_without_slurm_and_reports_its_result(tmp_path, cluster):
    result = run_submit(
        "probe", "--cluster", cluster, "--workdir", tmp_path / "probe", "--steps", "3",
        "--seconds-per-step", "0", "--wait",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["steps"] == 3 and report["job_id"] is None  # not a Slurm job
    if cluster == "local":  # debug runs inside the submitting process: no job folder
        logs = list((tmp_path / "probe" / "submitit").iterdir())
        assert len(logs) == 1  # a fresh log folder for this submission


@pytest.mark.parametrize(
    "args, fragments",
    [
        pytest.param(
            ["pretrain", "--config", "/nonexistent.yaml", "--cluster", "local"],
            ["nonexistent"],
            marks=pytest.mark.slow,  # the trainer's imports (torch) take seconds
        ),
        pytest.param(
            ["pretrain", "--config", "configs/pretrain/ring_moco_fmnist.yaml", "optim.lrr=1"],
            ["optim.lrr", "optim.lr"],
            marks=pytest.mark.slow,
        ),
        (["sweep", "/nonexistent/sweep.yaml", "--cluster", "local"], ["does not exist"]),
        (["probe", "--workdir", "w", "--cluster", "local", "--nodes", "0"], ["--nodes"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, fragments):
    assert_one_line_error(run_submit(*args), *fragments)


def test_example_sweeps_are_valid(tmp_path, monkeypatch):
    # the examples name checkpoints that pretraining writes later: stand them in, empty
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    examples = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))
    assert examples
    for example in examples:
        for entry in yaml.safe_load(example.read_text())["checkpoints"].values():
            path = entry.get("path") if isinstance(entry, dict) else entry
            if path and path.endswith((".pth", ".pkl", ".pt")):
                checkpoint = tmp_path / path
                checkpoint.parent.mkdir(parents=True, exist_ok=True)
                checkpoint.touch()
        spec = load_sweep(example)
        assert len(planned_runs(spec)) == (
            len(spec["checkpoints"]) * len(spec["tasks"]) * len(spec["seeds"])
        )
    shutil.rmtree(tmp_path / "runs")
