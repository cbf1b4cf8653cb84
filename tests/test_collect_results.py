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
from scipy import stats

from launcher.collect import collect, leaderboard, markdown_report, write_reports
from launcher.errors import LauncherError
from launcher.sweep import Run, load_sweep, pending_conversions, run_opts

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


def half_width(values):
    """95% Student-t half-width, computed here independently of launcher.stats."""
    n = len(values)
    return stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / n**0.5


def test_table_has_mean_and_ci_over_seeds_per_pretraining(tmp_path):
    markdown = markdown_report(leaderboard([write_sweep_dir(tmp_path / "sweep")]))
    ring = [40.0, 42.0, 44.5]
    hw = half_width(ring)
    expected = f"{statistics.fmean(ring):.2f} ± {hw:.2f}"
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
    assert cells[2] == f"{statistics.fmean(ring) + 20:.2f} ± {hw:.2f}"
    assert cells[4] == f"{statistics.fmean(ring) - 3:.2f} ± {hw:.2f}"
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
    # long format: checkpoint x task x metric
    assert [(row["checkpoint"], row["group"], row["metric"]) for row in rows[:2]] == [
        ("ring", "bbox", "AP"),
        ("ring", "bbox", "AP50"),
    ]
    assert len(rows) == 2 * 6
    ring = [40, 42, 44.5]
    assert float(rows[0]["mean"]) == pytest.approx(statistics.fmean(ring))
    assert float(rows[0]["ci_high"]) - float(rows[0]["mean"]) == pytest.approx(half_width(ring))
    uniform_segm_ap75 = next(
        r
        for r in rows
        if r["checkpoint"] == "uniform" and r["metric"] == "AP75" and r["group"] == "segm"
    )
    assert uniform_segm_ap75["n"] == "1" and uniform_segm_ap75["ci_low"] == ""
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


def write_results(root, checkpoints, seeds, bbox_ap, baseline=None):
    """A finished sweep folder: bbox_ap[(checkpoint, seed)] -> AP (AP50 = AP + 20)."""
    root.mkdir(parents=True)
    spec = {**SPEC, "checkpoints": checkpoints, "seeds": seeds, "baseline": baseline}
    (root / "sweep.yaml").write_text(yaml.safe_dump(spec))
    for (checkpoint, seed), ap in bbox_ap.items():
        directory = Run(checkpoint, "mask", seed).directory(root)
        directory.mkdir(parents=True)
        (directory / "results.json").write_text(json.dumps({"bbox": scores(ap)}))
    return root


def test_leaderboard_over_two_sweeps_with_paired_difference_to_random_init(tmp_path):
    random_ap = {0: 20.0, 1: 23.0, 2: 21.0}
    ring_ap = {0: 30.0, 1: 34.0, 2: 31.5}
    supervised_ap = {0: 29.0, 1: 31.0}  # seed 2 of supervised never ran
    first = write_results(
        tmp_path / "a",
        {"scratch": {"path": None}, "ring": {"path": "/c/ring.pth"}},
        [0, 1, 2],
        {
            **{("scratch", s): v for s, v in random_ap.items()},
            **{("ring", s): v for s, v in ring_ap.items()},
        },
        baseline="scratch",
    )
    second = write_results(
        tmp_path / "b",
        {"supervised": {"path": "/c/tv.pth"}},
        [0, 1, 2],
        {("supervised", s): v for s, v in supervised_ap.items()},
    )
    markdown, missing = write_reports([first, second], output_dir=tmp_path / "board")
    assert [o.run.label for o in missing] == ["supervised/mask/seed_2"]
    section = markdown.split("## Paired difference to scratch")[1].split("## Runs")[0]
    ring_row = next(line for line in section.splitlines() if line.startswith("| ring |"))
    deltas = [ring_ap[s] - random_ap[s] for s in (0, 1, 2)]
    expected = f"+{statistics.fmean(deltas):.2f} ± {half_width(deltas):.2f}"
    assert ring_row.split("|")[2].strip() == expected
    # supervised is paired on the two seeds both have, and says so
    supervised_row = next(r for r in section.splitlines() if r.startswith("| supervised |"))
    pair = [supervised_ap[s] - random_ap[s] for s in (0, 1)]
    assert supervised_row.split("|")[2].strip() == (
        f"+{statistics.fmean(pair):.2f} ± {half_width(pair):.2f} (2/3 seeds)"
    )
    assert "| scratch |" not in section
    with open(tmp_path / "board" / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    ring_ap_row = next(r for r in rows if r["checkpoint"] == "ring" and r["metric"] == "AP")
    assert ring_ap_row["baseline"] == "scratch"
    assert float(ring_ap_row["diff_mean"]) == pytest.approx(statistics.fmean(deltas))
    assert (tmp_path / "board" / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_baseline_choice_is_checked(tmp_path):
    root = write_results(tmp_path / "a", {"ring": {"path": "/c"}}, [0], {("ring", 0): 1.0})
    with pytest.raises(LauncherError, match="baseline 'supervised' is not a checkpoint"):
        leaderboard([root], baseline="supervised")
    with pytest.raises(LauncherError, match="need --output"):
        write_reports([root, root])
    with pytest.raises(LauncherError, match="has results in both"):
        leaderboard([root, root])


def test_sweep_random_init_entry_needs_no_file_and_no_conversion(tmp_path):
    task = tmp_path / "mask.yaml"
    task.write_text("{}\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "checkpoints": {"scratch": "random"},
                "tasks": {"mask": {"config": str(task)}},
                "baseline": "scratch",
                "output_dir": str(tmp_path / "out"),
            }
        )
    )
    spec = load_sweep(sweep)
    assert spec["baseline"] == "scratch" and spec["checkpoints"]["scratch"]["path"] is None
    run = Run("scratch", "mask", 0)
    assert pending_conversions(spec, tmp_path / "out", [run]) == []
    opts = run_opts(spec, run, tmp_path / "out")
    assert opts[opts.index("MODEL.WEIGHTS") + 1] == ""
    sweep.write_text(yaml.safe_dump({**yaml.safe_load(sweep.read_text()), "baseline": "nope"}))
    with pytest.raises(LauncherError, match="baseline 'nope' is not one of the checkpoints"):
        load_sweep(sweep)


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


def test_attempts_over_requeues_and_resubmissions_are_shown_and_results_counted_once(tmp_path):
    root = write_sweep_dir(tmp_path / "sweep")
    directory = Run("ring", "mask", 0).directory(root)

    def job(name, *events):
        folder = root / "logs" / name
        folder.mkdir(parents=True)
        lines = [json.dumps({"event": event, **extra}) for event, extra in events]
        (folder / "attempts.jsonl").write_text("\n".join(lines) + "\n")
        pickled = folder / f"{name}_0_result.pkl"
        return {"job_id": name, "stdout": "-", "result_pickle": str(pickled)}

    launch_failed = {"reason": "the task ended without a result (srun exit status 1)"}
    first = job("20_0", ("start", {}), ("retry", launch_failed), ("start", {}))
    second = job("30_0", ("start", {}))  # the sweep rerun resubmitted it
    (directory / "job.json").write_text(json.dumps({**second, "earlier": [first]}))
    markdown = markdown_report(leaderboard([root]))
    assert "4/6 runs finished" in markdown  # one run, one result, however many attempts
    row = next(line for line in markdown.splitlines() if line.startswith("| ring/mask/seed_0 |"))
    assert row.startswith("| ring/mask/seed_0 | 3 | the task ended without a result")
    assert "resubmitted 1 time(s)" in row
    assert "ring/mask/seed_1 |" not in markdown  # started once (no attempts log): not listed
