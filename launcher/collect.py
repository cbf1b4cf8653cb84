"""Gather one or more sweeps' results into one leaderboard (markdown, CSV, PNG), listing every
run that produced none, with the path of its log: a missing run is never silently dropped.

Rows are pretraining checkpoints; columns are ``task / group / metric`` (group: bbox, segm,
keypoints; metric: AP, AP50, AP75) holding the mean with its 95% Student-t interval over seeds
(launcher.stats, the same statistics as the negative-strategy study). With a baseline (a sweep's
``baseline:`` or ``--baseline``; random init is a ``random`` checkpoint entry, no file), a second
table holds each checkpoint's paired difference to it over the seeds both have.
"""

import csv
import json
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import LauncherError
from launcher.report import grouped_bars, interval_text, markdown_table, pyplot, save_png
from launcher.retry import read_attempts
from launcher.stats import MeanCI, mean_confidence_interval, paired_difference_ci
from launcher.sweep import JOB_FILE, RESULTS_FILE, Run, planned_runs, read_spec
from pretrain.atomic_write import atomic_write, write_text_atomic

DETECTION_GROUPS = ("bbox", "segm", "keypoints")
DETECTION_METRICS = ("AP", "AP50", "AP75")


@dataclass
class RunOutcome:
    run: Run
    results: dict | None = None
    problem: str = ""
    log: str = ""
    attempts: int = 0  # starts on Slurm, over every submission of the run (0: not on Slurm)
    retried_because: tuple = ()


CONFIDENCE = 0.95
# one NaN seed (a model that predicted nothing) makes a summary NaN, visibly, not dropped
UNDEFINED = MeanCI(mean=math.nan, half_width=None, n=0, confidence=CONFIDENCE)


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


def attempt_history(record):
    """(starts, retry reasons) over the job record and the earlier submissions it keeps."""
    starts, reasons = 0, []
    for job in [*(record or {}).get("earlier", []), record or {}]:
        if "result_pickle" not in job:
            continue
        events = read_attempts(Path(job["result_pickle"]).parent)
        starts += sum(event["event"] == "start" for event in events)
        reasons += [event["reason"] for event in events if event["event"] == "retry"]
    resubmitted = len((record or {}).get("earlier", []))
    if resubmitted:
        reasons.append(f"resubmitted {resubmitted} time(s) by rerunning the sweep")
    return starts, tuple(reasons)


def run_outcome(run, sweep_dir):
    directory = run.directory(sweep_dir)
    record = _read_json(directory / JOB_FILE)
    attempts, reasons = attempt_history(record)
    outcome = _outcome(run, directory, record)
    outcome.attempts, outcome.retried_because = attempts, reasons
    return outcome


def _outcome(run, directory, record):
    results = _read_json(directory / RESULTS_FILE)
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


def collect_many(sweep_dirs):
    """The merged spec (checkpoints, tasks, seeds and baseline in first-seen order) and every
    planned run's outcome over several sweeps. A run with results in two sweeps is an error:
    which one counts would otherwise be an accident of the argument order."""
    merged = {"checkpoints": {}, "tasks": {}, "seeds": [], "baseline": None}
    outcomes, seen = [], {}
    for sweep_dir in sweep_dirs:
        spec, found = collect(sweep_dir)
        for key in ("checkpoints", "tasks"):
            for name, entry in spec[key].items():
                merged[key].setdefault(name, entry)
        merged["seeds"] += [seed for seed in spec["seeds"] if seed not in merged["seeds"]]
        baseline = spec.get("baseline")
        if baseline and merged["baseline"] not in (None, baseline):
            raise LauncherError(
                f"{sweep_dir} names baseline {baseline!r} but an earlier sweep names "
                f"{merged['baseline']!r}; pass --baseline to choose one"
            )
        merged["baseline"] = merged["baseline"] or baseline
        for outcome in found:
            if outcome.results is not None and outcome.run in seen:
                raise LauncherError(
                    f"run {outcome.run.label} has results in both {seen[outcome.run]} and "
                    f"{sweep_dir}; collect one of them"
                )
            if outcome.results is not None:
                seen[outcome.run] = sweep_dir
            outcomes.append(outcome)
    return merged, outcomes


def shown_metrics(group, found):
    """Detectron2's groups show AP, AP50, AP75; any other group (a classification protocol)
    names its own under ``headline``."""
    names = DETECTION_METRICS if group in DETECTION_GROUPS else found.get("headline", ())
    return [metric for metric in names if metric in found]


def column_order(spec):
    tasks = list(spec["tasks"])

    def key(column):  # a stable sort: other groups and metrics keep their first-seen order
        task, group, metric = column
        if group not in DETECTION_GROUPS:
            return tasks.index(task), len(DETECTION_GROUPS), 0
        return tasks.index(task), DETECTION_GROUPS.index(group), DETECTION_METRICS.index(metric)

    return key


