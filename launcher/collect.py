"""Gather a sweep's results into one table (markdown, CSV, PNG), listing every run that
produced none, with the path of its log: a missing run is never silently dropped.

Rows are pretraining checkpoints; columns are ``task / group / metric`` (group: bbox, segm,
keypoints; metric: AP, AP50, AP75) holding mean ± sample standard deviation over seeds.
"""

import csv
import json
import math
import pickle
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from launcher.sweep import JOB_FILE, RESULTS_FILE, Run, planned_runs, read_spec

GROUPS = ("bbox", "segm", "keypoints")
METRICS = ("AP", "AP50", "AP75")


@dataclass
class RunOutcome:
    run: Run
    results: dict | None = None
    problem: str = ""
    log: str = ""


@dataclass
class Cell:
    values: list = field(default_factory=list)

    @property
    def undefined(self):
        # one NaN seed (a model that predicted nothing) makes the summary NaN, visibly
        return not self.values or any(math.isnan(value) for value in self.values)

    @property
    def mean(self):
        return math.nan if self.undefined else statistics.fmean(self.values)

    @property
    def std(self):
        return math.nan if self.undefined or len(self.values) < 2 else statistics.stdev(self.values)


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _job_error(record):
    """The last line of the traceback submitit saved for a failed job, if it saved one."""
    path = Path(record.get("result_pickle", ""))
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as handle:
            outcome, payload = pickle.load(handle)
    except Exception:  # a truncated pickle says as much as a missing one
        return None
    if outcome != "error":
        return None
    lines = [line for line in str(payload).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "failed without a message"


def run_outcome(run, sweep_dir):
    directory = run.directory(sweep_dir)
    results = _read_json(directory / RESULTS_FILE)
    record = _read_json(directory / JOB_FILE)
    if results is not None:
        return RunOutcome(run, results=results)
    if record is None:
        return RunOutcome(run, problem="never submitted", log="-")
    log = record.get("stdout", "-")
    dependency = record.get("depends_on")
    conversion_error = _job_error(dependency) if dependency else None
    if conversion_error:
        return RunOutcome(
            run,
            problem=f"checkpoint conversion failed: {conversion_error}",
            log=dependency["stdout"],
        )
    error = _job_error(record)
    if error:
        return RunOutcome(run, problem=f"failed: {error}", log=log)
    return RunOutcome(
        run,
        problem=f"no {RESULTS_FILE} (job {record.get('job_id')} queued, running or killed)",
        log=log,
    )


def collect(sweep_dir):
    """Every planned run's outcome, in the sweep's order."""
    spec = read_spec(sweep_dir)
    return spec, [run_outcome(run, sweep_dir) for run in planned_runs(spec)]


def table_cells(spec, outcomes):
    """{(checkpoint, column): Cell} and the columns any finished run has, in a fixed order."""
    cells, present = {}, set()
    for outcome in outcomes:
        if outcome.results is None:
            continue
        for group in GROUPS:
            for metric in METRICS:
                scores = outcome.results.get(group)
                if not isinstance(scores, dict) or metric not in scores:
                    continue
                # Detectron2 reports NaN (null in JSON) when a model predicts nothing: shown
                # as nan, which is what it is, rather than dropped
                value = math.nan if scores[metric] is None else float(scores[metric])
                column = (outcome.run.task, group, metric)
                present.add(column)
                cells.setdefault((outcome.run.checkpoint, column), Cell()).values.append(value)
    columns = [
        (task, group, metric)
        for task in spec["tasks"]
        for group in GROUPS
        for metric in METRICS
        if (task, group, metric) in present
    ]
    return cells, columns


def column_title(column, single_task):
    task, group, metric = column
    return f"{group} {metric}" if single_task else f"{task} {group} {metric}"


def format_cell(cell, seeds_planned):
    if cell is None or not cell.values:
        return "-"
    text = f"{cell.mean:.2f}"
    if len(cell.values) > 1 and not cell.undefined:
        text += f" ± {cell.std:.2f}"
    if len(cell.values) < seeds_planned:
        text += f" ({len(cell.values)}/{seeds_planned} seeds)"
    return text


def markdown_report(spec, outcomes):
    cells, columns = table_cells(spec, outcomes)
    single_task = len(spec["tasks"]) == 1
    seeds = len(spec["seeds"])
    finished = sum(outcome.results is not None for outcome in outcomes)
    lines = [
        f"# Transfer results ({finished}/{len(outcomes)} runs finished; "
        f"mean ± std over seeds {spec['seeds']})",
        "",
    ]
    if columns:
        lines.append(
            "| pretraining | " + " | ".join(column_title(c, single_task) for c in columns) + " |"
        )
        lines.append("|---" * (len(columns) + 1) + "|")
        for checkpoint in spec["checkpoints"]:
            row = [format_cell(cells.get((checkpoint, c)), seeds) for c in columns]
            lines.append(f"| {checkpoint} | " + " | ".join(row) + " |")
    else:
        lines.append("No run has finished yet.")
    problems = [outcome for outcome in outcomes if outcome.results is None]
    if problems:
        lines += ["", f"## Runs without results ({len(problems)})", "", "| run | problem | log |"]
        lines.append("|---|---|---|")
        lines += [f"| {o.run.label} | {o.problem} | {o.log} |" for o in problems]
    return "\n".join(lines) + "\n"


def write_csv(spec, outcomes, path):
    cells, columns = table_cells(spec, outcomes)
    header = ["pretraining"]
    for task, group, metric in columns:
        name = f"{task}/{group}/{metric}"
        header += [f"{name} mean", f"{name} std", f"{name} n"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for checkpoint in spec["checkpoints"]:
            row = [checkpoint]
            for column in columns:
                cell = cells.get((checkpoint, column)) or Cell()
                row += [cell.mean, cell.std, len(cell.values)]
            writer.writerow(row)


def write_chart(spec, outcomes, path):
    """Grouped bars: one group per column, one bar per pretraining, std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells, columns = table_cells(spec, outcomes)
    single_task = len(spec["tasks"]) == 1
    checkpoints = list(spec["checkpoints"])
    figure, axes = plt.subplots(figsize=(max(6.0, 1.1 * len(columns) + 2), 4.0))
    width = 0.8 / max(1, len(checkpoints))
    for index, checkpoint in enumerate(checkpoints):
        found = [cells.get((checkpoint, c)) or Cell() for c in columns]
        axes.bar(
            [position + index * width for position in range(len(columns))],
            [cell.mean for cell in found],
            width,
            yerr=[0.0 if math.isnan(cell.std) else cell.std for cell in found],
            capsize=3,
            label=checkpoint,
        )
    axes.set_xticks([p + 0.4 - width / 2 for p in range(len(columns))])
    axes.set_xticklabels([column_title(c, single_task) for c in columns], rotation=30, ha="right")
    axes.set_ylabel("AP (mean ± std over seeds)")
    axes.legend(title="pretraining")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_reports(sweep_dir):
    """Write results.md, results.csv and results.png in ``sweep_dir``; return the markdown
    and the runs without results."""
    sweep_dir = Path(sweep_dir)
    spec, outcomes = collect(sweep_dir)
    markdown = markdown_report(spec, outcomes)
    (sweep_dir / "results.md").write_text(markdown)
    write_csv(spec, outcomes, sweep_dir / "results.csv")
    write_chart(spec, outcomes, sweep_dir / "results.png")
    return markdown, [outcome for outcome in outcomes if outcome.results is None]
