"""The launcher on a real one-node Slurm cluster (munge, slurmdbd + MariaDB, slurmctld, slurmd)
started by tools/slurm/start_local_slurm.sh for this module and stopped at its end.

Covered: the start script's idempotence and repair, a preempted job that requeues and resumes
to the uninterrupted result, cancellation, one-line errors for an unreachable controller and
for a GPU request on a GPU-less node, a pretraining job, and a transfer sweep submitted as one
job array (conversion as its dependency) with a failing task reported beside the finished ones,
plus the same sweep with ``--cluster local``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fault_points import HELD_FILE, RELEASE_FILE, HeldPretrainJob, HeldProbeJob, hold_after
from slurm_local import (
    RUN_DIR,
    START,
    cluster_started,
    queue_state,
    run_script,
    settled_states,
    tiny_pretraining,
    wait_until,
)

from launcher.collect import write_reports
from launcher.errors import LauncherError
from launcher.executors import Resources, make_executor, submit, unique_log_folder
from launcher.jobs import distributed_environment, rendezvous_port
from launcher.probe import ProbeJob, read_progress
from launcher.sweep import load_sweep, planned_runs, submit_sweep

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TINY_TRANSFER = REPO / "configs" / "transfer" / "tiny_mask_rcnn_R50_FPN.yaml"
# one CPU per job: the two-core node runs two jobs at once
SMALL = dict(gpus_per_node=0, cpus_per_task=1, mem_gb=3, timeout_min=15, array_parallelism=2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with cluster_started():
        yield tmp_path_factory.mktemp("slurm")


def squeue_lists(job_id):
    listing = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    return job_id in listing.split()


def probe_executor(folder, **changes):
    resources = Resources(job_name="probe", **{**SMALL, **changes})
    return make_executor("slurm", unique_log_folder(folder, "probe"), resources), resources


def test_start_is_idempotent_and_restarts_a_dead_daemon(cluster):
    again = run_script(START)
    assert again.returncode == 0, again.stdout
    assert "cluster ready" in again.stdout and "started" not in again.stdout
    pid = int((RUN_DIR / "slurmd.pid").read_text())
    os.kill(pid, 9)  # our own slurmd, found by the PID file the start script recorded
    wait_until(lambda: not Path(f"/proc/{pid}/cmdline").exists(), 10, "slurmd to die")
    repaired = run_script(START)
    assert repaired.returncode == 0, repaired.stdout
    assert "slurmd started" in repaired.stdout and "cluster ready" in repaired.stdout
    # a slurm.conf left by something else: rewritten, and the daemons restarted to read it
    conf = Path("/etc/slurm/slurm.conf")
    conf.write_text(conf.read_text().replace("SchedulerParameters=", "#SchedulerParameters="))
    rewritten = run_script(START)
    assert rewritten.returncode == 0, rewritten.stdout
    assert "slurm.conf changed" in rewritten.stdout and "cluster ready" in rewritten.stdout
    assert "\nSchedulerParameters=" in conf.read_text()


def jobs_import_tests(monkeypatch):
    """Jobs inherit the submitting environment: tests/ on their path for fault_points."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(REPO / "tests")]))


def test_preempted_job_requeues_and_resumes_to_the_uninterrupted_result(cluster, monkeypatch):
    workdir = cluster / "preempted"
    hold_after(workdir, 6)  # the probe waits after step 6's checkpoint: preempted mid-run
    jobs_import_tests(monkeypatch)
    executor, resources = probe_executor(cluster / "logs")
    job = submit(executor, resources, HeldProbeJob(), str(workdir), 24)
    wait_until((workdir / HELD_FILE).is_file, 120, "the probe to hold after step 6")
    preempt(job.job_id, job.paths.stdout)
    result = job.result()  # waits through the requeue (cred_expire) and the second run
    uninterrupted = ProbeJob()(cluster / "uninterrupted", 24)
    assert result["resumed_from_step"] == 6
    assert result["digest"] == uninterrupted["digest"]
    assert result["loss"] == uninterrupted["loss"]
    states = settled_states(job.job_id, duplicates=True)
    assert states[-1] == "COMPLETED" and "REQUEUED" in states, states
    assert "preempted" in Path(job.paths.stdout).read_text()


