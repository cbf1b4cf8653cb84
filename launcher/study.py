"""The Ring-vs-uniform study: plan the runs, run them, summarise with confidence intervals.

Each method has a pair of configs, `uniform_<method>_<dataset>.yaml` and
`ring_<method>_<dataset>.yaml`. Before anything trains, every pair is resolved with the study's
common overrides and the seed, and refused unless the two differ only in `sampler.*`: steps,
batch, augmentations, schedule and data order (seeded) are then identical by construction.
Results are compared per seed (paired), which is why one failed run removes its seed from that
method's difference instead of being averaged over silently. Each table of differences is one
family of tests: its verdicts are Holm-Bonferroni corrected (family-wise error 1 - confidence).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import submitit

from launcher.errors import LauncherError
from launcher.report import grouped_bars, interval_text, markdown_table, pyplot, save_png
from launcher.stats import (
    MeanCI,
    StatsError,
    holm_adjusted,
    mean_confidence_interval,
    paired_difference_ci,
)
from launcher.study_presets import load_preset
from pretrain.atomic_write import write_text_atomic
from pretrain.errors import PretrainError


def arm_strategy(arm: str) -> str:
    """An arm is a negative strategy (sampler.name), optionally a variant after a dash
    (ring-anneal); uniform is the reference every other arm is paired against."""
    return arm.split("-", 1)[0]


# (key in eval.json, label in tables); the first is the headline metric.
METRICS = (
    ("linear_top1", "linear top-1"),
    ("knn20_top1", "kNN k=20 top-1"),
    ("knn200_top1", "kNN k=200 top-1"),
    ("linear_top5", "linear top-5"),
)


class StudyError(LauncherError):
    """The study cannot be planned or summarised (no runs, unknown method, no results)."""


@dataclass(frozen=True)
class RunSpec:
    method: str
    sampler: str
    seed: int
    config: str
    overrides: tuple[str, ...]
    output_dir: str

    @property
    def name(self) -> str:
        return f"{self.method}_{self.sampler}_s{self.seed}"


@dataclass
class RunRecord:
    """One run's outcome: its metrics, or the one-line reason it has none."""

    method: str
    sampler: str
    seed: int
    output_dir: str
    metrics: dict = field(default_factory=dict)
    error: str | None = None


# ---------------------------------------------------------------- planning and running


def shown_path(path) -> str:
    """A path under the current directory as a relative one: committed reports name no machine."""
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def config_pairs(
    config_dir: str | Path, dataset: str, methods: Sequence[str], arms: Sequence[str]
) -> dict:
    """{method: {arm: path}} from the `<arm>_<method>_<dataset>.yaml` naming.

    An arm written `method:arm` applies to that method only (`moco:mochi`).
    """
    pairs = {}
    for method in methods:
        pairs[method] = {}
        mine = [a.split(":", 1)[-1] for a in arms if ":" not in a or a.startswith(f"{method}:")]
        for sampler in mine:
            path = Path(config_dir) / f"{sampler}_{method}_{dataset}.yaml"
            if not path.is_file():
                raise StudyError(
                    f"no config for {method} with {sampler} negatives on {dataset}: expected "
                    f"{path}; check --methods/--dataset or --config-dir"
                )
            pairs[method][sampler] = str(path)
    return pairs


def differing_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    keys = []
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += differing_keys(va, vb, f"{path}.")
        elif va != vb:
            keys.append(path)
    return keys


# Keys allowed to differ between the uniform and ring run of one method and seed.
ALLOWED_DIFFERENCES = ("sampler.", "output_dir")


def check_same_budget(method: str, uniform_cfg: dict, ring_cfg: dict) -> None:
    """Refuse a comparison where anything but the sampler differs (steps, batch, augmentation)."""
    unfair = [
        k for k in differing_keys(uniform_cfg, ring_cfg) if not k.startswith(ALLOWED_DIFFERENCES)
    ]
    if unfair:
        raise StudyError(
            f"{method}: the uniform and ring configs differ in {', '.join(unfair)}; an unfair "
            "comparison: make them equal in the configs or with a common override"
        )


