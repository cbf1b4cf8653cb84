"""Results collection from a sweep directory: figures, failures with logs, file outputs."""

import csv
import json
import pickle
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher.collect import collect, markdown_report, write_reports
from launcher.sweep import Run

REPO = Path(__file__).resolve().parents[1]
SPEC = {
    "checkpoints": {"ring": {"path": "/c/ring.pth"}, "uniform": {"path": "/c/uniform.pth"}},
    "tasks": {"mask": {"config": "/t/mask.yaml", "opts": []}},
    "seeds": [0, 1, 2],
    "opts": [],
}
# (checkpoint, seed) -> bbox AP; segm AP is bbox AP - 3, AP50 = AP + 20, AP75 = AP + 2
BBOX_AP = {("ring", 0): 40.0, ("ring", 1): 42.0, ("ring", 2): 44.5, ("uniform", 0): 38.0}


def scores(ap):
    return {"AP": ap, "AP50": ap + 20, "AP75": ap + 2, "APs": 1.0}


def write_sweep_dir(root):
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.yaml").write_text(yaml.safe_dump({**SPEC, "output_dir": str(root)}))
    for (checkpoint, seed), ap in BBOX_AP.items():
        directory = Run(checkpoint, "mask", seed).directory(root)
        directory.mkdir(parents=True)
        results = {"bbox": scores(ap), "segm": scores(ap - 3)}
        (directory / "results.json").write_text(json.dumps(results))
    # uniform seed 1: the job failed; submitit saved its traceback in the result pickle
    failed = Run("uniform", "mask", 1).directory(root)
    failed.mkdir(parents=True)
    log = root / "logs" / "7_1_0_log.out"
    log.parent.mkdir(parents=True)
    log.write_text("training...\n")
    pickled = root / "logs" / "7_1_0_result.pkl"
    traceback = (
        "Traceback (most recent call last):\n  ...\nFloatingPointError: Loss became infinite"
    )
    pickled.write_bytes(pickle.dumps(("error", traceback)))
    record = {"job_id": "7_1", "stdout": str(log), "result_pickle": str(pickled)}
    (failed / "job.json").write_text(json.dumps(record))
    # uniform seed 2: never submitted (no job.json)
    return root


def test_table_has_mean_and_std_over_seeds_per_pretraining(tmp_path):
    spec, outcomes = collect(write_sweep_dir(tmp_path / "sweep"))
    markdown = markdown_report(spec, outcomes)
    ring = [40.0, 42.0, 44.5]
    expected = f"{statistics.fmean(ring):.2f} ± {statistics.stdev(ring):.2f}"
    ring_row = next(line for line in markdown.splitlines() if line.startswith("| ring |"))
    cells = [cell.strip() for cell in ring_row.strip("|").split("|")]
    header = next(line for line in markdown.splitlines() if line.startswith("| pretraining"))
    titles = [cell.strip() for cell in header.strip("|").split("|")]
    assert titles == [
        "pretraining",
        "bbox AP",
        "bbox AP50",
        "bbox AP75",
        "segm AP",
        "segm AP50",
        "segm AP75",
    ]
    assert cells[1] == expected
    assert cells[2] == f"{statistics.fmean(ring) + 20:.2f} ± {statistics.stdev(ring):.2f}"
    assert cells[4] == f"{statistics.fmean(ring) - 3:.2f} ± {statistics.stdev(ring):.2f}"
    uniform_row = next(line for line in markdown.splitlines() if line.startswith("| uniform |"))
    assert "38.00 (1/3 seeds)" in uniform_row
    assert "2/6 runs" not in markdown and "4/6 runs finished" in markdown


def test_failed_and_missing_runs_are_listed_with_their_logs(tmp_path):
    root = write_sweep_dir(tmp_path / "sweep")
    markdown, missing = write_reports(root)
    assert [outcome.run.label for outcome in missing] == [
        "uniform/mask/seed_1",
        "uniform/mask/seed_2",
    ]
    failed_line = next(line for line in markdown.splitlines() if "uniform/mask/seed_1" in line)
    assert "failed: FloatingPointError: Loss became infinite" in failed_line
    assert str(root / "logs" / "7_1_0_log.out") in failed_line
    never = next(line for line in markdown.splitlines() if "uniform/mask/seed_2" in line)
    assert "never submitted" in never


