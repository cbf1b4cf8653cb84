"""Bounded automatic retries of Slurm tasks that fail for infrastructure reasons.

Every Slurm job the launcher submits runs two short commands around submitit's ``srun``
(``batch_commands``): ``start`` records the attempt in the job's submitit folder, and ``ended``
runs when ``srun`` failed. ``ended`` requeues the job (same job id, so ``job.json``, submitit's
watcher and the leaderboard still name one job; the task resumes from its last checkpoint) when:

- the task left no result: the step never launched (its node's slurmd was gone), or the node or
  a signal killed it, so nothing of the task's own said what went wrong;
- or the task's own error is a transport failure (``INFRASTRUCTURE_ERRORS``).

Any other error of the task (a config or data error) is never retried: the job fails once, with
its one-line error. Nothing is done when Slurm itself ended the job (a requeue, a cancellation or
a time limit: submitit's own requeue handles preemption and time limits). At most
``max_retries`` requeues per job. Jobs that end for good without results (a node lost for longer
than Slurm waits, a retry budget spent) are what ``tools/submit.py sweep FILE`` resubmits when
rerun. The attempts log is ``attempts.jsonl`` beside the job's pickles.
"""

import argparse
import json
import os
import pickle
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

ATTEMPTS_FILE = "attempts.jsonl"
# exception names (the last line of a task's traceback) that a rerun on a healthy node fixes
INFRASTRUCTURE_ERRORS = (
    "ConnectionError",
    "ConnectionResetError",
    "ConnectionRefusedError",
    "BrokenPipeError",
    "DistNetworkError",
    "DistStoreError",
)


def batch_commands(folder, max_retries):
    """(setup, teardown) lines for submitit's sbatch script; ``folder`` is the executor's
    folder (with ``%j``). The teardown's first line reads srun's exit status."""
    command = f"{shlex.quote(sys.executable)} -m launcher.retry"
    pattern = shlex.quote(str(folder))
    setup = [f"{command} start {pattern}"]
    teardown = [
        "status=$?",
        f'[ "$status" = 0 ] || {command} ended {pattern} --status "$status" '
        f"--max-retries {int(max_retries)}",
        'exit "$status"',
    ]
    return setup, teardown


def job_id():
    """submitit's id of this job: ``ARRAY_TASK`` for an array task, else the job id."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def job_folder(pattern):
    return Path(str(pattern).replace("%j", job_id()))


def read_attempts(folder):
    path = Path(folder) / ATTEMPTS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _record(folder, **event):
    folder.mkdir(parents=True, exist_ok=True)
    event = {**event, "host": socket.gethostname(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with open(folder / ATTEMPTS_FILE, "a") as handle:
        handle.write(json.dumps(event) + "\n")


def task_error(folder):
    """The last line of the task's own error, if it raised one (submitit's result pickles)."""
    for path in sorted(Path(folder).glob("*_result.pkl")):
        try:
            with open(path, "rb") as handle:
                outcome, payload = pickle.load(handle)
        except Exception:  # a truncated pickle: the task died while writing it
            continue
        if outcome == "error":
            lines = [line for line in str(payload).strip().splitlines() if line.strip()]
            return lines[-1].strip() if lines else "failed without a message"
    return None


def retry_reason(status, error):
    """Why this failure is the infrastructure's (None: the task's own, never retried)."""
    if error is None:
        return f"the task ended without a result (srun exit status {status})"
    name = error.split(":", 1)[0].rsplit(".", 1)[-1]
    if name in INFRASTRUCTURE_ERRORS:
        return f"the task failed in transport: {error}"
    return None


def still_running(slurm_job_id):
    """Whether Slurm still counts the job as running: a requeue, cancellation or time limit
    changes the state before the step is killed, so then the failure is Slurm's own doing."""
    try:
        shown = subprocess.run(
            ["scontrol", "show", "job", "-o", slurm_job_id],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False  # no controller to ask: leave the failure for a rerun of the sweep
    return "JobState=RUNNING" in shown.split()


def ended(folder, status, max_retries):
    """Called after srun failed: requeue the job if the failure is the infrastructure's."""
    if not still_running(os.environ["SLURM_JOB_ID"]):
        return
    error = task_error(folder)
    reason = retry_reason(status, error)
    if reason is None:
        print(f"not retried: the task's own error: {error}", flush=True)
        return
    retries = sum(event["event"] == "retry" for event in read_attempts(folder))
    if retries >= max_retries:
        print(f"not retried: {reason}; all {max_retries} retries spent", flush=True)
        return
    # a stale error from this attempt must not decide the next one's failure
    for path in Path(folder).glob("*_result.pkl"):
        path.rename(path.with_name(f"{path.name}.attempt{retries + 1}"))
    _record(folder, event="retry", reason=reason, status=status)
    print(f"retrying ({retries + 1} of {max_retries}): {reason}", flush=True)
    subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=True, timeout=60)


def main(argv=None):
    parser = argparse.ArgumentParser(description="record and retry a Slurm task's attempts")
    parser.add_argument("event", choices=("start", "ended"))
    parser.add_argument("folder", help="the submitit folder pattern (with %%j)")
    parser.add_argument("--status", type=int, default=0)
    parser.add_argument("--max-retries", type=int, default=0)
    args = parser.parse_args(argv)
    folder = job_folder(args.folder)
    if args.event == "start":
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", 0))
        _record(folder, event="start", slurm_job_id=os.environ["SLURM_JOB_ID"], restart=restarts)
    else:
        ended(folder, args.status, args.max_retries)


if __name__ == "__main__":
    main()
