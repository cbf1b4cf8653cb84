"""Transfer sweeps: every (checkpoint, task, seed) run as ONE job array.

A sweep file (YAML) names pretraining checkpoints, Detectron2 transfer configs and seeds::

    checkpoints:            # name: path, or name: {path: .., encoder: ..}
      ring: runs/pretrain/ring/checkpoints/last.pth
      supervised: weights/resnet50-torchvision.pth
      scratch: random       # random init: no file, nothing converted; the network of the
                            # sweep's first checkpoint with a file (or {path: random, like: ring})
    baseline: scratch       # optional: the leaderboard's paired differences are against it
    tasks:                  # name: {config: .., opts: [KEY, VALUE, ...]}
      coco_mask: {config: configs/transfer/mask_rcnn.yaml, opts: [SOLVER.MAX_ITER, 90000]}
      glyphs_5w1s: {dataset: glyphs, protocol: {name: fewshot, shots: 1}}  # launcher.classification
    seeds: [0, 1, 2]
    opts: []                # Detectron2 opts for every run
    datasets: [parts=data/parts.json:data/images]   # optional: own COCO datasets (NAME=JSON:DIR)
    output_dir: runs/sweeps/ring   # optional (default runs/sweeps/<file name>)
    resources: {gpus_per_node: 8, max_retries: 2}  # optional launcher.executors.Resources

Relative paths are taken from the current directory (where the sweep is submitted). The sweep
directory holds ``sweep.yaml`` (the resolved spec), ``weights/<checkpoint>.pkl`` (converted once),
``runs/<checkpoint>/<task>/seed_<n>/`` (each run's Detectron2 OUTPUT_DIR with ``results.json``
and ``job.json``, which names the job and its log, and the earlier jobs of a resubmitted run)
and ``logs/`` (submitit's folders). Submitting a sweep again submits only the runs with no results
that are not queued or running: after failures, rerunning the same command is the recovery.
"""

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from launcher import classification
from launcher.errors import LauncherError
from launcher.executors import (
    Resources,
    job_record,
    make_executor,
    map_array,
    submit,
    unique_log_folder,
)
from launcher.jobs import TransferJob
from pretrain.errors import check_known_keys

SWEEP_KEYS = (
    "checkpoints",
    "tasks",
    "seeds",
    "opts",
    "output_dir",
    "resources",
    "datasets",
    "baseline",
)
TASK_KEYS = ("config", "opts")
CHECKPOINT_KEYS = ("path", "encoder", "like")
# a checkpoint entry spelled this way is the random-init baseline: Detectron2 gets
# MODEL.WEIGHTS "" (transfer.engine then loads nothing), so it needs no file
RANDOM_INIT = "random"
RESULTS_FILE = "results.json"
JOB_FILE = "job.json"
SPEC_FILE = "sweep.yaml"


@dataclass(frozen=True)
class Run:
    checkpoint: str
    task: str
    seed: int

    @property
    def label(self):
        return f"{self.checkpoint}/{self.task}/seed_{self.seed}"

    def directory(self, sweep_dir):
        return Path(sweep_dir) / "runs" / self.checkpoint / self.task / f"seed_{self.seed}"


def _check_keys(mapping, allowed, where):
    check_known_keys(mapping, allowed, where, LauncherError)


def _require_mapping(value, where):
    if not isinstance(value, dict) or not value:
        raise LauncherError(f"{where} must be a non-empty mapping of name: entry")
    return value


def _existing_path(text, where):
    path = Path(str(text)).expanduser().resolve()
    if not path.exists():
        raise LauncherError(f"{where}: {path} does not exist; fix the path in the sweep file")
    return str(path)


def _opts_list(value, where):
    if value is None:
        return []
    if not isinstance(value, list) or len(value) % 2:
        raise LauncherError(f"{where} must be a list of KEY, VALUE pairs (even length)")
    return value


def _dataset_specs(value):
    """``NAME=ANNOTATIONS.json:IMAGE_DIR`` strings with absolute paths (jobs run elsewhere);
    transfer.user_datasets checks the files in each run before any model is built."""
    specs = []
    for spec in value or []:
        name, _, paths = str(spec).partition("=")
        annotations, _, images = paths.rpartition(":")
        if not (name and annotations and images):
            raise LauncherError(f"datasets entry {spec!r} is not NAME=ANNOTATIONS.json:IMAGE_DIR")
        specs.append(f"{name}={Path(annotations).resolve()}:{Path(images).resolve()}")
    return specs


