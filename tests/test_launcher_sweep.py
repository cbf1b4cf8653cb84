"""Launcher pieces that need no cluster: sweep files, run planning, executors, ports."""

import json
from pathlib import Path

import pytest
import submitit
import yaml

from launcher.errors import LauncherError
from launcher.executors import Resources, make_executor, translated_submission_errors
from launcher.jobs import PORT_BASE, PORT_SPAN, distributed_environment, rendezvous_port
from launcher.probe import ProbeJob, read_progress
from launcher.sweep import (
    Run,
    is_finished,
    is_in_flight,
    load_sweep,
    pending_conversions,
    planned_runs,
    run_opts,
    submit_sweep,
)


@pytest.fixture
def inputs(tmp_path):
    checkpoint = tmp_path / "ring.pth"
    checkpoint.write_bytes(b"not read by the planner")
    config = tmp_path / "mask.yaml"
    config.write_text("_BASE_: whatever.yaml\n")
    return checkpoint, config


def write_sweep(tmp_path, **content):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def good_sweep(tmp_path, inputs, **extra):
    checkpoint, config = inputs
    return write_sweep(
        tmp_path,
        checkpoints={"ring": str(checkpoint), "moco": {"path": str(checkpoint), "encoder": "key"}},
        tasks={"mask": {"config": str(config), "opts": ["SOLVER.MAX_ITER", 5]}},
        seeds=[0, 1],
        opts=["TEST.DETECTIONS_PER_IMAGE", 10],
        output_dir=str(tmp_path / "out"),
        **extra,
    )


def test_sweep_file_resolves_paths_and_plans_every_combination(tmp_path, inputs):
    spec = load_sweep(good_sweep(tmp_path, inputs))
    assert spec["checkpoints"]["moco"] == {"path": str(inputs[0].resolve()), "encoder": "key"}
    assert spec["checkpoints"]["ring"]["encoder"] is None
    runs = planned_runs(spec)
    assert [run.label for run in runs] == [
        "ring/mask/seed_0",
        "ring/mask/seed_1",
        "moco/mask/seed_0",
        "moco/mask/seed_1",
    ]


def test_run_opts_put_the_runs_own_weights_output_and_seed_last(tmp_path, inputs):
    spec = load_sweep(good_sweep(tmp_path, inputs))
    run = Run("moco", "mask", 1)
    opts = run_opts(spec, run, tmp_path / "out")
    assert opts[:4] == ["SOLVER.MAX_ITER", 5, "TEST.DETECTIONS_PER_IMAGE", 10]
    pairs = dict(zip(opts[::2], opts[1::2]))
    assert pairs["MODEL.WEIGHTS"] == str(tmp_path / "out" / "weights" / "moco.pkl")
    assert pairs["OUTPUT_DIR"] == str(tmp_path / "out" / "runs" / "moco" / "mask" / "seed_1")
    assert pairs["SEED"] == 1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"seed": [0]}, "unknown key 'seed' in sweep file .*did you mean 'seeds'"),
        ({"seeds": [0, 0]}, "repeat a value"),
        ({"seeds": "0"}, "seeds must be a non-empty list of integers"),
        ({"tasks": {"mask": {"config": "/nonexistent/x.yaml"}}}, "tasks.mask: .* does not exist"),
        ({"tasks": {"mask": {"config": None, "opt": []}}}, "unknown key 'opt'.*'opts'"),
        ({"opts": ["SOLVER.MAX_ITER"]}, "KEY, VALUE pairs"),
        ({"checkpoints": {}}, "checkpoints must be a non-empty mapping"),
        ({"checkpoints": {"a/b": "/x"}}, "plain folder name"),
        ({"resources": {"gpus": 1}}, "unknown key 'gpus' in resources.*gpus_per_node"),
        (
            {"resources": {"gpus_per_node": "8"}},
            "resources.gpus_per_node is '8'; it must be of type int",
        ),
        ({"resources": {"mem_gb": "lots"}}, "resources.mem_gb is 'lots'; it must be a number"),
    ],
)
def test_bad_sweep_files_are_one_line_errors(tmp_path, inputs, change, message):
    checkpoint, config = inputs
    content = {
        "checkpoints": {"ring": str(checkpoint)},
        "tasks": {"mask": {"config": str(config)}},
        "seeds": [0],
    }
    content.update(change)
    if "tasks" in change and change["tasks"]["mask"].get("config") is None:
        content["tasks"]["mask"]["config"] = str(config)
    with pytest.raises(LauncherError, match=message) as raised:
        load_sweep(write_sweep(tmp_path, **content))
    assert "\n" not in str(raised.value)