def plan_runs(
    configs: dict[str, dict[str, str]],
    seeds: Sequence[int],
    output_root: str | Path,
    common_overrides: Sequence[str] = (),
) -> list[RunSpec]:
    """Every method x sampler x seed; within a (method, seed) only the sampler differs.

    Seed-major order: a study stopped early still has every method at the same seeds.
    """
    if not configs:
        raise StudyError("no methods to compare: pass at least one method")
    if not seeds:
        raise StudyError("no seeds: pass at least one seed (3 give a usable interval)")
    specs = []
    for seed in seeds:
        for method, by_sampler in configs.items():
            for sampler in by_sampler:
                out = str(Path(output_root) / f"{method}_{sampler}_s{seed}")
                overrides = (*common_overrides, f"seed={seed}", f"output_dir={out}", "resume=auto")
                specs.append(RunSpec(method, sampler, seed, by_sampler[sampler], overrides, out))
    return specs


def freeze_config(spec: RunSpec, resolved) -> RunSpec:
    """The spec pointing at its resolved config, saved in its run folder."""
    from pretrain.config import save_config

    path = Path(spec.output_dir) / "study_config.yaml"
    save_config(resolved, path)
    return replace(spec, config=str(path), overrides=())


def check_plan(specs: Sequence[RunSpec], load: Callable[[str, Sequence[str]], dict]) -> None:
    """Resolve every config before any training: typos and unfair pairs fail in seconds."""
    resolved = {(s.method, s.seed, s.sampler): load(s.config, s.overrides) for s in specs}
    for (method, seed, sampler), cfg in resolved.items():
        if sampler != "uniform":
            check_same_budget(method, resolved[(method, seed, "uniform")], cfg)
        if cfg["sampler"]["name"] != arm_strategy(sampler):
            raise StudyError(
                f"{method}: the {sampler} config sets sampler.name={cfg['sampler']['name']}"
            )


def eval_path(spec: RunSpec) -> Path:
    return Path(spec.output_dir) / "checkpoints" / "eval.json"


def finished_record(spec: RunSpec, reused: dict | None = None) -> RunRecord | None:
    """The record of a spec already evaluated (its eval.json exists), else the record of an
    earlier study that ``reused`` holds for its (method, arm, seed), else None."""
    done = eval_path(spec)
    if not done.is_file():
        return (reused or {}).get((spec.method, spec.sampler, spec.seed))
    metrics = {**json.loads(done.read_text())["metrics"], **training_scalars(spec)}
    return RunRecord(spec.method, spec.sampler, spec.seed, spec.output_dir, metrics)


def load_reused_records(path: str | Path | None) -> dict:
    """``{(method, arm, seed): RunRecord}`` from an earlier report's records.json, for runs whose
    folders are gone; whoever passes it vouches that their code path has not changed."""
    if path is None:
        return {}
    path = Path(path)
    try:
        rows = json.loads(path.read_text())
        records = [RunRecord(**row) for row in rows]
    except (OSError, ValueError, TypeError) as exc:
        raise StudyError(
            f"--reuse-records {path}: not a study's records.json ({exc}); pass the records.json "
            "an earlier report wrote"
        ) from None
    return {(r.method, r.sampler, r.seed): r for r in records if r.error is None}


# the machine sets the speed, and the epoch count is the budget, not a result
NOT_RESULTS = ("epoch", "global_step", "images_per_second", "rank")
TRAINING_PREFIX = "train/"


def training_scalars(spec: RunSpec) -> dict:
    """The last epoch's numeric scalars from the run's metrics.json (loss, and whatever the
    method and monitors report, e.g. negatives_per_anchor, false_negative_share), as
    ``train/<name>``; no name is special, so a new strategy's scalar shows up unasked."""
    path = Path(spec.output_dir) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    # a metrics.json written before the per-epoch history existed holds the last epoch itself
    last = metrics["history"][-1] if metrics.get("history") else metrics
    return {
        TRAINING_PREFIX + name: float(value)
        for name, value in last.items()
        if isinstance(value, (int, float))
        and not isinstance(value, bool)
        and name not in NOT_RESULTS
    }


def not_run_record(spec: RunSpec) -> RunRecord:
    return RunRecord(
        spec.method,
        spec.sampler,
        spec.seed,
        spec.output_dir,
        error="not run: the report was written (--report-only) before this run finished",
    )