def _checkpoint_entry(name, entry):
    where = f"checkpoints.{name}"
    if entry == RANDOM_INIT:
        return {"path": None, "encoder": None}
    if entry == classification.RAW_PIXELS:
        return {"path": None, "encoder": None, "pixels": True}
    if not isinstance(entry, dict):
        entry = {"path": entry}
    _check_keys(entry, CHECKPOINT_KEYS, where)
    if "path" not in entry:
        raise LauncherError(f"{where} has no 'path'; give the pretraining checkpoint file")
    if entry["path"] == RANDOM_INIT:
        return {"path": None, "encoder": None, "like": entry.get("like")}
    if entry.get("like"):
        raise LauncherError(f"{where}: 'like' is for a '{RANDOM_INIT}' entry only; remove it")
    return {"path": _existing_path(entry["path"], where), "encoder": entry.get("encoder")}


def _check_like(checkpoints):
    for name, entry in checkpoints.items():
        like = entry.get("like")
        if like and (like not in checkpoints or checkpoints[like]["path"] is None):
            with_files = sorted(n for n, e in checkpoints.items() if e["path"] is not None)
            raise LauncherError(
                f"checkpoints.{name}.like is {like!r}, not a checkpoint with a file: name one of "
                f"{with_files}"
            )


def architecture_source(checkpoints, name):
    """The checkpoint whose network a random-init entry builds: its ``like``, else the sweep's
    first checkpoint with a file (None: the task config's own network)."""
    entry = checkpoints[name]
    if entry["path"] is not None or entry.get(classification.RAW_PIXELS):
        return None
    with_files = [other for other, e in checkpoints.items() if e["path"] is not None]
    return entry.get("like") or (with_files[0] if with_files else None)


def _task_entries(name, entry):
    """``{name: resolved task}``; a classification suite resolves to one task per domain."""
    if classification.is_classification(entry):
        return classification.task_entries(name, entry)
    return {name: _task_entry(name, entry)}


def _task_entry(name, entry):
    where = f"tasks.{name}"
    if not isinstance(entry, dict) or "config" not in entry:
        raise LauncherError(f"{where} must be a mapping with a 'config' (Detectron2 YAML)")
    _check_keys(entry, TASK_KEYS, where)
    return {
        "config": _existing_path(entry["config"], where),
        "opts": _opts_list(entry.get("opts"), f"{where}.opts"),
    }


def _check_names(names, where):
    for name in names:
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise LauncherError(f"{where} name {name!r} must be a plain folder name")


def _check_resource_types(resources):
    defaults = Resources()
    for key, value in resources.items():
        default = getattr(defaults, key)
        expected = (
            (int, float) if key == "mem_gb" else type(default) if default is not None else str
        )
        if value is not None and (not isinstance(value, expected) or isinstance(value, bool)):
            kind = "a number" if key == "mem_gb" else f"of type {expected.__name__}"
            raise LauncherError(f"resources.{key} is {value!r}; it must be {kind}")