def job_processes(job_id):
    """Live processes started for a Slurm job (Slurm sets SLURM_JOB_ID in their environment)."""
    marker = f"SLURM_JOB_ID={job_id}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0"):
                found.append(environ.parent.name)
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def test_cancelled_job_stops_and_is_recorded_cancelled(cluster, monkeypatch):
    workdir = cluster / "cancelled"
    hold_after(workdir, 2)
    jobs_import_tests(monkeypatch)
    executor, resources = probe_executor(cluster / "logs")
    job = submit(executor, resources, HeldProbeJob(), str(workdir), 10)
    wait_until((workdir / HELD_FILE).is_file, 120, "the probe to hold after step 2")
    job.cancel()
    assert settled_states(job.job_id) == ["CANCELLED"]
    assert job.state.startswith("CANCELLED")  # submitit adds "by <uid>"
    # submitit ignores the SIGTERM of scancel; Slurm kills the job KillWait (5 s) later
    wait_until(lambda: squeue_lists(job.job_id) is False, 30, "the job to leave squeue")
    assert job_processes(job.job_id) == []  # nothing left that could go on
    assert read_progress(workdir) == 2


def run_submit(*args, **env):
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "submit.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, **env},
    )


def test_unreachable_controller_is_one_line_not_a_traceback(cluster, tmp_path):
    # the same cluster's configuration, but a port no controller listens on
    conf = (
        Path("/etc/slurm/slurm.conf")
        .read_text()
        .replace("SlurmctldPort=6817", "SlurmctldPort=6999")
    )
    (tmp_path / "slurm.conf").write_text(conf)
    result = run_submit(
        "probe",
        "--workdir",
        tmp_path / "w",
        "--gpus-per-node",
        "0",
        SLURM_CONF=tmp_path / "slurm.conf",
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: the Slurm controller is unreachable")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    # the controller going away between the check and sbatch: sbatch's failure, in one line
    executor, resources = probe_executor(tmp_path / "logs")
    os.environ["SLURM_CONF"] = str(tmp_path / "slurm.conf")
    try:
        with pytest.raises(LauncherError, match="Slurm controller unreachable") as raised:
            submit(executor, resources, ProbeJob(), str(tmp_path / "w"), 1)
    finally:
        del os.environ["SLURM_CONF"]
    assert "\n" not in str(raised.value)


def test_gpu_request_on_a_gpu_less_node_is_rejected_in_one_line(cluster, tmp_path):
    result = run_submit(
        "probe", "--workdir", tmp_path / "w", "--gpus-per-node", "1", "--cpus-per-task", "1"
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "Requested node configuration is not available" in result.stderr
    assert "--gpus-per-node 0" in result.stderr


def test_multi_task_job_gets_one_rendezvous_and_distinct_ranks(cluster):
    # what a 2-GPU DDP job sees, on CPUs: one Slurm job, two tasks
    executor, resources = probe_executor(cluster / "logs", tasks_per_node=2)
    job = submit(executor, resources, distributed_environment)
    tasks = job.results()
    assert sorted(task["RANK"] for task in tasks) == ["0", "1"]
    assert {task["WORLD_SIZE"] for task in tasks} == {"2"}
    assert {task["MASTER_PORT"] for task in tasks} == {str(rendezvous_port(job.job_id))}


def preempt(job_id, log_path):
    """What Slurm does on preemption with submitit's --signal: SIGTERM, then USR2, on which
    submitit calls the job's checkpoint() and requeues it. scancel only queues a signal, so USR2
    waits until the job has handled TERM: delivered the other way round, TERM also reaches the
    `scontrol requeue` child submitit has just started and kills it, failing the job."""
    subprocess.run(["scancel", "--signal", "TERM", job_id], check=True)
    log_path = Path(log_path)
    wait_until(
        lambda: log_path.is_file() and "Bypassing signal SIGTERM" in log_path.read_text(),
        60,
        "the job to handle SIGTERM",
    )
    subprocess.run(["scancel", "--signal", "USR2", job_id], check=True)


PRETRAIN_OVERRIDES = [
    "device=cpu",
    "model.width=0.125",
    "model.embedding_dim=16",
    "moco.queue_size=64",
    "data.name=synthetic",
    "data.num_workers=0",
    "data.synthetic.train_count=64",
    "optim.batch_size=16",
    "train.progress=false",
    "train.tensorboard=false",
    "knn.every_epochs=0",
    "checkpoint.every_epochs=1",
]


def pretrain_config(folder):
    config = folder / "pretrain.yaml"
    config.write_text(yaml.safe_dump({"method": "moco"}))
    return config


def submit_held_pretraining(cluster, monkeypatch, overrides, output):
    """A Slurm pretraining job that holds after its epoch 1 checkpoint until released."""
    hold_after(output, 1)
    jobs_import_tests(monkeypatch)
    resources = Resources(job_name="pretrain", tasks_per_node=1, **SMALL)
    executor = make_executor("slurm", unique_log_folder(cluster / "logs", "pretrain"), resources)
    arguments = (str(pretrain_config(cluster)), [*overrides, f"output_dir={output}"])
    job = submit(executor, resources, HeldPretrainJob(), *arguments)
    wait_until((output / HELD_FILE).is_file, 300, "the pretraining to hold after epoch 1")
    return job


@pytest.mark.long
def test_preempted_pretraining_resumes_to_the_uninterrupted_result(cluster, monkeypatch):
    config, overrides = pretrain_config(cluster), [*PRETRAIN_OVERRIDES, "optim.epochs=3"]
    output = cluster / "pretrain_slurm"
    job = submit_held_pretraining(cluster, monkeypatch, overrides, output)
    preempt(job.job_id, job.paths.stdout)
    result = job.result()
    assert "REQUEUED" in settled_states(job.job_id, duplicates=True)

    # the reference: the same run, uninterrupted, as a local process (same thread count)
    reference = run_submit(
        "pretrain", "--config", config, "--cluster", "local", "--gpus-per-node", "0", "--wait",
        *overrides, f"output_dir={cluster / 'pretrain_local'}",
    )  # fmt: skip
    assert reference.returncode == 0, reference.stderr
    uninterrupted = json.loads(reference.stdout.strip().splitlines()[-1])
    assert result["epoch"] == 3 and result["loss"] == uninterrupted["loss"]
    assert "resumed from" in Path(job.paths.stdout).read_text()


@pytest.mark.long
def test_watch_evaluates_each_checkpoint_of_a_running_pretraining_once(cluster, monkeypatch):
    output, sweep_dir = cluster / "watched", cluster / "watch_sweep"
    job = submit_held_pretraining(
        cluster, monkeypatch, [*PRETRAIN_OVERRIDES, "optim.epochs=2"], output
    )
    sweep_file = cluster / "watch.yaml"
    light = ["SOLVER.MAX_ITER", 2, "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 64]
    sweep_file.write_text(
        yaml.safe_dump(
            {
                "checkpoints": {"scratch": "random"},
                "tasks": {"mask": {"config": str(TINY_TRANSFER), "opts": light}},
                "seeds": [0, 1],
                "output_dir": str(sweep_dir),
                "resources": SMALL,
            }
        )
    )
    command = [sys.executable, str(REPO / "tools" / "submit.py"), "watch", str(output)]
    command += ["--sweep", str(sweep_file), "--poll-s", "0.5"]
    # epoch 1's runs (with the reference) go while the pretraining is still held after it
    watcher = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert watcher.stdout.readline().startswith("watching")
    assert watcher.stdout.readline().strip() == "scratch: submitted 2 run(s)"
    assert watcher.stdout.readline().strip() == "epoch_0001: submitted 2 run(s)"
    assert queue_state(job.job_id) == "RUNNING"
    first = (sweep_dir / "runs" / "epoch_0001" / "mask" / "seed_0" / "job.json").read_text()
    # the watch dies; restarted, it goes on from its state on disk
    watcher.kill()
    watcher.wait()
    (output / RELEASE_FILE).touch()
    again = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "epoch_0002: submitted 2 run(s)" in again.stdout
    assert "epoch_0001: submitted" not in again.stdout  # each checkpoint at most once
    assert (sweep_dir / "runs" / "epoch_0001" / "mask" / "seed_0" / "job.json").read_text() == first
    assert job.result()["finished"]
    assert "6/6 runs finished" in again.stdout
    rows = [line.split("|")[1].strip() for line in again.stdout.splitlines() if "| epoch_" in line]
    assert rows == ["epoch_0001", "epoch_0002"]
    assert (sweep_dir / "results_by_epoch.png").stat().st_size > 0


def write_sweep_file(folder, checkpoint, output_dir, tasks):
    path = folder / f"{output_dir.name}.yaml"
    content = {
        "checkpoints": {"ring": str(checkpoint)},
        "tasks": tasks,
        "seeds": [0, 1, 2],
        "output_dir": str(output_dir),
    }
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def test_sweep_is_one_job_array_and_failures_are_reported_beside_results(cluster):
    checkpoint = tiny_pretraining(cluster / "sweep_pretrain")
    sweep_dir = cluster / "sweep"
    # the failing task: a dataset that is not on the node, a real transfer failure
    tasks = {
        "mask": {"config": str(TINY_TRANSFER)},
        "coco": {"config": str(TINY_TRANSFER), "opts": ["DATASETS.TRAIN", '("coco_2017_train",)']},
    }
    spec = load_sweep(write_sweep_file(cluster, checkpoint, sweep_dir, tasks))
    resources = Resources(job_name="sweep", **SMALL)
    skipped, submitted = submit_sweep(spec, "slurm", resources)
    assert skipped == [] and len(submitted) == 6
    array_ids = {job.job_id.split("_")[0] for _, job in submitted}
    assert len(array_ids) == 1, "all runs must be tasks of ONE job array"
    record = json.loads((submitted[0][0].directory(sweep_dir) / "job.json").read_text())
    conversion_id = record["depends_on"]["job_id"]
    assert conversion_id not in array_ids

    for _, job in submitted:
        job.wait()
    assert settled_states(conversion_id) == ["COMPLETED"]
    states = {run.label: settled_states(job.job_id) for run, job in submitted}
    assert all(states[f"ring/mask/seed_{seed}"] == ["COMPLETED"] for seed in (0, 1, 2)), states
    assert all(states[f"ring/coco/seed_{seed}"] == ["FAILED"] for seed in (0, 1, 2)), states

    markdown, missing = write_reports(sweep_dir)
    assert [outcome.run.label for outcome in missing] == [f"ring/coco/seed_{s}" for s in (0, 1, 2)]
    for outcome in missing:
        assert "coco_2017_train" in outcome.problem and outcome.problem.startswith("failed:")
        assert "coco_2017_train" in Path(outcome.log).read_text()
    ring_row = next(line for line in markdown.splitlines() if line.startswith("| ring |"))
    header = next(line for line in markdown.splitlines() if line.startswith("| pretraining |"))
    assert "mask bbox AP" in header and "mask segm AP75" in header
    assert "seeds)" not in ring_row  # every mask seed counted
    assert (sweep_dir / "results.png").is_file() and (sweep_dir / "results.csv").is_file()

    # one-command recovery: the rerun sweep resubmits exactly the runs without results, and
    # while those are queued (the partition holds them) a further rerun submits nothing
    set_partition_state("DOWN")
    try:
        skipped, resubmitted = submit_sweep(spec, "slurm", resources)
        assert [run.label for run, _ in resubmitted] == [f"ring/coco/seed_{s}" for s in (0, 1, 2)]
        assert [run.label for run in skipped] == [f"ring/mask/seed_{s}" for s in (0, 1, 2)]
        assert submit_sweep(spec, "slurm", resources) == (planned_runs(spec), [])
    finally:
        set_partition_state("UP")
    for _, job in resubmitted:
        job.wait()
    markdown, missing = write_reports(sweep_dir)
    assert len(missing) == 3  # the same failure again, each run listed once
    for seed in (0, 1, 2):
        assert f"| ring/coco/seed_{seed} | 2 | resubmitted 1 time(s)" in markdown

    # re-running the finished part of the sweep submits nothing
    finished_only = load_sweep(
        write_sweep_file(cluster, checkpoint, sweep_dir, {"mask": tasks["mask"]})
    )
    skipped, submitted = submit_sweep(finished_only, "slurm", resources)
    assert (len(skipped), submitted) == (3, [])


def set_partition_state(state):
    subprocess.run(["scontrol", "update", "PartitionName=debug", f"State={state}"], check=True)


def test_same_sweep_runs_without_slurm_with_cluster_local(cluster):
    checkpoint = tiny_pretraining(cluster / "local_pretrain")
    sweep_dir = cluster / "local_sweep"
    sweep_file = write_sweep_file(
        cluster, checkpoint, sweep_dir, {"mask": {"config": str(TINY_TRANSFER)}}
    )
    content = yaml.safe_load(sweep_file.read_text())
    sweep_file.write_text(yaml.safe_dump({**content, "seeds": [0]}, sort_keys=False))
    # no sbatch reachable at all: a "local" sweep must not try Slurm
    result = run_submit(
        "sweep", sweep_file, "--cluster", "local", "--gpus-per-node", "0",
        SLURM_CONF="/nonexistent/slurm.conf",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (sweep_dir / "runs" / "ring" / "mask" / "seed_0" / "results.json").is_file()
    assert "| ring |" in result.stdout and "1/1 runs finished" in result.stdout


@pytest.mark.long
def test_fast_demo_runs_its_transfer_as_one_slurm_job_array(cluster):
    run_dir = cluster / "demo"
    env = {**os.environ, "DEMO_FAST": "1", "DEMO_DIR": str(run_dir), "DEMO_CLUSTER": "slurm"}
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "demo.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "as one slurm job array" in done.stdout
    records = [
        json.loads(path.read_text()) for path in (run_dir / "sweep" / "runs").glob("*/*/*/job.json")
    ]
    assert len(records) == 6  # {random, uniform, ring} x {scenes, photos}, one seed
    assert len({record["job_id"].split("_")[0] for record in records}) == 1
    for record in records:
        assert settled_states(record["job_id"]) == ["COMPLETED"]
    headline = (run_dir / "results.md").read_text().split("Real-photo check")[0]
    rows = [line.split("|")[1].strip() for line in headline.splitlines() if line[:2] == "| "]
    assert rows[1:] == ["raw pixels", "random init", "uniform-MoCo", "ring-MoCo"]
