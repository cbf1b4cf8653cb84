"""launcher.retry without Slurm: which failures are retried, the bound, the attempts log, and
the lines submitit's sbatch script gets (the same lines run for real in test_slurm_faults.py)."""

import pickle
import subprocess

import pytest

from launcher import retry
from launcher.executors import Resources, make_executor


@pytest.fixture
def slurm_task(tmp_path, monkeypatch):
    """The environment of array task 12_3 (Slurm job 15), its folder, and the scontrol calls
    it makes (the job reported RUNNING)."""
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "12")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_JOB_ID", "15")
    calls = []

    def scontrol(command, **kwargs):
        calls.append(command)
        stdout = "JobId=15 JobState=RUNNING Reason=None" if command[1] == "show" else ""
        return subprocess.CompletedProcess(command, 0, stdout=stdout, stderr="")

    monkeypatch.setattr(retry.subprocess, "run", scontrol)
    return tmp_path / "runs" / "%j", calls


def fail_task(folder, traceback):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "12_3_0_result.pkl").write_bytes(pickle.dumps(("error", traceback)))


def requeues(calls):
    return [command for command in calls if command[:2] == ["scontrol", "requeue"]]


def test_a_task_without_result_is_requeued_at_most_max_retries_times(slurm_task, capsys):
    pattern, calls = slurm_task
    retry.main(["start", str(pattern)])
    for _ in range(3):  # three failed launches, two retries allowed
        retry.main(["ended", str(pattern), "--status", "1", "--max-retries", "2"])
    assert requeues(calls) == [["scontrol", "requeue", "15"]] * 2
    events = retry.read_attempts(pattern.parent / "12_3")
    assert [event["event"] for event in events] == ["start", "retry", "retry"]
    assert "without a result (srun exit status 1)" in events[1]["reason"]
    assert "all 2 retries spent" in capsys.readouterr().out


def test_a_config_error_of_the_task_is_never_retried(slurm_task, capsys):
    pattern, calls = slurm_task
    fail_task(pattern.parent / "12_3", "Traceback ...\ntransfer.config.TransferError: no COCO")
    retry.main(["ended", str(pattern), "--status", "1", "--max-retries", "2"])
    assert requeues(calls) == []
    assert "not retried: the task's own error: transfer.config.TransferError: no COCO" in (
        capsys.readouterr().out
    )


def test_a_transport_error_is_retried_and_its_stale_error_set_aside(slurm_task):
    pattern, calls = slurm_task
    folder = pattern.parent / "12_3"
    fail_task(folder, "Traceback ...\ntorch.distributed.DistNetworkError: Connection reset")
    retry.main(["ended", str(pattern), "--status", "1", "--max-retries", "2"])
    assert requeues(calls) == [["scontrol", "requeue", "15"]]
    assert retry.task_error(folder) is None  # the next attempt's failure decides for itself
    assert (folder / "12_3_0_result.pkl.attempt1").is_file()


def test_nothing_is_done_when_slurm_itself_ended_the_job(slurm_task, monkeypatch):
    pattern, calls = slurm_task
    monkeypatch.setattr(retry, "still_running", lambda job_id: False)  # requeued or cancelled
    retry.main(["ended", str(pattern), "--status", "143", "--max-retries", "2"])
    assert calls == [] and retry.read_attempts(pattern.parent / "12_3") == []


def test_slurm_executors_wrap_srun_in_start_and_ended(tmp_path):
    resources = Resources(max_retries=5, gpus_per_node=0)
    setup, teardown = retry.batch_commands(tmp_path / "%j", resources.max_retries)
    assert setup[0].endswith(f"-m launcher.retry start {tmp_path}/%j")
    # srun's exit status is read first and is the script's: an unretried failure stays FAILED
    assert teardown[0] == "status=$?" and teardown[-1] == 'exit "$status"'
    assert "--max-retries 5" in teardown[1]
    local = make_executor("local", tmp_path, resources)
    assert "setup" not in local._executor.parameters  # local jobs have no Slurm to retry them