def load_sweep(path):
    """Read and validate a sweep file; paths come back absolute, checked to exist."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as error:
        raise LauncherError(f"sweep file {path} does not exist") from error
    except yaml.YAMLError as error:
        raise LauncherError(
            f"sweep file {path} is not valid YAML: {error}".splitlines()[0]
        ) from error
    if not isinstance(raw, dict):
        raise LauncherError(f"sweep file {path} must be a mapping with checkpoints, tasks, seeds")
    _check_keys(raw, SWEEP_KEYS, f"sweep file {path}")
    checkpoints = _require_mapping(raw.get("checkpoints"), "checkpoints")
    tasks = _require_mapping(raw.get("tasks"), "tasks")
    _check_names(checkpoints, "checkpoint")
    _check_names(tasks, "task")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(type(s) is int for s in seeds):
        raise LauncherError("seeds must be a non-empty list of integers, e.g. [0, 1, 2]")
    if len(set(seeds)) != len(seeds):
        raise LauncherError(f"seeds {seeds} repeat a value; list each seed once")
    baseline = raw.get("baseline")
    if baseline is not None and baseline not in checkpoints:
        raise LauncherError(
            f"baseline {baseline!r} is not one of the checkpoints {sorted(checkpoints)}; name "
            f"one of them (e.g. a '{RANDOM_INIT}' entry for random init)"
        )
    resources = raw.get("resources") or {}
    _check_keys(resources, Resources.field_names(), "resources")
    _check_resource_types(resources)
    checkpoints = {name: _checkpoint_entry(name, e) for name, e in checkpoints.items()}
    _check_like(checkpoints)
    tasks = {key: task for name, e in tasks.items() for key, task in _task_entries(name, e).items()}
    classification.check_checkpoints(checkpoints, tasks)
    return {
        "checkpoints": checkpoints,
        "tasks": tasks,
        "seeds": seeds,
        "opts": _opts_list(raw.get("opts"), "opts"),
        "output_dir": str(Path(raw.get("output_dir") or f"runs/sweeps/{path.stem}").resolve()),
        "resources": resources,
        "datasets": _dataset_specs(raw.get("datasets")),
        "baseline": baseline,
    }


def planned_runs(spec):
    return [
        Run(checkpoint, task, seed)
        for checkpoint in spec["checkpoints"]
        for task in spec["tasks"]
        for seed in spec["seeds"]
    ]


def weights_path(sweep_dir, checkpoint):
    return Path(sweep_dir) / "weights" / f"{checkpoint}.pkl"


def is_finished(run, sweep_dir):
    return (run.directory(sweep_dir) / RESULTS_FILE).is_file()


def queued_job_ids():
    """Ids of jobs Slurm still holds (pending or running), to avoid submitting a run twice."""
    try:
        listing = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        # without the queue, a rerun could submit a second copy of a running run
        raise LauncherError(
            f"cannot list Slurm's queue (squeue: {error}); check that slurmctld runs, then "
            "rerun: runs still queued or running are never submitted twice"
        ) from error
    return {line.strip() for line in listing.splitlines() if line.strip()}


def is_in_flight(run, sweep_dir, queued_ids):
    record = run.directory(sweep_dir) / JOB_FILE
    if not record.is_file():
        return False
    return json.loads(record.read_text()).get("job_id") in queued_ids


def convert_checkpoints(conversions):
    """Convert each (checkpoint entry, output) pair not converted yet; runs on the cluster
    as the array's dependency, or in-process for local runs."""
    import transfer  # noqa: F401  (registers Detectron2's _C fallback before any use)
    from transfer.weights import ConversionError, convert

    reports = {}
    for entry, out in conversions:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            reports[str(out)] = convert(entry["path"], out, encoder=entry["encoder"])
        except ConversionError as error:
            raise LauncherError(f"cannot convert {entry['path']}: {error}") from error
    return reports


def pending_conversions(spec, sweep_dir, runs):
    # classification tasks read the checkpoint itself: only Detectron2 tasks need weights
    detection = [r for r in runs if not classification.is_classification(spec["tasks"][r.task])]
    # a random-init run reads the architecture from the converted weights' .json of its source
    needed = {r.checkpoint for r in detection} | {
        architecture_source(spec["checkpoints"], r.checkpoint) for r in detection
    }
    return [
        (spec["checkpoints"][name], str(weights_path(sweep_dir, name)))
        for name in spec["checkpoints"]
        if name in needed
        and spec["checkpoints"][name]["path"] is not None
        and not (
            weights_path(sweep_dir, name).is_file()
            and weights_path(sweep_dir, name).with_suffix(".json").is_file()
        )
    ]


def run_opts(spec, run, sweep_dir):
    """A run's Detectron2 opts: the task's, the sweep's, then the run's own weights, output
    folder and seed, which always win. (transfer.engine applies the converter's keys from the
    weights' .json itself, at run time: the conversion may still be queued at submission; a
    random-init run takes them from its architecture source's, RINGNCE.ARCHITECTURE_FROM.)"""
    random_init = spec["checkpoints"][run.checkpoint]["path"] is None
    source = architecture_source(spec["checkpoints"], run.checkpoint)
    architecture = ["RINGNCE.ARCHITECTURE_FROM", str(weights_path(sweep_dir, source))]
    return [
        *spec["tasks"][run.task]["opts"],
        *spec["opts"],
        "MODEL.WEIGHTS",
        "" if random_init else str(weights_path(sweep_dir, run.checkpoint)),
        *(architecture if source else []),
        "OUTPUT_DIR",
        str(run.directory(sweep_dir)),
        "SEED",
        run.seed,
    ]