def test_missing_or_broken_sweep_file(tmp_path):
    with pytest.raises(LauncherError, match="does not exist"):
        load_sweep(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("checkpoints: [unclosed\n")
    with pytest.raises(LauncherError, match="not valid YAML"):
        load_sweep(broken)


def test_finished_runs_and_converted_checkpoints_are_not_redone(tmp_path, inputs):
    spec = load_sweep(good_sweep(tmp_path, inputs))
    sweep_dir = tmp_path / "out"
    runs = planned_runs(spec)
    assert len(pending_conversions(spec, sweep_dir, runs)) == 2
    weights = sweep_dir / "weights"
    weights.mkdir(parents=True)
    (weights / "ring.pkl").write_bytes(b"")
    assert len(pending_conversions(spec, sweep_dir, runs)) == 2  # no report yet: redo
    (weights / "ring.json").write_text("{}")
    assert [entry for entry, _ in pending_conversions(spec, sweep_dir, runs)] == [
        spec["checkpoints"]["moco"]
    ]
    done = runs[1].directory(sweep_dir)
    done.mkdir(parents=True)
    (done / "results.json").write_text(json.dumps({"bbox": {"AP": 1.0}}))
    assert [is_finished(run, sweep_dir) for run in runs] == [False, True, False, False]


def test_runs_still_in_the_slurm_queue_are_not_submitted_twice(tmp_path):
    run = Run("ring", "mask", 0)
    assert not is_in_flight(run, tmp_path, {"12_0"})  # never submitted
    run.directory(tmp_path).mkdir(parents=True)
    (run.directory(tmp_path) / "job.json").write_text(json.dumps({"job_id": "12_0"}))
    assert is_in_flight(run, tmp_path, {"12_0", "13"})
    assert not is_in_flight(run, tmp_path, {"13"})  # left the queue: resubmit if unfinished


def test_a_fully_finished_sweep_submits_nothing(tmp_path, inputs):
    spec = load_sweep(good_sweep(tmp_path, inputs))
    for run in planned_runs(spec):
        run.directory(tmp_path / "out").mkdir(parents=True)
        (run.directory(tmp_path / "out") / "results.json").write_text("{}")
    skipped, submitted = submit_sweep(spec, "local", Resources(), tmp_path / "out")
    assert (len(skipped), submitted) == (4, [])
    assert yaml.safe_load((tmp_path / "out" / "sweep.yaml").read_text())["seeds"] == [0, 1]


def test_array_tasks_sharing_a_node_get_distinct_ports():
    ports = [rendezvous_port(job_id) for job_id in range(1000, 1000 + 64)]
    assert len(set(ports)) == 64
    assert all(PORT_BASE <= port < PORT_BASE + PORT_SPAN for port in ports)
    assert rendezvous_port("123456") == rendezvous_port(123456)


def test_tasks_of_one_local_job_agree_on_the_rendezvous(tmp_path):
    resources = Resources(gpus_per_node=0, tasks_per_node=2, cpus_per_task=1)
    job = make_executor("local", tmp_path, resources).submit(distributed_environment)
    first, second = job.results()
    assert (first["RANK"], second["RANK"], first["WORLD_SIZE"]) == ("0", "1", "2")
    assert first["MASTER_PORT"] == second["MASTER_PORT"]
    assert first["MASTER_ADDR"] == second["MASTER_ADDR"]


def test_local_cluster_never_goes_to_slurm_even_with_srun_on_path(tmp_path):
    executor = make_executor("local", tmp_path, Resources(gpus_per_node=0))
    assert isinstance(executor._executor, submitit.LocalExecutor)
    with pytest.raises(LauncherError, match="unknown cluster 'slrum'"):
        make_executor("slrum", tmp_path, Resources())


def test_sbatch_rejection_becomes_one_line_with_the_fix():
    from submitit.core.utils import FailedJobError

    stderr = (
        "sbatch: error: CPU count per node can not be satisfied\n"
        "sbatch: error: Batch job submission failed: Requested node configuration is not available"
    )
    with pytest.raises(LauncherError) as raised:
        with translated_submission_errors(Resources(gpus_per_node=8)):
            raise FailedJobError(stderr)
    message = str(raised.value)
    assert "\n" not in message
    assert "no node has 8 GPU(s)" in message and "--gpus-per-node 0" in message


def test_probe_resumes_to_the_same_weights_as_an_uninterrupted_run(tmp_path):
    whole = ProbeJob()(tmp_path / "whole", steps=12)
    ProbeJob()(tmp_path / "parts", steps=5)
    assert read_progress(tmp_path / "parts") == 5
    resumed = ProbeJob()(tmp_path / "parts", steps=12)
    assert resumed["resumed_from_step"] == 5
    assert resumed["digest"] == whole["digest"]
    assert resumed["loss"] == whole["loss"]
    different_seed = ProbeJob()(tmp_path / "other", steps=12, seed=1)
    assert different_seed["digest"] != whole["digest"]


def test_probe_rejects_nonsense_steps(tmp_path):
    with pytest.raises(ValueError, match="at least 1"):
        ProbeJob()(Path(tmp_path), steps=0)
