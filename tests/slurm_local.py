"""The local Slurm cluster for the slurm-marked test modules: start it for a module (or skip with
the one-line reason the start script gives), stop it after, and read job states from sacct."""

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
START = REPO / "tools" / "slurm" / "start_local_slurm.sh"
STOP = REPO / "tools" / "slurm" / "stop_local_slurm.sh"
RUN_DIR = (
    Path(
        os.environ.get("SLURM_LOCAL_DIR", Path(os.environ.get("TMPDIR", "/tmp")) / "ring-nce-slurm")
    )
    / "run"
)
# the start script's exit status for "this machine cannot host the cluster"
CANNOT_HOST = 3


def run_script(script, *args, **env):
    return subprocess.run(
        ["bash", str(script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


@contextlib.contextmanager
def cluster_started(*start_args):
    """The cluster the start script brings up with ``start_args``, jobs single-threaded, stopped
    (namespaces and bridge removed) afterwards."""
    if shutil.which("dpkg-query") is None:
        pytest.skip("local Slurm cluster unavailable: not a Debian system (no dpkg-query)")
    started = run_script(START, *start_args)
    if started.returncode == CANNOT_HOST:
        reason = (started.stdout.strip().splitlines() or ["(no output)"])[-1]
        pytest.skip(f"local Slurm cluster unavailable: {reason.split('error: ', 1)[-1]}")
    assert started.returncode == 0, started.stdout + started.stderr
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # jobs inherit the submitting environment
    try:
        yield started
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = saved
        stopped = run_script(STOP)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def sacct_states(job_id, duplicates=False):
    """Every accounting record's state for a job (with -D: each requeued run too)."""
    command = ["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "JobID,State"]
    listing = subprocess.run(
        command + (["-D"] if duplicates else []), capture_output=True, text=True, check=True
    ).stdout
    return [line.split("|")[1].split()[0] for line in listing.splitlines() if line.strip()]


def settled_states(job_id, duplicates=False, timeout=60):
    """sacct's states once the job has left the queue (the result pickle is written while the
    job step is still RUNNING in accounting)."""
    unsettled = {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING"}
    wait_until(
        lambda: sacct_states(job_id)[-1:] and sacct_states(job_id)[-1] not in unsettled,
        timeout,
        f"job {job_id} to leave the queue",
    )
    return sacct_states(job_id, duplicates)


def queue_state(job_id):
    """squeue's state of a job ('' once it has left the queue)."""
    listing = subprocess.run(
        ["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True
    ).stdout
    return listing.strip()


def controller_state_saved(job_id):
    """Return once slurmctld's saved state holds everything it knew when this was called: a
    comment set on ``job_id`` now reaches the job_state file only with a save made after it
    (slurmctld saves a full snapshot within seconds of a change), so a SIGKILL of the
    controller afterwards undoes nothing done before."""
    token = f"state-saved-{uuid.uuid4().hex}"
    update = ["scontrol", "update", f"JobId={job_id}", f"Comment={token}"]
    subprocess.run(update, check=True, capture_output=True)
    state = RUN_DIR.parent / "state" / "job_state"
    wait_until(lambda: token.encode() in state.read_bytes(), 60, "slurmctld to save its state")


def tiny_pretraining(output_dir):
    """A one-epoch MoCo checkpoint of a ResNet-18 at width 1/8 (seconds): sweeps' input."""
    from pretrain.trainer import train

    train(
        {
            "method": "moco",
            "output_dir": str(output_dir),
            "resume": "none",
            "device": "cpu",
            "model": {"arch": "resnet18", "width": 0.125, "embedding_dim": 16},
            "moco": {"queue_size": 64},
            "data": {
                "name": "synthetic",
                "num_workers": 0,
                "synthetic": {"image_size": 32, "train_count": 32, "test_count": 16},
            },
            "optim": {"batch_size": 16, "epochs": 1},
            "train": {"progress": False, "tensorboard": False},
            "knn": {"every_epochs": 0},
        }
    )
    return Path(output_dir) / "checkpoints" / "last.pth"