def scores_by_seed(spec, outcomes):
    """{(checkpoint, column): {seed: value}}, the same keys' per-sample values where a result
    has them ({seed: [..]}, few-shot episodes), and the columns any finished run has, in order."""
    scores, samples, present = {}, {}, {}
    for outcome in outcomes:
        if outcome.results is None:
            continue
        for group, found in outcome.results.items():
            if not isinstance(found, dict):
                continue
            for metric in shown_metrics(group, found):
                # Detectron2 reports NaN (null in JSON) when a model predicts nothing
                value = math.nan if found[metric] is None else float(found[metric])
                column = (outcome.run.task, group, metric)
                present[column] = None
                key, seed = (outcome.run.checkpoint, column), outcome.run.seed
                scores.setdefault(key, {})[seed] = value
                if metric in found.get("samples", {}):
                    samples.setdefault(key, {})[seed] = list(found["samples"][metric])
    return scores, samples, sorted(present, key=column_order(spec))


def pooled_interval(values):
    """Over samples (few-shot episodes of every seed): Ericsson et al.'s 1.96 * std / sqrt(n)."""
    from transfer.classification.fewshot import episode_interval

    mean, half_width = episode_interval(values)
    return MeanCI(mean=mean, half_width=half_width, n=len(values), confidence=CONFIDENCE)


def summary(by_seed, samples=None):
    if not by_seed:
        return None
    values = list(by_seed.values())
    if any(math.isnan(value) for value in values):
        return UNDEFINED
    if samples:
        return pooled_interval([value for seed in sorted(samples) for value in samples[seed]])
    return mean_confidence_interval(values, CONFIDENCE)


def difference(by_seed, baseline_by_seed, samples=None, baseline_samples=None):
    """Paired difference over the seeds both have (a seed only one side has is listed among
    the runs without results, so the comparison's n says it is partial); with per-sample
    values on both sides (the same episodes), paired sample by sample."""
    common = sorted(set(by_seed or {}) & set(baseline_by_seed or {}))
    treatment = {seed: by_seed[seed] for seed in common}
    control = {seed: baseline_by_seed[seed] for seed in common}
    if not common:
        return None
    if any(math.isnan(value) for value in [*treatment.values(), *control.values()]):
        return UNDEFINED
    mine, theirs = samples or {}, baseline_samples or {}
    if all(seed in mine and len(mine[seed]) == len(theirs.get(seed, ())) for seed in common):
        return pooled_interval([a - b for seed in common for a, b in zip(mine[seed], theirs[seed])])
    return paired_difference_ci(treatment, control, CONFIDENCE)


@dataclass
class Leaderboard:
    """Every (checkpoint, column) summary and, with a baseline, its paired difference."""

    spec: dict
    outcomes: list
    columns: list
    summaries: dict
    differences: dict
    baseline: str | None
    sampled: set = frozenset()  # columns summarised over samples (few-shot episodes)

    @property
    def missing(self):
        return [outcome for outcome in self.outcomes if outcome.results is None]


def leaderboard(sweep_dirs, baseline=None):
    spec, outcomes = collect_many(sweep_dirs)
    baseline = baseline or spec["baseline"]
    if baseline is not None and baseline not in spec["checkpoints"]:
        raise LauncherError(
            f"baseline {baseline!r} is not a checkpoint of the sweeps "
            f"({', '.join(spec['checkpoints'])}); name one of them"
        )
    scores, samples, columns = scores_by_seed(spec, outcomes)
    summaries = {key: summary(by_seed, samples.get(key)) for key, by_seed in scores.items()}
    differences = {}
    if baseline is not None:
        for checkpoint in spec["checkpoints"]:
            for column in columns:
                if checkpoint != baseline and (checkpoint, column) in scores:
                    differences[(checkpoint, column)] = difference(
                        scores[(checkpoint, column)],
                        scores.get((baseline, column)),
                        samples.get((checkpoint, column)),
                        samples.get((baseline, column)),
                    )
    sampled = {column for _, column in samples}
    return Leaderboard(spec, outcomes, columns, summaries, differences, baseline, sampled)


def column_title(column, single_task):
    task, group, metric = column
    return f"{group} {metric}" if single_task else f"{task} {group} {metric}"


def wide_table(board, cells, rows, signed=False):
    single_task = len(board.spec["tasks"]) == 1
    seeds = len(board.spec["seeds"])
    titles = [column_title(column, single_task) for column in board.columns]
    table_rows = [
        [checkpoint]
        + [
            interval_text(cells.get((checkpoint, c)), scale=1.0, digits=2, signed=signed,
                          planned=seeds, absent="-")
            for c in board.columns
        ]
        for checkpoint in rows
    ]  # fmt: skip
    return markdown_table(["pretraining", *titles], table_rows)


