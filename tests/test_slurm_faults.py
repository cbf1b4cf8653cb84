"""Faults on the real two-node Slurm cluster (tools/slurm/start_local_slurm.sh --nodes 2).

An 8-run transfer sweep (one job array, four tasks at a time) lives through, in one pass, each
fault at the moment that matters, held there by design (tests/fault_points.py), not by timing:

1. the four first tasks stop right after their checkpoint of iteration HOLD_ITER; one of them is
   requeued (``scontrol requeuehold``: killed with a checkpoint to resume from, kept pending);
2. slurmctld is killed with SIGKILL (after its state is known saved) and restarted, with tasks
   running, one held pending and others pending;
3. one node's slurmd is killed with SIGKILL while a task of that node is held before its step's
   launch (the launch fails: launcher.retry requeues it) and another runs its step there (the
   step outlives slurmd), then brought back.

Every run is collected exactly once, the launch failure cost one retry, the requeued run's log
shows it resumed from its checkpoint, and the task whose node lost slurmd mid-run ran once. A
100-task array submitted in one call completes.

The transfer runs are the tiny Mask R-CNN of configs/transfer/tiny_mask_rcnn_R50_FPN.yaml on a
ResNet-18 at width 1/8 with narrow FPN and heads (checkpoints of a few MB): a real Detectron2
train + COCO evaluation with a checkpoint to resume from.
"""

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from fault_points import (
    HELD_FILE,
    RELEASE_FILE,
    HeldTransferJob,
    hold_after,
    launch_hold,
)
from slurm_local import (
    RUN_DIR,
    START,
    cluster_started,
    controller_state_saved,
    queue_state,
    run_script,
    sacct_states,
    settled_states,
    tiny_pretraining,
    wait_until,
)

import launcher.executors
import launcher.sweep
from launcher.collect import write_reports
from launcher.executors import Resources, make_executor, map_array, unique_log_folder
from launcher.retry import read_attempts
from launcher.sweep import Run, load_sweep, submit_sweep

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.long]

REPO = Path(__file__).resolve().parents[1]
TINY_TRANSFER = REPO / "configs" / "transfer" / "tiny_mask_rcnn_R50_FPN.yaml"
RUNS = 8
PARALLEL = 4  # the array's slots: 2 nodes x 2 CPUs, one CPU a task
HOLD_ITER = 6  # seeds 0-3 hold after iteration 6 (index 5), whose checkpoint is model_0000005
LAUNCH_HELD = PARALLEL  # array task 4 starts in the slot the requeued task frees
MAX_ITER = 12
LIGHT_TRANSFER = [
    "SOLVER.MAX_ITER", MAX_ITER, "SOLVER.CHECKPOINT_PERIOD", 3,
    "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
    "MODEL.ROI_MASK_HEAD.CONV_DIM", 32, "MODEL.RPN.PRE_NMS_TOPK_TEST", 100,
]  # fmt: skip
ONE_CPU = dict(gpus_per_node=0, cpus_per_task=1, mem_gb=2, timeout_min=20)
WAIT_S = 600  # a bound on waits for a job's progress on 2 shared cores, never a schedule


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    with cluster_started("--nodes", "2"):
        yield tmp_path_factory.mktemp("faults")


def kill_daemon(pidfile, name):
    pid = int((RUN_DIR / pidfile).read_text())
    os.kill(pid, signal.SIGKILL)  # our own daemon, named by the start script's PID file
    wait_until(lambda: not Path(f"/proc/{pid}/cmdline").exists(), 10, f"{name} to die")


def restart_cluster():
    started = run_script(START, "--nodes", "2")
    assert started.returncode == 0, started.stdout + started.stderr
    return started.stdout


def read_when_written(path, what):
    wait_until(Path(path).is_file, WAIT_S, what)
    return Path(path).read_text().strip()


def submit_held_sweep(folder, monkeypatch):
    """The 8-run sweep, seeds 0-3 to be held after HOLD_ITER, array task 4 before its launch."""
    sweep_dir, holds = folder / "sweep", folder / "holds"
    holds.mkdir()
    (holds / f"launch_{LAUNCH_HELD}").touch()
    for seed in range(PARALLEL):
        hold_after(Run("ring", "mask", seed).directory(sweep_dir), HOLD_ITER)
    sweep_file = folder / "faults.yaml"
    sweep_file.write_text(
        yaml.safe_dump(
            {
                "checkpoints": {"ring": str(tiny_pretraining(folder / "pretrain"))},
                "tasks": {"mask": {"config": str(TINY_TRANSFER), "opts": LIGHT_TRANSFER}},
                "seeds": list(range(RUNS)),
                "output_dir": str(sweep_dir),
            }
        )
    )
    commands = launcher.executors.batch_commands

    def held_commands(*args):
        setup, teardown = commands(*args)
        return [*setup, launch_hold(holds)], teardown

    monkeypatch.setattr(launcher.executors, "batch_commands", held_commands)
    monkeypatch.setattr(launcher.sweep, "TransferJob", HeldTransferJob)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(REPO / "tests")]))
    resources = Resources(job_name="faults", array_parallelism=PARALLEL, **ONE_CPU)
    skipped, submitted = submit_sweep(load_sweep(sweep_file), "slurm", resources)
    assert skipped == [] and len(submitted) == RUNS
    assert len({job.job_id.split("_")[0] for _, job in submitted}) == 1  # one job array
    return sweep_dir, holds, {run.seed: job for run, job in submitted}


