"""launcher.watch without a cluster: each checkpoint submitted once, across restarts, the
references with the first, and the end (finished run, runs settled) with the epoch chart. The
same watch on the local Slurm cluster, with a real pretraining: test_slurm_cluster.py."""

import json

import pytest

from launcher import watch
from launcher.sweep import JOB_FILE, planned_runs

SPEC = {
    "checkpoints": {"scratch": {"path": None, "encoder": None}},
    "tasks": {"mask": {"config": "/t/mask.yaml", "opts": []}},
    "seeds": [0, 1],
    "opts": [],
    "resources": {},
    "datasets": [],
    "baseline": None,
}


@pytest.fixture
def submissions(monkeypatch):
    """The checkpoints of each submit_sweep call; each run gets a job.json as the real one."""
    calls = []

    def submit_sweep(spec, cluster, resources, sweep_dir):
        calls.append(list(spec["checkpoints"]))
        for run in planned_runs(spec):
            run.directory(sweep_dir).mkdir(parents=True, exist_ok=True)
            (run.directory(sweep_dir) / JOB_FILE).write_text(json.dumps({"job_id": "1"}))
        return [], []

    monkeypatch.setattr(watch, "submit_sweep", submit_sweep)
    return calls


def write_checkpoint(run_dir, epoch):
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints" / f"epoch_{epoch:04d}.pth").write_bytes(b"weights")


def test_each_checkpoint_is_submitted_once_across_restarts(tmp_path, submissions):
    run_dir, sweep_dir = tmp_path / "pretrain", tmp_path / "sweep"
    assert watch.submit_new(run_dir, SPEC, "slurm", None, sweep_dir) == []
    write_checkpoint(run_dir, 1)
    (run_dir / "checkpoints" / "epoch_0002.pth.tmp").write_bytes(b"half")  # being written
    assert watch.submit_new(run_dir, SPEC, "slurm", None, sweep_dir) == ["scratch", "epoch_0001"]
    assert watch.submit_new(run_dir, SPEC, "slurm", None, sweep_dir) == []
    assert submissions == [["scratch", "epoch_0001"]]  # the reference goes with the first
    # the watch died after submitting epoch 2 but before recording it: not submitted again
    write_checkpoint(run_dir, 2)
    state = (sweep_dir / watch.STATE_FILE).read_text()
    assert watch.submit_new(run_dir, SPEC, "slurm", None, sweep_dir) == ["epoch_0002"]
    (sweep_dir / watch.STATE_FILE).write_text(state)
    assert watch.submit_new(run_dir, SPEC, "slurm", None, sweep_dir) == ["epoch_0002"]
    assert submissions == [["scratch", "epoch_0001"], ["epoch_0002"]]
    recorded = (sweep_dir / "sweep.yaml").read_text()
    assert all(name in recorded for name in ("scratch", "epoch_0001", "epoch_0002"))


def test_watch_ends_when_the_run_finished_and_writes_metric_against_epoch(tmp_path, submissions):
    run_dir, sweep_dir = tmp_path / "pretrain", tmp_path / "sweep"
    for epoch in (1, 2):
        write_checkpoint(run_dir, epoch)
    (run_dir / "metrics.json").write_text(json.dumps({"finished": True}))
    watch.submit_new(run_dir, SPEC, "local", None, sweep_dir)
    for name, base in (("scratch", 10.0), ("epoch_0001", 20.0), ("epoch_0002", 30.0)):
        for seed in (0, 1):
            folder = sweep_dir / "runs" / name / "mask" / f"seed_{seed}"
            ap = base + seed
            bbox = {"AP": ap, "AP50": ap, "AP75": ap}
            (folder / "results.json").write_text(json.dumps({"bbox": bbox}))
    markdown = watch.watch(run_dir, SPEC, "local", None, sweep_dir, poll_s=0, say=print)
    assert "6/6 runs finished" in markdown and "| epoch_0002 | 30.50 ±" in markdown
    assert (sweep_dir / "results_by_epoch.png").stat().st_size > 0


def test_only_a_finished_metrics_json_ends_the_pretraining(tmp_path):
    run_dir = tmp_path / "pretrain"
    write_checkpoint(run_dir, 1)
    (run_dir / "metrics.json").write_text(json.dumps({"finished": False}))
    assert not watch.pretraining_finished(run_dir)
    assert not watch.pretraining_finished(tmp_path / "nothing")