def pretrain_and_evaluate(spec: RunSpec, eval_overrides: Sequence[str] = ()) -> dict:
    """Pretrain one spec (resuming if it was interrupted), evaluate its last checkpoint."""
    from pretrain.evaluation.linear_probe import evaluate_checkpoint
    from pretrain.trainer import load_pretrain_config, train

    train(load_pretrain_config(spec.config, spec.overrides))
    checkpoint = Path(spec.output_dir) / "checkpoints" / "last.pth"
    return {**evaluate_checkpoint(checkpoint, eval_overrides)["metrics"], **training_scalars(spec)}


def execute_runs(
    specs: Sequence[RunSpec],
    run_one: Callable[[RunSpec], dict],
    log: Callable[[str], None] = print,
    reused: dict | None = None,
) -> list[RunRecord]:
    """Run specs in order; a run that fails is recorded with its error and the rest continue.

    A spec whose eval.json exists is not rerun, so an interrupted study resumes where it
    stopped.
    """
    records = []
    for index, spec in enumerate(specs, 1):
        prefix = f"[{index}/{len(specs)}] {spec.name}"
        record = finished_record(spec, reused)
        if record is not None:
            where = eval_path(spec) if eval_path(spec).is_file() else "the reused records"
            log(f"{prefix}: already evaluated, reusing {where}")
        else:
            log(f"{prefix}: pretraining + evaluation")
            record = RunRecord(spec.method, spec.sampler, spec.seed, spec.output_dir)
            try:
                record.metrics = run_one(spec)
            except PretrainError as exc:  # the project's errors: keep going, report it
                record.error = str(exc)
                log(f"{prefix}: FAILED: {exc}")
        records.append(record)
    return records


class StudyRunJob(submitit.helpers.Checkpointable):
    """One study run as a submitit job: on preemption submitit resubmits the same call, which
    resumes pretraining from the run's last checkpoint (its overrides say resume=auto)."""

    def __call__(self, spec: RunSpec, eval_overrides: Sequence[str]) -> dict:
        return pretrain_and_evaluate(spec, eval_overrides)


def execute_array(
    specs: Sequence[RunSpec],
    eval_overrides: Sequence[str],
    cluster: str,
    log_root: str | Path,
    resources,
    log: Callable[[str], None] = print,
    reused: dict | None = None,
) -> list[RunRecord]:
    """Submit the unfinished specs as ONE job array (launcher API) and wait for all of them."""
    from launcher.executors import job_record, make_executor, map_array, unique_log_folder

    records = {spec: finished_record(spec, reused) for spec in specs}
    pending = [spec for spec, record in records.items() if record is None]
    log(f"{len(specs) - len(pending)} runs already evaluated, submitting {len(pending)}")
    if pending:
        executor = make_executor(
            cluster, unique_log_folder(log_root, "compare-negatives"), resources
        )
        overrides = [tuple(eval_overrides)] * len(pending)
        jobs = map_array(executor, resources, StudyRunJob(), pending, overrides)
        log(f"job array {jobs[0].job_id.split('_')[0]}: {len(jobs)} tasks on {cluster}")
        for spec, job in zip(pending, jobs):
            record = RunRecord(spec.method, spec.sampler, spec.seed, spec.output_dir)
            try:
                record.metrics = job.result()
            except Exception as exc:  # submitit re-raises the task's error with its traceback
                last_line = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
                record.error = f"{last_line[0]} (log: {job_record(job)['stderr']})"
                log(f"{spec.name}: FAILED: {record.error}")
            records[spec] = record
    return [records[spec] for spec in specs]


# ---------------------------------------------------------------- summarising


@dataclass
class MethodSummary:
    method: str
    metric: str
    per_sampler: dict[str, MeanCI | None]
    difference: MeanCI | None
    paired_seeds: list[int]
    failed: list[str]
    arm: str = "ring"
    reference: str = "uniform"  # what the difference is taken against
    holm_p: float | None = None  # p-value adjusted over the summary's table (its family)


def metric_by_seed(records: Sequence[RunRecord], method: str, sampler: str, metric: str):
    return {
        r.seed: float(r.metrics[metric])
        for r in records
        if r.method == method and r.sampler == sampler and r.error is None and metric in r.metrics
    }


