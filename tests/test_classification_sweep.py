"""Classification tasks on the sweep path the Detectron2 tasks use: sweep file, job array,
results.json, the leaderboard with CIs over seeds (linear, kNN) and over episodes (few-shot)."""

import json

import numpy as np
import pytest
import yaml

from launcher.classification import run_job
from launcher.collect import leaderboard, markdown_report, pooled_interval
from launcher.errors import LauncherError
from launcher.sweep import Run, job_arguments, load_sweep, pending_conversions, planned_runs
from tests.test_classification_data import tiny_checkpoint, write_images
from tools.submit import main as submit_main
from transfer.classification.errors import ClassificationError
from transfer.classification.fewshot import episode_interval

FEWSHOT = {"name": "fewshot", "ways": 2, "shots": 1, "queries": 2, "episodes": 40}


def write_sweep(tmp_path, tasks, checkpoints=None, **extra):
    data = write_images(tmp_path / "shapes", ["a", "b", "c"], 8)
    checkpoints = checkpoints or {
        "random": "random",
        "pixels": "pixels",
        "tiny": str(tiny_checkpoint(tmp_path / "tiny.pth")),
    }
    content = {
        "checkpoints": checkpoints,
        "tasks": {
            name: {"dataset": {"root": str(data), "split": SPLIT}, **task}
            if "protocol" in task
            else task
            for name, task in tasks.items()
        },
        "seeds": [0, 1],
        "baseline": "random",
        "output_dir": str(tmp_path / "out"),
        "resources": {"gpus_per_node": 0, "cpus_per_task": 1},
        **extra,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


SPLIT = {"train": 0.5, "val": 0.25, "test": 0.25}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RINGNCE_CACHE", str(tmp_path / "cache"))


def test_a_sweep_of_classification_tasks_needs_no_conversion(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, {"lin": {"protocol": "linear"}}))
    assert spec["tasks"]["lin"]["kind"] == "classification"
    assert spec["tasks"]["lin"]["protocol"]["c_values"] == 45
    assert spec["checkpoints"]["pixels"] == {"path": None, "encoder": None, "pixels": True}
    runs = [Run(name, "lin", 0) for name in spec["checkpoints"]]
    assert pending_conversions(spec, tmp_path / "out", runs) == []


@pytest.mark.parametrize(
    "tasks, message",
    [
        ({"t": {"protocol": {"name": "fewshot", "shot": 1}}}, "did you mean 'shots'"),
        ({"t": {"protocol": "linear", "dataest": "x"}}, "unknown key 'dataest' in tasks.t"),
        ({"t": {"protocol": FEWSHOT | {"queries": 9}}}, r"class 'a' of shapes .*has 8 images"),
        ({"t": {"protocol": "knn", "dataset": "nowhere"}}, "nowhere does not exist"),
        ({"t": {"protocol": "knn", "dataset": {"root": "."}}}, "holds no class sub-folders|no "),
    ],
)
def test_bad_classification_tasks_fail_at_submission(tmp_path, tasks, message):
    with pytest.raises(LauncherError, match=message) as error:
        load_sweep(write_sweep(tmp_path, tasks))
    assert "\n" not in str(error.value)


def test_pixels_beside_a_detectron2_task_is_refused(tmp_path):
    config = tmp_path / "mask.yaml"
    config.write_text("{}\n")
    tasks = {"lin": {"protocol": "linear"}, "mask": {"config": str(config)}}
    with pytest.raises(LauncherError, match="raw-pixel floor, which only classification"):
        load_sweep(write_sweep(tmp_path, tasks))


def test_suite_tasks_are_one_per_domain(tmp_path):
    write_images(tmp_path / "md" / "omniglot", ["a", "b"], 3)
    write_images(tmp_path / "md" / "dtd", ["a", "b"], 3)
    suite = {"root": str(tmp_path / "md"), "domains": ["omniglot", "dtd"], "split": SPLIT}
    spec = load_sweep(write_sweep(tmp_path, {"md": {"protocol": "knn", "dataset": suite}}))
    assert list(spec["tasks"]) == ["md.omniglot", "md.dtd"]