def job_arguments(spec, run, sweep_dir):
    """The job function's two arguments: a Detectron2 config and its opts, or a classification
    task and its run (launcher.jobs.TransferJob tells them apart)."""
    task = spec["tasks"][run.task]
    if classification.is_classification(task):
        return classification.job_arguments(spec, run, run.directory(sweep_dir))
    return task["config"], run_opts(spec, run, sweep_dir)


def _write_job_record(run, sweep_dir, job, dependency=None):
    directory = run.directory(sweep_dir)
    directory.mkdir(parents=True, exist_ok=True)
    record = {"run": run.label, **job_record(job)}
    if dependency is not None:
        record["depends_on"] = job_record(dependency)
    # a resubmitted run keeps its earlier jobs: the leaderboard counts all its attempts
    previous = directory / JOB_FILE
    if previous.is_file():
        earlier = json.loads(previous.read_text())
        record["earlier"] = [*earlier.pop("earlier", []), earlier]
    (directory / JOB_FILE).write_text(json.dumps(record, indent=2) + "\n")


def write_spec(spec, sweep_dir):
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    (Path(sweep_dir) / SPEC_FILE).write_text(yaml.safe_dump(spec, sort_keys=False))


def read_spec(sweep_dir):
    path = Path(sweep_dir) / SPEC_FILE
    if not path.is_file():
        raise LauncherError(
            f"{sweep_dir} is not a sweep directory (no {SPEC_FILE}); pass the output_dir of a "
            "submitted sweep"
        )
    return yaml.safe_load(path.read_text())


def submit_sweep(spec, cluster, resources, sweep_dir=None, log_root=None):
    """Convert the checkpoints once, then submit every unfinished run as one job array.

    Returns ``(skipped_runs, [(run, job), ...])``. On Slurm the conversion is a job the array
    depends on (``afterok``; the array is dropped if it fails); locally it runs first, here.
    """
    sweep_dir = Path(sweep_dir or spec["output_dir"])
    runs = planned_runs(spec)
    queued = queued_job_ids() if cluster == "slurm" else set()
    todo = [
        r for r in runs if not is_finished(r, sweep_dir) and not is_in_flight(r, sweep_dir, queued)
    ]
    skipped = [r for r in runs if r not in todo]
    write_spec({**spec, "output_dir": str(sweep_dir)}, sweep_dir)
    if not todo:
        return skipped, []
    logs = unique_log_folder(log_root or sweep_dir / "logs", "sweep")
    conversions = pending_conversions(spec, sweep_dir, todo)
    conversion_job = None
    if conversions and cluster == "slurm":
        conversion_job = _submit_conversion(conversions, logs / "convert", resources)
    elif conversions:
        convert_checkpoints(conversions)
    executor = make_executor(cluster, logs / "runs", resources)
    if conversion_job is not None:
        executor.update_parameters(
            slurm_additional_parameters={
                "dependency": f"afterok:{conversion_job.job_id}",
                "kill_on_invalid_dep": "yes",
            }
        )
    job_function = TransferJob(num_gpus=max(1, resources.gpus_per_node), datasets=spec["datasets"])
    # local jobs all start at once: waves of array_parallelism keep the machine usable
    wave = max(1, resources.array_parallelism) if cluster == "local" else len(todo)
    submitted = []
    for start in range(0, len(todo), wave):
        chunk = todo[start : start + wave]
        arguments = [job_arguments(spec, run, sweep_dir) for run in chunk]
        jobs = map_array(
            executor, resources, job_function, *(list(column) for column in zip(*arguments))
        )
        for run, job in zip(chunk, jobs):
            _write_job_record(run, sweep_dir, job, conversion_job)
        submitted.extend(zip(chunk, jobs))
        if cluster == "local":
            for job in jobs:
                job.wait()
    return skipped, submitted


def _submit_conversion(conversions, folder, resources):
    convert_resources = Resources(
        **{**resources.__dict__, "job_name": f"{resources.job_name}-convert", "gpus_per_node": 0}
    )
    executor = make_executor("slurm", folder, convert_resources)
    return submit(executor, convert_resources, convert_checkpoints, conversions)