def arms_of(records: Sequence[RunRecord]) -> list[str]:
    """The arms in the records, uniform first (the reference)."""
    arms = list(dict.fromkeys(r.sampler for r in records))
    return sorted(arms, key=lambda arm: arm != "uniform")


def comparisons(arms: Sequence[str]) -> list[tuple[str, str]]:
    """(arm, reference) pairs: every arm against uniform, and a variant (ring-anneal) also
    against its own strategy (ring) when both ran, so the study says which default is better."""
    pairs = [(arm, "uniform") for arm in arms if arm != "uniform"]
    variants = [arm for arm in arms if arm_strategy(arm) != arm and arm_strategy(arm) in arms]
    return pairs + [(variant, arm_strategy(variant)) for variant in variants]


def summarise(records: Sequence[RunRecord], metric: str, confidence=0.95) -> list[MethodSummary]:
    """Per (method, arm): mean ± CI, and the paired difference to each of its references."""
    methods = list(dict.fromkeys(r.method for r in records))
    if not methods:
        raise StudyError("no run records to summarise: the study produced nothing")
    summaries = []
    for method in methods:
        arms = [
            a
            for a in arms_of(records)
            if any(r.method == method and r.sampler == a for r in records)
        ]
        by_sampler = {s: metric_by_seed(records, method, s, metric) for s in arms}
        per_sampler = {
            s: mean_confidence_interval(list(v.values()), confidence) if v else None
            for s, v in by_sampler.items()
        }
        for arm, reference in comparisons(arms):
            common = sorted(set(by_sampler[arm]) & set(by_sampler.get(reference, {})))
            difference = None
            if common:
                difference = paired_difference_ci(
                    {s: by_sampler[arm][s] for s in common},
                    {s: by_sampler[reference][s] for s in common},
                    confidence,
                )
            failed = [
                f"{r.sampler} seed {r.seed}: {r.error}"
                for r in records
                if r.method == method and r.sampler in (reference, arm) and r.error is not None
            ]
            summaries.append(
                MethodSummary(
                    method, metric, per_sampler, difference, common, failed, arm, reference
                )
            )
    for family in families(summaries):
        tested = [
            s for s in family if s.difference is not None and s.difference.p_value is not None
        ]
        for summary, adjusted in zip(tested, holm_adjusted([s.difference.p_value for s in tested])):
            summary.holm_p = adjusted
    return summaries


def families(summaries: Sequence[MethodSummary]) -> list[list[MethodSummary]]:
    """The families of tests, one per table: every arm against uniform, and the variants
    against their own strategy."""
    against_uniform = [s for s in summaries if s.reference == "uniform"]
    return [against_uniform, [s for s in summaries if s.reference != "uniform"]]


def verdict(difference: MeanCI | None, arm: str = "ring", holm_p: float | None = None) -> str:
    """Plain words for an arm - reference interval. With ``holm_p`` (the row's p-value adjusted
    over its table) only a family-wise resolved difference counts as an effect; without it the
    row is its own family and its interval decides."""
    if difference is None:
        return "no paired runs"
    if difference.half_width is None:
        return "1 seed: no interval, no verdict"
    resolved = difference.excludes_zero() if holm_p is None else holm_p <= 1 - difference.confidence
    if resolved:
        return f"{arm} better" if difference.mean > 0 else f"{arm} worse"
    if difference.excludes_zero():
        return "not resolved after Holm (the row's own CI excludes 0)"
    return "no resolved difference (CI includes 0)"


def p_text(p_value: float | None) -> str:
    if p_value is None:
        return "—"
    return f"{p_value:.3f}" if p_value >= 0.001 else "<0.001"


# ---------------------------------------------------------------- writing


def comparison_rows(summaries: Sequence[MethodSummary], with_reference: bool) -> list[list]:
    return [
        [
            s.method,
            s.arm,
            *([s.reference] if with_reference else []),
            interval_text(s.per_sampler.get(s.reference), absent="failed"),
            interval_text(s.per_sampler.get(s.arm), absent="failed"),
            interval_text(s.difference, signed=True),
            p_text(s.difference.p_value if s.difference else None),
            p_text(s.holm_p),
            len(s.paired_seeds),
            verdict(s.difference, s.arm, s.holm_p),
        ]
        for s in summaries
    ]


