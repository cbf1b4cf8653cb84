"""Classification tasks in a sweep file, beside the Detectron2 ones (launcher.sweep dispatches
here by the task's keys; the job function by the arguments' kind).

A classification task names a dataset and a protocol (transfer.classification)::

    tasks:
      glyphs_linear: {dataset: glyphs, protocol: linear}
      glyphs_5w1s:   {dataset: glyphs, protocol: {name: fewshot, ways: 5, shots: 1}}
      md_5shot:      {dataset: configs/classification/meta_dataset.yaml, protocol: fewshot}

A suite (a dataset with ``domains``) becomes one task per domain, named ``<task>.<domain>``.
Checkpoints are read as they are (no Detectron2 conversion); ``random`` is a random-init
backbone of the network of another checkpoint (its ``like``, else the first with a file, as for
Detectron2 tasks), ``pixels`` the raw-pixel floor (for classification tasks only). Features are
cached under the project cache and shared by every protocol and seed.
"""

from launcher.errors import LauncherError
from pretrain.errors import RingNCEError

TASK_KEYS = ("dataset", "protocol")
KIND = "classification"
RANDOM_INIT, RAW_PIXELS = "random", "pixels"


def is_classification(task):
    """A sweep task entry (raw or resolved) that names a dataset or a protocol."""
    return isinstance(task, dict) and (
        task.get("kind") == KIND or any(key in task for key in TASK_KEYS)
    )


def _check_entry(name, entry):
    from transfer.classification.errors import ClassificationError, check_keys

    check_keys(entry, TASK_KEYS, f"tasks.{name}")
    for key, example in (("dataset", "a folder or glyphs"), ("protocol", "linear")):
        if key not in entry:
            raise ClassificationError(f"tasks.{name} has no {key}; add e.g. {key}: {example}")


def task_entries(name, entry):
    """``{task name: resolved task}``: one task, or one per domain of a suite; every dataset is
    listed and checked now, before anything is queued."""
    from transfer.classification.datasets import resolve_datasets
    from transfer.classification.protocols import parse_protocol
    from transfer.classification.run import check_task

    try:
        _check_entry(name, entry)
        protocol = parse_protocol(entry["protocol"], f"tasks.{name}.protocol")
        tasks = {}
        for domain, dataset in resolve_datasets(entry["dataset"], f"tasks.{name}.dataset").items():
            task = {"kind": KIND, "dataset": dataset, "protocol": protocol}
            check_task(task)
            tasks[name if domain is None else f"{name}.{domain}"] = task
    except RingNCEError as error:
        raise LauncherError(str(error)) from None
    return tasks


def check_checkpoints(checkpoints, tasks):
    """The raw-pixel floor has no Detectron2 meaning; refuse it beside a Detectron2 task."""
    detection = [name for name, task in tasks.items() if not is_classification(task)]
    pixels = [name for name, entry in checkpoints.items() if entry.get(RAW_PIXELS)]
    if pixels and detection:
        raise LauncherError(
            f"checkpoint '{pixels[0]}' is the raw-pixel floor, which only classification tasks "
            f"have, but task '{detection[0]}' is a Detectron2 task; put them in separate sweeps"
        )


def like_entry(checkpoints, entry):
    """The checkpoint whose network and input pipeline ``random`` and ``pixels`` copy: the
    entry's ``like`` (launcher.sweep), else the sweep's first checkpoint with a file."""
    if entry["path"] is not None:
        return None
    with_files = [other for other in checkpoints.values() if other["path"] is not None]
    if entry.get("like"):
        return checkpoints[entry["like"]]
    return with_files[0] if with_files else None


def feature_cache():
    from transfer.fixtures import cache_dir

    return str((cache_dir() / "classification" / "features").resolve())


def job_arguments(spec, run, directory):
    """``(task, run)`` for ``launcher.jobs.TransferJob``: the resolved task and what the run
    needs to build its encoder and write its results."""
    entry = spec["checkpoints"][run.checkpoint]
    kind = RAW_PIXELS if entry.get(RAW_PIXELS) else RANDOM_INIT if entry["path"] is None else "file"
    return spec["tasks"][run.task], {
        "checkpoint": run.checkpoint,
        "kind": kind,
        "entry": entry,
        "like": like_entry(spec["checkpoints"], entry),
        "seed": run.seed,
        "output_dir": str(directory),
        "feature_cache": feature_cache(),
    }


def run_job(task, run):
    from transfer.classification.run import run_classification

    return run_classification(task, run)