def test_sweep_end_to_end_with_intervals_over_seeds_and_episodes(tmp_path, capsys):
    tasks = {
        "lin": {"protocol": {"name": "linear", "c_values": 3}},
        "knn": {"protocol": {"name": "knn", "k": 3}},
        "few": {"protocol": FEWSHOT},
    }
    sweep = write_sweep(tmp_path, tasks)
    assert submit_main(["sweep", str(sweep), "--cluster", "debug"]) == 0
    out = tmp_path / "out"
    results = {
        (name, task, seed): json.loads(
            (Run(name, task, seed).directory(out) / "results.json").read_text()
        )
        for name in ("random", "pixels", "tiny")
        for task in tasks
        for seed in (0, 1)
    }
    few = results[("tiny", "few", 1)]["fewshot"]
    assert len(few["samples"]["top1"]) == 40
    assert (few["top1"], few["ci95"]) == pytest.approx(episode_interval(few["samples"]["top1"]))
    # one embedding per (weights, dataset): the tiny checkpoint's features are reused
    tiny_keys = {r["run"]["features"]["key"] for (n, _, _), r in results.items() if n == "tiny"}
    random_keys = {r["run"]["features"]["key"] for (n, _, _), r in results.items() if n == "random"}
    assert len(tiny_keys) == 1 and len(random_keys) == 2  # each seed is another random network
    board = leaderboard([out])
    column = ("few", "fewshot", "top1")
    pooled = results[("tiny", "few", 0)]["fewshot"]["samples"]["top1"] + few["samples"]["top1"]
    assert board.summaries[("tiny", column)].mean == pytest.approx(np.mean(pooled))
    assert board.summaries[("tiny", column)].n == 80
    report = markdown_report(board)
    assert "lin linear top1" in report and "few fewshot top1" in report
    assert "over every episode of every seed" in report
    assert "Runs without results" not in report
    assert "| pixels |" in capsys.readouterr().out


def test_few_shot_differences_are_paired_episode_by_episode(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    spec = {
        "checkpoints": {"random": {"path": None}, "a": {"path": "/a.pth"}},
        "tasks": {"few": {"kind": "classification"}},
        "seeds": [0],
        "baseline": "random",
        "output_dir": str(out),
    }
    (out / "sweep.yaml").write_text(yaml.safe_dump(spec))
    episodes = {"random": [40.0, 60.0, 50.0], "a": [50.0, 80.0, 50.0]}
    for name, values in episodes.items():
        directory = Run(name, "few", 0).directory(out)
        directory.mkdir(parents=True)
        group = {"top1": float(np.mean(values)), "headline": ["top1"], "samples": {"top1": values}}
        (directory / "results.json").write_text(json.dumps({"fewshot": group}))
    board = leaderboard([out])
    difference = board.differences[("a", ("few", "fewshot", "top1"))]
    assert (difference.mean, difference.half_width) == pytest.approx(
        episode_interval([10.0, 20.0, 0.0])
    )
    assert pooled_interval([1.0, 3.0]).n == 2


def test_an_undecodable_image_fails_its_runs_and_keeps_the_others(tmp_path):
    broken = write_images(tmp_path / "broken", ["a", "b"], 4)
    (broken / "a" / "0.png").write_bytes(b"not a png")
    tasks = {
        "good": {"protocol": {"name": "knn", "k": 3}},
        "bad": {"protocol": "knn", "dataset": {"root": str(broken), "split": SPLIT}},
    }
    checkpoints = {"tiny": str(tiny_checkpoint(tmp_path / "t.pth"))}
    spec = load_sweep(write_sweep(tmp_path, tasks, checkpoints, baseline=None))
    failures = []
    for run in planned_runs(spec):  # what each array task does (the debug executor would pdb)
        try:
            run_job(*job_arguments(spec, run, tmp_path / "out"))
        except ClassificationError as error:
            failures.append((run.task, str(error)))
    assert [task for task, _ in failures] == ["bad", "bad"]
    assert all("a/0.png cannot be decoded" in m and "\n" not in m for _, m in failures)
    assert sorted(p.parent.parent.name for p in (tmp_path / "out").rglob("results.json")) == [
        "good",
        "good",
    ]


def test_submit_prints_one_error_line_and_queues_nothing(tmp_path, capsys):
    sweep = write_sweep(tmp_path, {"few": {"protocol": {"name": "fewshot", "shot": 1}}})
    assert submit_main(["sweep", str(sweep), "--cluster", "local"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: tasks.few.protocol: unknown key") and error.count("\n") == 1
    assert not (tmp_path / "out").exists()