def metric_table(summaries: Sequence[MethodSummary], label: str, floor: float | None) -> str:
    """One metric's table (every arm against uniform; variants also against their strategy);
    `floor` is the same metric measured on raw pixels."""
    confidence = next(
        (ci.confidence for s in summaries for ci in s.per_sampler.values() if ci), 0.95
    )
    pct = f"{confidence:.0%}"
    against_uniform = [s for s in summaries if s.reference == "uniform"]
    tests = ["p", "Holm p", "seeds", "verdict"]
    header = ["method", "arm", "uniform", "arm", f"arm − uniform ({pct} CI)", *tests]
    lines = [
        f"**{label}** (%, mean ± {pct} Student-t CI over seeds; difference paired by seed)",
        "",
        family_note(against_uniform, confidence),
        "",
        *markdown_table(header, comparison_rows(against_uniform, with_reference=False)),
    ]
    variants = [s for s in summaries if s.reference != "uniform"]
    if variants:
        header = ["method", "variant", "strategy", "strategy's", "variant's",
                  f"variant − strategy ({pct} CI)", *tests]  # fmt: skip
        lines += [
            "",
            family_note(variants, confidence),
            "",
            *markdown_table(header, comparison_rows(variants, with_reference=True)),
        ]
    if floor is not None:
        lines += ["", f"Floor, raw pixels with the same protocol: {floor * 100:.1f}."]
    return "\n".join(lines)


def family_note(family: Sequence[MethodSummary], confidence: float) -> str:
    tested = sum(s.holm_p is not None for s in family)
    return (
        f"Verdicts at a family-wise error rate of {1 - confidence:.0%} over this table's {tested} "
        "comparisons (Holm–Bonferroni on the paired t-tests' p-values, column Holm p); each "
        f"row's interval is its own {confidence:.0%} interval, not a simultaneous one."
    )


def seed_interval(records, method, arm, metric, confidence) -> MeanCI | None:
    values = list(metric_by_seed(records, method, arm, metric).values())
    return mean_confidence_interval(values, confidence) if values else None


def training_table(records: Sequence[RunRecord], confidence: float = 0.95) -> str | None:
    """Per (method, arm): the mean over seeds of every training scalar the runs reported."""
    names = sorted(
        {
            key
            for r in records
            if r.error is None
            for key in r.metrics
            if key.startswith(TRAINING_PREFIX)
        }
    )
    if not names:
        return None
    rows = []
    for method in dict.fromkeys(r.method for r in records):
        for arm in arms_of([r for r in records if r.method == method]):
            cells = [
                interval_text(seed_interval(records, method, arm, name, confidence), scale=1.0,
                              digits=3)
                for name in names
            ]  # fmt: skip
            rows.append([method, arm, *cells])
    header = ["method", "arm", *(name[len(TRAINING_PREFIX) :] for name in names)]
    title = f"**Training scalars, last epoch** (mean ± {confidence:.0%} CI over seeds)"
    notes = []
    if TRAINING_PREFIX + "false_negative_share" in names:
        notes = ["", FALSE_NEGATIVE_NOTE]
    return "\n".join([title, "", *markdown_table(header, rows), *notes])


FALSE_NEGATIVE_NOTE = (
    "`false_negative_share`: the share of the negatives used that have the anchor's class, one "
    "count per negative (a ring member drawn twice counts twice). For MoCHi it counts the real "
    "negatives only: its synthetic mixes have no class, so the share says nothing about them "
    "(`negatives_per_anchor` does include them)."
)


def failures_section(summaries: Sequence[MethodSummary]) -> str:
    failed = sorted({f"{s.method} {line}" for s in summaries for line in s.failed})
    if not failed:
        return "All runs finished."
    return (
        "Failed runs (excluded from their cells and from the paired difference):\n\n"
        + "\n".join(f"- {line}" for line in failed)
    )