def markdown_report(board):
    finished = len(board.outcomes) - len(board.missing)
    checkpoints = list(board.spec["checkpoints"])
    lines = [
        f"# Transfer results ({finished}/{len(board.outcomes)} runs finished; mean ± "
        f"{CONFIDENCE:.0%} CI (Student t) over seeds {board.spec['seeds']})",
        "",
    ]
    if board.sampled:
        lines += [
            "Few-shot columns: mean ± 1.96·σ/√n over every episode of every seed (Ericsson et "
            "al.), differences paired episode by episode.",
            "",
        ]
    if not board.columns:
        lines.append("No run has finished yet.")
    else:
        lines += wide_table(board, board.summaries, checkpoints)
    if board.baseline is not None and board.columns:
        lines += [
            "",
            f"## Paired difference to {board.baseline} (points, mean ± {CONFIDENCE:.0%} CI "
            "over the seeds both have)",
            "",
        ]
        others = [name for name in checkpoints if name != board.baseline]
        lines += wide_table(board, board.differences, others, signed=True)
    if board.missing:
        lines += ["", f"## Runs without results ({len(board.missing)})", ""]
        rows = [[o.run.label, o.problem, o.log] for o in board.missing]
        lines += markdown_table(["run", "problem", "log"], rows)
    lines += attempts_section(board.outcomes)
    return "\n".join(lines) + "\n"


def attempts_section(outcomes):
    """The runs Slurm started more than once (requeues and resubmissions), each listed once."""
    repeated = [o for o in outcomes if o.attempts > 1]
    if not repeated:
        return []
    rows = [
        [o.run.label, o.attempts, "; ".join(o.retried_because) or "requeued by Slurm or submitit"]
        for o in repeated
    ]
    header = f"## Runs started more than once ({len(repeated)}; each counted once above)"
    return ["", header, "", *markdown_table(["run", "attempts", "why"], rows)]


def interval_fields(ci):
    """mean, CI low, CI high, n for the CSV (empty when there is no value or no interval)."""
    if ci is None:
        return ["", "", "", 0]
    low = "" if ci.low is None else ci.low
    high = "" if ci.high is None else ci.high
    return [ci.mean, low, high, ci.n]


def write_csv(board, path):
    """One row per checkpoint x task x metric (long format: easy to filter and plot)."""
    header = ["checkpoint", "task", "group", "metric", "mean", "ci_low", "ci_high", "n"]
    header += ["baseline", "diff_mean", "diff_ci_low", "diff_ci_high", "diff_n"]
    rows = [header]
    for checkpoint in board.spec["checkpoints"]:
        for column in board.columns:
            if (checkpoint, column) not in board.summaries:
                continue
            row = [checkpoint, *column, *interval_fields(board.summaries[(checkpoint, column)])]
            if (checkpoint, column) in board.differences:
                row += [
                    board.baseline,
                    *interval_fields(board.differences[(checkpoint, column)]),
                ]
            rows.append(row)
    atomic_write(path, lambda handle: csv.writer(handle).writerows(rows))


def bars(axes, board, cells, rows, ylabel):
    series = {name: [cells.get((name, c)) for c in board.columns] for name in rows}
    single_task = len(board.spec["tasks"]) == 1
    grouped_bars(axes, [column_title(c, single_task) for c in board.columns], series)
    axes.set_xticklabels(axes.get_xticklabels(), rotation=30, ha="right")
    axes.set_ylabel(ylabel)
    axes.legend(title="pretraining")


def write_chart(board, path):
    """Grouped bars with 95% CIs; with a baseline, a second panel of paired differences."""
    plt = pyplot()
    panels = 2 if board.differences else 1
    width = max(6.0, 1.1 * len(board.columns) + 2)
    figure, axes = plt.subplots(panels, 1, figsize=(width, 4.0 * panels), squeeze=False)
    checkpoints = list(board.spec["checkpoints"])
    bars(axes[0][0], board, board.summaries, checkpoints, f"AP / % (mean ± {CONFIDENCE:.0%} CI)")
    if board.differences:
        others = [name for name in checkpoints if name != board.baseline]
        bars(axes[1][0], board, board.differences, others, f"− {board.baseline} (paired)")
        axes[1][0].axhline(0.0, color="black", linewidth=0.8)
    figure.tight_layout()
    save_png(figure, path)


def write_reports(sweep_dirs, baseline=None, output_dir=None):
    """Write results.md, results.csv and results.png in ``output_dir`` (default: the one sweep
    folder); return the markdown and the runs without results."""
    sweep_dirs = [sweep_dirs] if isinstance(sweep_dirs, (str, Path)) else list(sweep_dirs)
    if output_dir is None and len(sweep_dirs) != 1:
        raise LauncherError("several sweep folders need --output DIR for the leaderboard")
    output_dir = Path(output_dir or sweep_dirs[0])
    output_dir.mkdir(parents=True, exist_ok=True)
    board = leaderboard(sweep_dirs, baseline)
    markdown = markdown_report(board)
    write_text_atomic(output_dir / "results.md", markdown)
    write_csv(board, output_dir / "results.csv")
    write_chart(board, output_dir / "results.png")
    return markdown, board.missing
