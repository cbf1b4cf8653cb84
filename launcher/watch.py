"""Continuous evaluation of a running pretraining: ``tools/submit.py watch RUN_DIR --sweep FILE``.

Each checkpoint ``RUN_DIR/checkpoints/epoch_NNNN.pth`` the pretraining writes becomes a
checkpoint ``epoch_NNNN`` of the sweep: its tasks x seeds go as one job array as soon as the file
is there (the sweep file's own checkpoints, references such as ``scratch: random``, go with the
first). ``SWEEP_DIR/watch.json`` records each
checkpoint submitted, so a checkpoint is submitted at most once, across restarts of the watch
too (a checkpoint whose runs already have a ``job.json`` counts as submitted: the watch died
between the submission and the record). The watch stops when the pretraining's
``metrics.json`` says it finished and every run of every checkpoint has results or has left the
queue; it then writes the leaderboard, with ``results_by_epoch.png``: each metric against the
pretraining epoch, the mean and its 95% CI band over seeds.
"""

import json
import re
import time
from pathlib import Path

from launcher.collect import leaderboard, write_reports
from launcher.report import pyplot, save_png
from launcher.sweep import JOB_FILE, planned_runs, queued_job_ids, submit_sweep, write_spec
from pretrain.atomic_write import write_json_atomic

STATE_FILE = "watch.json"
CHECKPOINT = re.compile(r"epoch_(\d+)\.pth")


def written_checkpoints(run_dir):
    """{name: path} of the pretraining's epoch checkpoints on disk, in epoch order (a file is
    complete once named: the trainer writes it under a temporary name and renames it)."""
    found = {}
    for path in sorted((Path(run_dir) / "checkpoints").glob("epoch_*.pth")):
        if CHECKPOINT.fullmatch(path.name):
            found[path.stem] = str(path.resolve())
    return found


def pretraining_finished(run_dir):
    try:
        return bool(json.loads((Path(run_dir) / "metrics.json").read_text()).get("finished"))
    except (OSError, ValueError):
        return False


def read_state(sweep_dir):
    path = Path(sweep_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {"submitted": {}}


def _already_submitted(spec, sweep_dir):
    return any((run.directory(sweep_dir) / JOB_FILE).is_file() for run in planned_runs(spec))


def submit_new(run_dir, spec, cluster, resources, sweep_dir):
    """Submit the runs of every checkpoint not submitted yet and return the names submitted:
    the sweep file's own checkpoints (references, e.g. ``scratch: random``) go with the first."""
    state = read_state(sweep_dir)
    written = written_checkpoints(run_dir)
    new = []
    for name in [name for name in written if name not in state["submitted"]]:
        batch = {name: {"path": written[name], "encoder": None}}
        if not state["submitted"]:
            batch = {**spec["checkpoints"], **batch}
        one = {**spec, "checkpoints": batch}
        if not _already_submitted(one, sweep_dir):
            submit_sweep(one, cluster, resources, sweep_dir)
        state["submitted"].update(batch)
        new += list(batch)
        write_json_atomic(Path(sweep_dir) / STATE_FILE, state)
    if state["submitted"]:  # the leaderboard reads every checkpoint so far from sweep.yaml
        cumulative = {**spec, "checkpoints": state["submitted"], "output_dir": str(sweep_dir)}
        write_spec(cumulative, sweep_dir)
    return new


def runs_settled(spec, sweep_dir, cluster):
    """Every run submitted so far has results, or its job has left the queue."""
    names = read_state(sweep_dir)["submitted"]
    queued = queued_job_ids() if cluster == "slurm" else set()
    for run in planned_runs({**spec, "checkpoints": names}):
        directory = run.directory(sweep_dir)
        record = directory / JOB_FILE
        if (directory / "results.json").is_file() or not record.is_file():
            continue
        if json.loads(record.read_text())["job_id"] in queued:
            return False
    return True


def watch(run_dir, spec, cluster, resources, sweep_dir, poll_s=60.0, say=print):
    """Follow the pretraining in ``run_dir`` until it finished and its last checkpoint's runs
    are done; returns the leaderboard's markdown."""
    sweep_dir = Path(sweep_dir)
    while True:
        finished = pretraining_finished(run_dir)  # read first: no checkpoint comes after it
        for name in submit_new(run_dir, spec, cluster, resources, sweep_dir):
            say(f"{name}: submitted {len(spec['tasks']) * len(spec['seeds'])} run(s)")
        if (
            finished
            and read_state(sweep_dir)["submitted"]
            and runs_settled(spec, sweep_dir, cluster)
        ):
            break
        time.sleep(poll_s)  # polling the run folder; nothing to wake on across hosts
    markdown, _ = write_reports(sweep_dir)
    write_epoch_chart(leaderboard([sweep_dir]), sweep_dir / "results_by_epoch.png")
    return markdown


def epoch_of(name):
    """The pretraining epoch of a watched checkpoint's name, None for a reference."""
    match = re.fullmatch(r"epoch_(\d+)", name)
    return int(match.group(1)) if match else None


def write_epoch_chart(board, path):
    """One panel per metric: the mean over seeds against the pretraining epoch with its 95% CI
    as a band; the sweep file's reference checkpoints as dashed lines."""
    plt = pyplot()
    rows = max(1, len(board.columns))
    figure, axes = plt.subplots(rows, 1, figsize=(6.0, 2.6 * rows), squeeze=False)
    for axis, column in zip(axes[:, 0], board.columns):
        cells = {name: ci for (name, key), ci in board.summaries.items() if key == column}
        curve = sorted((epoch_of(n), ci) for n, ci in cells.items() if epoch_of(n) is not None)
        axis.plot([e for e, _ in curve], [ci.mean for _, ci in curve], marker="o", label="watched")
        band = [(e, ci.low, ci.high) for e, ci in curve if ci.low is not None]
        if band:
            epochs, lows, highs = zip(*band)
            axis.fill_between(epochs, lows, highs, alpha=0.25, label="95% CI")
        for name, ci in cells.items():
            if epoch_of(name) is None:
                axis.axhline(ci.mean, linestyle="--", color="grey", label=name)
        axis.set_title(" ".join(column))
        axis.set_xlabel("pretraining epoch")
        axis.legend(fontsize="small")
    figure.tight_layout()
    save_png(figure, path)