def bar_chart(records: Sequence[RunRecord], floor: dict, path: Path, confidence=0.95) -> None:
    """Grouped bars (one per arm) per method with CI whiskers, one panel per metric."""
    plt = pyplot()
    panels = METRICS[:3]
    arms = arms_of(records)
    methods = list(dict.fromkeys(r.method for r in records))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        series = {
            arm: [seed_interval(records, method, arm, key, confidence) for method in methods]
            for arm in arms
        }
        lowest = grouped_bars(ax, methods, series, scale=100.0)
        if key in floor:
            ax.axhline(floor[key] * 100, ls="--", color="k", lw=1, label="raw pixels")
            lowest = min(lowest, floor[key] * 100)
        ax.set_title(label)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(max(0.0, (5.0 if math.isnan(lowest) else lowest) - 5), 100)
    # one legend below the panels, where it cannot hide a bar
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)
    fig.suptitle(f"negative strategies (mean ± {confidence:.0%} CI over seeds)")
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    save_png(fig, path)


def write_report(
    records: Sequence[RunRecord],
    floor: dict,
    out_dir: str | Path,
    command: str,
    description: str,
    confidence: float = 0.95,
) -> dict:
    """Write results.md, results.png and records.json; return the headline summary."""
    out_dir = Path(out_dir)
    if not any(r.error is None for r in records):
        raise StudyError(
            f"every run failed ({records[0].error if records else 'no runs'}); nothing to report"
        )
    sections = [f"# Negative strategies vs uniform\n\n{description}\n", "Command:\n"]
    sections.append(f"```\n{command}\n```\n")
    headline = {}
    for key, label in METRICS:
        try:
            summaries = summarise(records, key, confidence)
        except StatsError as exc:
            raise StudyError(f"cannot summarise {label}: {exc}") from exc
        sections.append(metric_table(summaries, label, floor.get(key)) + "\n")
        if key == METRICS[0][0]:
            headline = {
                f"{s.method} {s.arm} vs {s.reference}": verdict(s.difference, s.arm, s.holm_p)
                for s in summaries
            }
            sections.append(failures_section(summaries) + "\n")
    training = training_table(records, confidence)
    if training:
        sections.append(training + "\n")
    sections.append("![ring vs uniform](results.png)\n")
    write_text_atomic(out_dir / "results.md", "\n".join(sections))
    write_text_atomic(
        out_dir / "records.json", json.dumps([asdict(r) for r in records], indent=1) + "\n"
    )
    bar_chart(records, floor, out_dir / "results.png", confidence)
    return headline


# ---------------------------------------------------------------- presets and the whole study

GRAYSCALE_DATASETS = ("fmnist",)
CMC_GRAYSCALE = (
    "CMC is excluded: it contrasts the L and ab channels of Lab colour, and Fashion-MNIST is "
    "grayscale (ab is zero everywhere), so there is no second view to predict"
)


def check_methods_fit_dataset(methods: Sequence[str], dataset: str) -> None:
    if "cmc" in methods and dataset in GRAYSCALE_DATASETS:
        raise StudyError(f"{CMC_GRAYSCALE}; drop cmc from the methods or use a colour dataset")


def load_floor(path: Path, compute: Callable[[], dict], log: Callable[[str], None]) -> dict:
    """The raw-pixel floor, computed once per study folder (it depends on the data only)."""
    if path.is_file():
        return json.loads(path.read_text())
    log("computing the raw-pixel floor (same protocol, no encoder)")
    floor = compute()
    write_text_atomic(path, json.dumps(floor, indent=1) + "\n")
    return floor


def study_plan(args) -> dict:
    """The preset's values (configs/studies/), any explicitly given argument taking precedence."""
    preset = load_preset(args.preset)
    return {
        "dataset": args.dataset or preset["dataset"],
        "methods": list(args.methods or preset["methods"]),
        "arms": list(args.samplers or preset["arms"]),
        "seeds": list(args.seeds if args.seeds is not None else preset["seeds"]),
        "overrides": [*preset["overrides"], *args.overrides],
        "eval": [*preset["eval"], *args.eval],
    }


def data_label(data_cfg) -> str:
    """What the runs actually trained on: the dataset name and, when given, its folder."""
    root = f" from `{shown_path(data_cfg.root)}`" if data_cfg.get("root") else ""
    subset = (
        f", a fixed {data_cfg.train_subset}-image subset" if data_cfg.get("train_subset") else ""
    )
    return f"`{data_cfg.name}`{root}{subset}"