def test_sweep_survives_requeue_controller_and_node_kills(two_nodes, monkeypatch):
    sweep_dir, holds, jobs = submit_held_sweep(two_nodes, monkeypatch)
    directory = {seed: Run("ring", "mask", seed).directory(sweep_dir) for seed in jobs}
    hosts = {
        seed: read_when_written(directory[seed] / HELD_FILE, f"seed {seed} held")
        for seed in range(PARALLEL)
    }

    # 1. requeued with a checkpoint on disk; held pending so the next task takes its slot
    requeued = 0
    subprocess.run(["scontrol", "requeuehold", jobs[requeued].job_id], check=True)
    wait_until(
        lambda: queue_state(jobs[requeued].job_id) in ("PENDING", "REQUEUE_HOLD"),
        WAIT_S,
        "the requeued task to be pending",
    )
    node = read_when_written(holds / f"at_launch_{LAUNCH_HELD}", "task 4 at its launch")
    assert node == hosts[requeued]
    running_there = [seed for seed in range(1, PARALLEL) if hosts[seed] == node]
    assert running_there, hosts  # a task runs its step on the node whose slurmd will die

    # 2. the controller dies with 4 tasks running, one held and 3 pending, and comes back
    controller_state_saved(jobs[requeued].job_id)
    kill_daemon("slurmctld.pid", "slurmctld")
    assert "slurmctld started" in restart_cluster()
    assert queue_state(jobs[requeued].job_id) in ("PENDING", "REQUEUE_HOLD")
    assert all(queue_state(jobs[seed].job_id) == "RUNNING" for seed in range(1, LAUNCH_HELD + 1))

    # 3. that node's slurmd dies: task 4's step launch fails there and is retried, the held
    # task's step goes on without it
    kill_daemon(f"slurmd-{node}.pid", f"slurmd on {node}")
    (holds / f"release_launch_{LAUNCH_HELD}").touch()
    retry_folder = Path(jobs[LAUNCH_HELD].paths.folder)
    wait_until(
        lambda: any(e["event"] == "retry" for e in read_attempts(retry_folder)),
        WAIT_S,
        "task 4's failed launch to be retried",
    )
    assert f"slurmd started on {node}" in restart_cluster()
    for seed in range(1, PARALLEL):
        (directory[seed] / RELEASE_FILE).touch()
    subprocess.run(["scontrol", "release", jobs[requeued].job_id], check=True)

    for job in jobs.values():
        job.wait()
    states = {seed: settled_states(job.job_id, timeout=120) for seed, job in jobs.items()}
    assert all(state == ["COMPLETED"] for state in states.values()), states
    assert "REQUEUED" in sacct_states(jobs[requeued].job_id, duplicates=True)
    assert "REQUEUED" in sacct_states(jobs[LAUNCH_HELD].job_id, duplicates=True)
    retry = [e for e in read_attempts(retry_folder) if e["event"] == "retry"]
    assert len(retry) == 1 and "without a result" in retry[0]["reason"], retry
    # the tasks whose node lost slurmd mid-step ran once, to the end
    assert all(
        sacct_states(jobs[s].job_id, duplicates=True) == ["COMPLETED"] for s in running_there
    )

    # every run collected once: 8 results, none missing, the two retried runs' attempts shown
    markdown, missing = write_reports(sweep_dir)
    assert missing == []
    assert len(list((sweep_dir / "runs").glob("*/*/seed_*/results.json"))) == RUNS
    assert f"{RUNS}/{RUNS} runs finished" in markdown
    assert f"| ring/mask/seed_{requeued} | 2 |" in markdown
    assert f"| ring/mask/seed_{LAUNCH_HELD} | 2 |" in markdown

    # the requeued run resumed from the checkpoint of its hold, not from iteration 0
    log = Path(jobs[requeued].paths.stdout).read_text()
    resumed = re.findall(r"resumed from \S*/(model_\d+)\.pth at iter (\d+)", log)
    assert resumed == [(f"model_{HOLD_ITER - 1:07d}", str(HOLD_ITER - 1))], log[-3000:]
    assert f"Starting training from iteration {HOLD_ITER}" in log
    # and no other run resumed: task 4's first launch never ran, the others ran once
    for seed, job in jobs.items():
        if seed != requeued:
            assert "resumed from" not in Path(job.paths.stdout).read_text(), seed


def test_a_hundred_task_array_in_one_submission_completes(two_nodes):
    """100 tasks in one sbatch call, each returning its own argument. The task is
    ``os.path.basename``: the scheduler, submitit's pickles and result collection are what is
    under test, and a task that imports torch would spend ~10 s of a shared core on start-up
    alone (measured here: 8.6 min for 100 probes vs. about a minute for this)."""
    resources = Resources(job_name="array100", array_parallelism=100, **ONE_CPU)
    executor = make_executor("slurm", unique_log_folder(two_nodes, "array100"), resources)
    names = [f"task_{index:03d}" for index in range(100)]
    jobs = map_array(executor, resources, os.path.basename, [f"/{name}" for name in names])
    array_ids = {job.job_id.split("_")[0] for job in jobs}
    assert len(array_ids) == 1 and len({job.job_id for job in jobs}) == 100
    assert [job.result() for job in jobs] == names  # each task its own argument, none lost
    # accounting trails the results: wait for all 100 records to reach slurmdbd
    array_id = array_ids.pop()
    wait_until(lambda: sacct_states(array_id) == ["COMPLETED"] * 100, 120, "100 COMPLETED records")
    nodes = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", jobs[0].job_id.split("_")[0], "-o", "NodeList"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert set(nodes) == {"rnce-n1", "rnce-n2"}  # spread over both nodes
