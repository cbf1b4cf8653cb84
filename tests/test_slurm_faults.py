"""Faults on the real two-node Slurm cluster (tools/slurm/start_local_slurm.sh --nodes 2).

A 24-run transfer sweep (one job array) lives through, in one pass: one running task requeued
with ``scontrol requeue`` after it wrote a Detectron2 checkpoint, slurmctld killed with SIGKILL
and restarted mid-array, and one node's slurmd killed with SIGKILL while a task runs on it and
brought back. Every run is collected exactly once, and the requeued run's log shows it resumed
from its checkpoint. A 100-task array submitted in one call completes.

The transfer runs are the tiny Mask R-CNN of configs/transfer/tiny_mask_rcnn_R50_FPN.yaml on a
ResNet-18 at width 1/8 with narrow FPN and heads (checkpoints of a few MB): a real Detectron2
train + COCO evaluation with a checkpoint to resume from, light enough for 24 of them.
"""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from slurm_local import (
    RUN_DIR,
    START,
    cluster_started,
    run_script,
    sacct_states,
    settled_states,
    tiny_pretraining,
    wait_until,
)

from launcher.collect import write_reports
from launcher.executors import Resources, make_executor, map_array, unique_log_folder
from launcher.sweep import load_sweep, submit_sweep

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TINY_TRANSFER = REPO / "configs" / "transfer" / "tiny_mask_rcnn_R50_FPN.yaml"
RUNS = 24
# checkpoints every 3 of 20 iterations: a requeued task (SIGKILL KillWait=5 s after the requeue,
# as submitit ignores SIGTERM) dies before its last iteration, with a checkpoint to resume from
MAX_ITER = 20
LIGHT_TRANSFER = [
    "SOLVER.MAX_ITER", MAX_ITER, "SOLVER.CHECKPOINT_PERIOD", 3,
    "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
    "MODEL.ROI_MASK_HEAD.CONV_DIM", 32, "MODEL.RPN.PRE_NMS_TOPK_TEST", 100,
]  # fmt: skip
ONE_CPU = dict(gpus_per_node=0, cpus_per_task=1, mem_gb=2, timeout_min=20)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    with cluster_started("--nodes", "2"):
        yield tmp_path_factory.mktemp("faults")


def squeue_running():
    """{array task id (e.g. 12_3): node} of the running jobs."""
    listing = subprocess.run(
        ["squeue", "-h", "-t", "R", "-o", "%i %N"], capture_output=True, text=True
    ).stdout
    return dict(line.split() for line in listing.splitlines() if len(line.split()) == 2)


def kill_daemon(pidfile, name):
    pid = int((RUN_DIR / pidfile).read_text())
    os.kill(pid, signal.SIGKILL)  # our own daemon, named by the start script's PID file
    wait_until(lambda: not Path(f"/proc/{pid}/cmdline").exists(), 10, f"{name} to die")


def restart_cluster():
    started = run_script(START, "--nodes", "2")
    assert started.returncode == 0, started.stdout + started.stderr
    return started.stdout


def checkpointed_but_running(submitted, sweep_dir):
    """A run whose task is running and has a Detectron2 checkpoint but no results yet."""
    running = squeue_running()
    for run, job in submitted:
        directory = run.directory(sweep_dir)
        if (
            job.job_id in running
            and (directory / "last_checkpoint").is_file()
            and not (directory / "results.json").is_file()
        ):
            return run, job
    return None


def test_sweep_survives_requeue_controller_and_node_kills(two_nodes):
    checkpoint = tiny_pretraining(two_nodes / "pretrain")
    sweep_dir = two_nodes / "sweep"
    sweep_file = two_nodes / "faults.yaml"
    sweep_file.write_text(
        yaml.safe_dump(
            {
                "checkpoints": {"ring": str(checkpoint)},
                "tasks": {"mask": {"config": str(TINY_TRANSFER), "opts": LIGHT_TRANSFER}},
                "seeds": list(range(RUNS)),
                "output_dir": str(sweep_dir),
            }
        )
    )
    resources = Resources(job_name="faults", array_parallelism=4, **ONE_CPU)
    skipped, submitted = submit_sweep(load_sweep(sweep_file), "slurm", resources)
    assert skipped == [] and len(submitted) == RUNS
    assert len({job.job_id.split("_")[0] for _, job in submitted}) == 1  # one job array

    # 1. a running task with a checkpoint is requeued: killed now, and run again later
    found = []
    wait_until(
        lambda: found.append(checkpointed_but_running(submitted, sweep_dir)) or found[-1],
        600,
        "a running task with a checkpoint",
    )
    requeued_run, requeued_job = found[-1]
    subprocess.run(["scontrol", "requeue", requeued_job.job_id], check=True)
    wait_until(lambda: requeued_job.job_id not in squeue_running(), 60, "the requeued task to stop")
    time.sleep(3)  # slurmctld saves its state every few seconds; the kill must not undo this

    # 2. the controller dies mid-array (tasks running, tasks pending) and comes back
    assert len(list((sweep_dir / "runs").glob("*/*/seed_*/results.json"))) < RUNS - 4
    kill_daemon("slurmctld.pid", "slurmctld")
    assert "slurmctld started" in restart_cluster()

    # 3. a node's slurmd dies while a task runs there; the task's step outlives it
    wait_until(lambda: "rnce-n2" in squeue_running().values(), 600, "a task on rnce-n2")
    hit = [task for task, node in squeue_running().items() if node == "rnce-n2"]
    kill_daemon("slurmd-rnce-n2.pid", "slurmd on rnce-n2")
    assert "slurmd started on rnce-n2" in restart_cluster()

    for _, job in submitted:
        job.wait()
    states = {run.label: settled_states(job.job_id, timeout=120) for run, job in submitted}
    assert all(state == ["COMPLETED"] for state in states.values()), states
    assert "REQUEUED" in sacct_states(requeued_job.job_id, duplicates=True)
    # the tasks running on the node whose slurmd died ran once, to the end
    assert all(sacct_states(task, duplicates=True) == ["COMPLETED"] for task in hit)

    # every run collected once: 24 results, none missing, one row of 24 seeds
    markdown, missing = write_reports(sweep_dir)
    assert missing == []
    assert len(list((sweep_dir / "runs").glob("*/*/seed_*/results.json"))) == RUNS
    assert f"{RUNS}/{RUNS} runs finished" in markdown

    # the requeued run resumed from the checkpoint it had written, not from iteration 0
    log = Path(requeued_job.paths.stdout).read_text()
    resumed = re.findall(r"resumed from \S*/(model_\d+)\.pth at iter (\d+)", log)
    assert len(resumed) == 1, log[-3000:]  # an intermediate checkpoint, not model_final
    assert 2 <= int(resumed[0][1]) < MAX_ITER - 1
    assert f"Starting training from iteration {int(resumed[0][1]) + 1}" in log
    # and the others ran once: no run but the requeued one resumed
    for run, job in submitted:
        if run != requeued_run:
            assert "resumed from" not in Path(job.paths.stdout).read_text(), run.label


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