def describe(plan: dict, args, specs: Sequence[RunSpec], data: str) -> str:
    lines = [
        f"Data: {data}. Methods {', '.join(plan['methods'])}, arms "
        f"{', '.join(plan['arms'])}, seeds "
        f"{', '.join(map(str, plan['seeds']))} ({len(specs)} pretraining runs). Configs: "
        f"`<arm>_<method>_{plan['dataset']}.yaml` from "
        f"`{shown_path(args.config_dir)}`, plus "
        f"the overrides `{' '.join(plan['overrides']) or 'none'}` for every run; the runs "
        "of a (method, seed) were checked to differ only in `sampler.*`.",
        "",
        "Evaluation: frozen encoder (BN in eval mode, verified bitwise unchanged), pooled "
        "features; linear probe = L-BFGS logistic regression on standardised features with "
        "the L2 penalty chosen on 10% of the train split; weighted kNN (cosine, T=0.07). "
        f"Options: `{' '.join(plan['eval']) or 'defaults'}`.",
    ]
    if plan["dataset"] in GRAYSCALE_DATASETS:
        lines += ["", CMC_GRAYSCALE + "."]
    return "\n".join(lines)


def run_study_from_args(args, command: str, started: float, log=print) -> dict:
    """The whole study as tools/compare_negatives.py describes it; returns verdict per method."""
    import time

    from pretrain.data import load_source
    from pretrain.evaluation.linear_probe import eval_options, raw_pixel_floor
    from pretrain.trainer import load_pretrain_config

    plan = study_plan(args)
    reused = load_reused_records(getattr(args, "reuse_records", None))
    check_methods_fit_dataset(plan["methods"], plan["dataset"])
    eval_options(plan["eval"])  # a typo in --eval fails now, not after hours of training
    configs = config_pairs(args.config_dir, plan["dataset"], plan["methods"], plan["arms"])
    output = Path(args.output)
    specs = plan_runs(configs, plan["seeds"], output, plan["overrides"])
    resolved = {}

    def load(config, overrides):
        resolved[(config, tuple(overrides))] = load_pretrain_config(config, overrides)
        return resolved[(config, tuple(overrides))].to_dict()

    check_plan(specs, load)
    first = resolved[(specs[0].config, tuple(specs[0].overrides))]
    if not args.report_only:
        # Train from the configs as checked now, so an edit to configs/ while the study runs
        # cannot make later runs differ from earlier ones. A report writes nothing into run
        # folders: another study process may be training in them.
        specs = [freeze_config(s, resolved[(s.config, tuple(s.overrides))]) for s in specs]
    floor = load_floor(
        output / "floor.json",
        lambda: raw_pixel_floor(load_source(first.data), eval_options(plan["eval"])),
        log,
    )
    if args.report_only:
        records = [finished_record(s, reused) or not_run_record(s) for s in specs]
    elif args.cluster:
        from launcher.executors import Resources

        resources = Resources(
            job_name="compare-negatives",
            gpus_per_node=args.gpus_per_node,
            cpus_per_task=args.cpus_per_task,
            timeout_min=args.timeout_min,
            partition=args.partition,
            array_parallelism=args.array_parallelism,
        )
        records = execute_array(
            specs, plan["eval"], args.cluster, output / "logs", resources, log, reused
        )
    else:
        run_one = lambda spec: pretrain_and_evaluate(spec, plan["eval"])  # noqa: E731
        records = execute_runs(specs, run_one, log, reused)
    minutes = (time.time() - started) / 60
    timing = (
        "This report was written with --report-only from the runs finished so far."
        if args.report_only
        else f"Wall time of this invocation: {minutes:.1f} min."
    )
    description = describe(plan, args, specs, data_label(first.data)) + "\n\n" + timing
    reused_here = sum(finished_record(s, reused) is not None and not eval_path(s).is_file()
                      for s in specs)  # fmt: skip
    if reused_here:
        description += (
            f"\n\n{reused_here} of the {len(specs)} runs are records reused from "
            f"`{shown_path(args.reuse_records)}` (--reuse-records: earlier runs whose code path "
            "is unchanged; their folders are not kept)."
        )
    report_dir = Path(args.report_dir) if args.report_dir else output / "report"
    headline = write_report(records, floor, report_dir, command, description)
    log(f"wrote {report_dir / 'results.md'} and {report_dir / 'results.png'}")
    return headline
