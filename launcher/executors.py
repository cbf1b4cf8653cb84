"""submitit executors for a Slurm cluster, the local machine or the current process.

``--cluster`` is always explicit: submitit's own choice picks Slurm whenever ``srun`` is on
PATH, which would send a "local" run to the queue on any login node.
"""

import contextlib
import io
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, fields
from pathlib import Path

import submitit
from submitit.core.utils import FailedJobError

from launcher.errors import LauncherError
from launcher.retry import batch_commands

CLUSTERS = ("slurm", "local", "debug")


@dataclass
class Resources:
    """What one job asks for; ``None`` leaves the cluster's default."""

    job_name: str = "ring-nce"
    nodes: int = 1
    gpus_per_node: int = 1
    tasks_per_node: int = 1
    cpus_per_task: int = 4
    mem_gb: float | None = None
    timeout_min: int = 60
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int = 32
    # requeues after a time limit allowed before the job gives up (preemptions are unlimited)
    max_timeouts: int = 3
    # requeues after an infrastructure failure (launch failure, node lost; launcher.retry)
    max_retries: int = 2

    @classmethod
    def field_names(cls):
        return [field.name for field in fields(cls)]


def unique_log_folder(root, label):
    """A folder no earlier submission used: submitit reads results back by job id, and a
    restarted cluster reuses ids, so a shared folder would return another job's result."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{stamp}-{label}-{uuid.uuid4().hex[:6]}"


def check_slurm_reachable():
    """Fail early, in one line, when there is no Slurm or its controller does not answer."""
    if shutil.which("sbatch") is None:
        raise LauncherError(
            "--cluster slurm but sbatch is not on PATH; run on a Slurm login node or use "
            "--cluster local"
        )
    try:
        answer = subprocess.run(
            ["scontrol", "ping"], capture_output=True, text=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise LauncherError(
            "the Slurm controller did not answer 'scontrol ping' within 30 s; check that "
            "slurmctld runs (tools/slurm/start_local_slurm.sh starts a local one)"
        ) from error
    if " is UP" not in answer.stdout:
        status = answer.stdout.strip().splitlines() or answer.stderr.strip().splitlines() or [""]
        raise LauncherError(
            f"the Slurm controller is unreachable ({status[0].strip()}); check that slurmctld "
            "runs and slurm.conf names it (tools/slurm/start_local_slurm.sh starts a local one)"
        )


def make_executor(cluster, folder, resources):
    """An executor for ``cluster`` writing its pickles and logs under ``folder``."""
    if cluster not in CLUSTERS:
        raise LauncherError(f"unknown cluster {cluster!r}; use one of {', '.join(CLUSTERS)}")
    if cluster == "slurm":
        check_slurm_reachable()
    folder = Path(folder)
    executor = submitit.AutoExecutor(
        folder=folder / "%j", cluster=cluster, slurm_max_num_timeout=resources.max_timeouts
    )
    executor.update_parameters(
        name=resources.job_name,
        nodes=resources.nodes,
        gpus_per_node=resources.gpus_per_node,
        tasks_per_node=resources.tasks_per_node,
        cpus_per_task=resources.cpus_per_task,
        timeout_min=resources.timeout_min,
        mem_gb=resources.mem_gb,
        slurm_partition=resources.partition,
        slurm_account=resources.account,
        slurm_qos=resources.qos,
        slurm_constraint=resources.constraint,
        slurm_array_parallelism=resources.array_parallelism,
        # one log per job: a failure's traceback sits beside what led to it
        stderr_to_stdout=True,
    )
    if cluster == "slurm":
        setup, teardown = batch_commands(folder / "%j", resources.max_retries)
        executor.update_parameters(slurm_setup=setup, slurm_teardown=teardown)
    return executor


def _submission_failure(error, resources):
    """One line from sbatch's complaint, with the fix for the cases users meet."""
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = next((line for line in lines if "error:" in line), lines[-1] if lines else text)
    reason = reason.split("error:", 1)[-1].strip()
    if "Requested node configuration is not available" in text:
        return (
            f"Slurm rejected the job: {reason} (no node has {resources.gpus_per_node} GPU(s), "
            f"{resources.cpus_per_task} CPU(s) per task and the memory asked; lower "
            "--gpus-per-node/--cpus-per-task/--mem-gb, e.g. --gpus-per-node 0 on CPU-only nodes)"
        )
    if "Unable to contact slurm controller" in text:
        return f"Slurm controller unreachable: {reason}; check that slurmctld runs"
    return f"Slurm rejected the submission: {reason}"


@contextlib.contextmanager
def translated_submission_errors(resources):
    """Turn sbatch failures into a LauncherError; submitit also prints sbatch's stderr, which
    is swallowed here so the user sees one line."""
    swallowed = io.StringIO()
    try:
        with contextlib.redirect_stderr(swallowed):
            yield
    except FailedJobError as error:
        raise LauncherError(_submission_failure(error, resources)) from error


def submit(executor, resources, function, *args, **kwargs):
    with translated_submission_errors(resources):
        return executor.submit(function, *args, **kwargs)


def map_array(executor, resources, function, *iterables):
    with translated_submission_errors(resources):
        return executor.map_array(function, *iterables)


def job_record(job):
    """What a later reader needs to find a job and its log."""
    return {
        "job_id": str(job.job_id),
        "stdout": str(job.paths.stdout),
        "stderr": str(job.paths.stderr),
        "result_pickle": str(job.paths.result_pickle),
        "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