def test_queued_run_without_result_pickle_is_reported_not_dropped(tmp_path):
    root = write_sweep_dir(tmp_path / "sweep")
    directory = Run("uniform", "mask", 2).directory(root)
    directory.mkdir(parents=True)
    record = {"job_id": "9_2", "stdout": "/logs/9_2.out", "result_pickle": "/nowhere.pkl"}
    (directory / "job.json").write_text(json.dumps(record))
    spec, outcomes = collect(root)
    outcome = next(o for o in outcomes if o.run == Run("uniform", "mask", 2))
    assert "job 9_2 queued, running or killed" in outcome.problem
    assert outcome.log == "/logs/9_2.out"


def test_csv_and_png_are_written(tmp_path):
    root = write_sweep_dir(tmp_path / "sweep")
    write_reports(root)
    with open(root / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["pretraining"] for row in rows] == ["ring", "uniform"]
    assert float(rows[0]["mask/bbox/AP mean"]) == pytest.approx(statistics.fmean([40, 42, 44.5]))
    assert float(rows[0]["mask/bbox/AP std"]) == pytest.approx(statistics.stdev([40, 42, 44.5]))
    assert rows[1]["mask/segm/AP75 n"] == "1"
    assert (root / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (root / "results.md").read_text().startswith("# Transfer results")


def test_nan_scores_stay_visible(tmp_path):
    root = tmp_path / "sweep"
    root.mkdir()
    spec = {**SPEC, "checkpoints": {"ring": {"path": "/c"}}, "seeds": [0, 1]}
    (root / "sweep.yaml").write_text(yaml.safe_dump(spec))
    for seed, ap in ((0, None), (1, 12.5)):
        directory = Run("ring", "mask", seed).directory(root)
        directory.mkdir(parents=True)
        (directory / "results.json").write_text(json.dumps({"bbox": {"AP": ap, "AP50": None}}))
    markdown, missing = write_reports(root)
    assert missing == []
    assert "| ring | nan | nan |" in markdown


def run_cli(*args):
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "collect_results.py"), *map(str, args)],
        capture_output=True,
        text=True,
    )


def test_cli_exit_status_and_one_line_error(tmp_path):
    root = write_sweep_dir(tmp_path / "sweep")
    incomplete = run_cli(root)
    assert incomplete.returncode == 1
    assert "| ring |" in incomplete.stdout and "never submitted" in incomplete.stdout
    not_a_sweep = run_cli(tmp_path)
    assert not_a_sweep.returncode == 2
    assert not_a_sweep.stderr.count("\n") == 1
    assert (
        not_a_sweep.stderr.startswith("error: ") and "not a sweep directory" in not_a_sweep.stderr
    )


def test_failed_conversion_is_named_with_the_conversion_log(tmp_path):
    root = write_sweep_dir(tmp_path / "sweep")
    conversion_log = root / "logs" / "6_0_log.out"
    conversion_log.write_text("converting...\n")
    pickled = root / "logs" / "6_0_result.pkl"
    error = "Traceback ...\nlauncher.errors.LauncherError: cannot convert /c/uniform.pth: truncated"
    pickled.write_bytes(pickle.dumps(("error", error)))
    directory = Run("uniform", "mask", 2).directory(root)
    directory.mkdir(parents=True)
    record = {
        "job_id": "7_2",
        "stdout": "/never/started.out",
        "result_pickle": "/never/started.pkl",
        "depends_on": {"job_id": "6", "stdout": str(conversion_log), "result_pickle": str(pickled)},
    }
    (directory / "job.json").write_text(json.dumps(record))
    _, outcomes = collect(root)
    outcome = next(o for o in outcomes if o.run == Run("uniform", "mask", 2))
    assert outcome.problem == "checkpoint conversion failed: " + error.splitlines()[-1]
    assert outcome.log == str(conversion_log)
