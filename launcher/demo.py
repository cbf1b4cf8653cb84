"""The end-to-end demo behind ``make demo``: real data through every stage, two results tables.

Pretrain MoCo v2 with uniform and with Ring negatives on real Fashion-MNIST, evaluate each
(kNN + linear probe, beside the raw-pixel floor), convert both to verified Detectron2 weights,
then transfer: Mask R-CNN fine-tuned on the Fashion-MNIST scenes (transfer/scenes.py) and
evaluated on held-out scenes of Fashion-MNIST's test items, from each encoder and from random
init, over the budget's seeds (the headline table); and, as a check that real photos go through,
Mask R-CNN on the labelme VOC photos, evaluated on those same training photos (a second table,
not a transfer measure). Everything lands under one run folder.

``DEMO_CLUSTER=slurm`` (``make demo-slurm``) runs the conversion and the transfer runs as a
sweep instead: a conversion job, then one Slurm job array, collected into the same tables.
"""

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from launcher.collect import write_reports
from launcher.executors import Resources
from launcher.report import markdown_table
from launcher.stats import mean_confidence_interval, paired_difference_ci
from launcher.sweep import RANDOM_INIT, load_sweep, submit_sweep, weights_path
from pretrain.config import ConfigError, load_config
from pretrain.data import load_source
from pretrain.errors import RingNCEError
from pretrain.evaluation.linear_probe import eval_options, evaluate_checkpoint, raw_pixel_floor
from pretrain.trainer import load_pretrain_config, train
from transfer.engine import run as run_transfer_config
from transfer.weights import convert

REPO = Path(__file__).resolve().parents[1]
SAMPLERS = ("uniform", "ring")
ENCODERS = (RANDOM_INIT, *SAMPLERS)  # the scenes table's rows, random init first
SCENES_CONFIG = REPO / "configs" / "transfer" / "fmnist_scenes_mask_rcnn_R18_FPN.yaml"
PHOTOS_CONFIG = REPO / "configs" / "transfer" / "tiny_mask_rcnn_R50_FPN.yaml"


@dataclass(frozen=True)
class Budget:
    """How much of each stage the demo runs: ``configs/demo/{full,fast}.yaml``."""

    train_images: int
    epochs: int
    eval_train_images: int
    eval_test_images: int
    scenes_iters: int  # Mask R-CNN fine-tuning on the scenes, per run
    scenes_seeds: int  # runs per encoder (random init, uniform, ring)
    photos_iters: int  # Mask R-CNN on the labelme photos, per pretrained encoder


def load_budget(path) -> Budget:
    """A budget file with exactly the fields of ``Budget``, each a positive integer."""
    values = load_config(path).to_dict()
    names = [f.name for f in fields(Budget)]
    unknown = sorted(set(values) - set(names))
    missing = [name for name in names if name not in values]
    bad = [n for n in names if n in values and (type(values[n]) is not int or values[n] < 1)]
    if unknown or missing or bad:
        problems = [f"unknown {', '.join(unknown)}"] * bool(unknown)
        problems += [f"missing {', '.join(missing)}"] * bool(missing)
        problems += [f"not a positive integer: {', '.join(bad)}"] * bool(bad)
        raise ConfigError(f"demo budget {path}: {'; '.join(problems)}; it sets {', '.join(names)}")
    return Budget(**values)


def selected_budget(environ) -> Budget:
    """``DEMO_BUDGET`` (a YAML path), else ``DEMO_FAST=1``'s fast budget, else the full one."""
    name = "fast" if environ.get("DEMO_FAST") == "1" else "full"
    return load_budget(environ.get("DEMO_BUDGET") or REPO / "configs" / "demo" / f"{name}.yaml")


class Progress:
    def __init__(self, total):
        self.total, self.done, self.started = total, 0, time.perf_counter()
        self.stream = sys.stdout  # kept while Detectron2's output is redirected to its log

    def step(self, text):
        self.done += 1
        elapsed = time.perf_counter() - self.started
        print(
            f"[demo {self.done}/{self.total} | {elapsed:5.0f}s] {text}",
            file=self.stream,
            flush=True,
        )


def pretrain_overrides(run_dir, sampler, budget):
    return [
        f"output_dir={run_dir / 'pretrain' / f'{sampler}_moco'}",
        f"data.train_subset={budget.train_images}",
        f"optim.epochs={budget.epochs}",
        "knn.every_epochs=0",
        f"knn.train_subset={budget.eval_train_images}",
        f"knn.test_subset={budget.eval_test_images}",
        "resume=none",
    ]


def eval_overrides(budget):
    return [
        f"train_limit={budget.eval_train_images}",
        f"test_limit={budget.eval_test_images}",
    ]


def run_pretraining(run_dir, budget, progress):
    checkpoints = {}
    for sampler in SAMPLERS:
        config = REPO / "configs" / "pretrain" / f"{sampler}_moco_fmnist.yaml"
        cfg = load_pretrain_config(config, pretrain_overrides(run_dir, sampler, budget))
        result = train(cfg)
        checkpoints[sampler] = Path(result["checkpoint"])
        progress.step(
            f"pretrained {sampler}-MoCo: loss {result['loss']:.3f} -> {result['checkpoint']}"
        )
    return checkpoints


def run_evaluation(checkpoints, budget, progress):
    fmnist = load_pretrain_config(REPO / "configs" / "pretrain" / "uniform_moco_fmnist.yaml")
    floor = raw_pixel_floor(load_source(fmnist.data), eval_options(eval_overrides(budget)))
    evaluations = {"raw pixels": floor}
    progress.step(f"raw-pixel floor: kNN-20 top-1 {floor['knn20_top1']:.3f}")
    for sampler, checkpoint in checkpoints.items():
        result = evaluate_checkpoint(checkpoint, eval_overrides(budget), log=lambda _: None)
        evaluations[sampler] = metrics = result["metrics"]
        progress.step(
            f"evaluated {sampler}-MoCo: kNN-20 top-1 {metrics['knn20_top1']:.3f}, "
            f"linear top-1 {metrics['linear_top1']:.3f}"
        )
    return evaluations


def run_conversion(run_dir, checkpoints, progress):
    converted = {}
    for sampler, checkpoint in checkpoints.items():
        out = run_dir / "detectron2" / f"{sampler}_moco.pkl"
        out.parent.mkdir(parents=True, exist_ok=True)
        report = convert(checkpoint, out)
        converted[sampler] = (out, report)
        difference = report["verification"]["max_abs_diff"]
        progress.step(f"converted {sampler}-MoCo to {out} (verified, max |diff| {difference:.1e})")
    return converted


@dataclass(frozen=True)
class TransferRun:
    """One fine-tuning run: an encoder (random init or a pretraining), a task, a seed."""

    encoder: str  # random | uniform | ring
    task: str  # scenes | photos
    seed: int

    def directory(self, run_dir):
        return run_dir / "transfer" / self.encoder / self.task / f"seed_{self.seed}"


def task_config(task, budget):
    """(Detectron2 config, iterations) of a task."""
    if task == "scenes":
        return SCENES_CONFIG, budget.scenes_iters
    return PHOTOS_CONFIG, budget.photos_iters


def transfer_runs(budget):
    """Every encoder on the held-out scenes over the seeds; the pretrained ones on the photos."""
    scenes = [
        TransferRun(encoder, "scenes", seed)
        for seed in range(budget.scenes_seeds)
        for encoder in ENCODERS
    ]
    return scenes + [TransferRun(sampler, "photos", 0) for sampler in SAMPLERS]


def run_opts(run, converted, run_dir, budget):
    """Weights (random init builds the converted network with nothing loaded), output, length,
    seed. transfer.engine applies the converted weights' .json keys (widths, pixel statistics)."""
    if run.encoder == RANDOM_INIT:
        architecture = str(converted[SAMPLERS[0]][0])
        weights = ["MODEL.WEIGHTS", "", "RINGNCE.ARCHITECTURE_FROM", architecture]
    else:
        weights = ["MODEL.WEIGHTS", str(converted[run.encoder][0])]
    iters = task_config(run.task, budget)[1]
    output = str(run.directory(run_dir))
    return [*weights, "OUTPUT_DIR", output, "SOLVER.MAX_ITER", iters, "SEED", run.seed]


def label(encoder):
    return "random init" if encoder == RANDOM_INIT else f"{encoder}-MoCo"


def describe_run(run, budget, result):
    where = {
        "scenes": "the scenes (AP on held-out scenes)",
        "photos": "the labelme photos (AP on its own training photos)",
    }[run.task]
    iters = task_config(run.task, budget)[1]
    return (
        f"fine-tuned Mask R-CNN on {where} from {label(run.encoder)}, seed {run.seed}, "
        f"{iters} iterations: box AP {fmt(metric(result, 'bbox', 'AP'))}, "
        f"mask AP {fmt(metric(result, 'segm', 'AP'))}"
    )


def store(results, run, result):
    results.setdefault(run.task, {}).setdefault(run.encoder, {})[run.seed] = result


def run_transfer(run_dir, converted, budget, progress):
    """``{task: {encoder: {seed: {bbox: .., segm: ..}}}}``, each run in this process."""
    results = {}
    log_path = run_dir / "transfer" / "detectron2.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"[demo] Detectron2's own log goes to {log_path}", flush=True)
    # Detectron2 logs every loaded tensor and per-category table to stdout: keep the demo's
    # progress readable and the full log on disk.
    with open(log_path, "a") as log, contextlib.redirect_stdout(log):
        for run in transfer_runs(budget):
            config_file = task_config(run.task, budget)[0]
            result = run_transfer_config(
                str(config_file), run_opts(run, converted, run_dir, budget)
            )
            store(results, run, result)
            progress.step(describe_run(run, budget, result))
    return results


def write_sweep_file(run_dir, checkpoints, budget):
    """The same runs as one sweep; it crosses every checkpoint with every task and seed, so the
    photos also run from random init and for every seed (the tables read what they need)."""
    spec = {
        "checkpoints": {
            RANDOM_INIT: RANDOM_INIT,
            **{sampler: str(path) for sampler, path in checkpoints.items()},
        },
        "baseline": RANDOM_INIT,
        "tasks": {
            task: {"config": str(task_config(task, budget)[0]), "opts": ["SOLVER.MAX_ITER", iters]}
            for task, iters in (("scenes", budget.scenes_iters), ("photos", budget.photos_iters))
        },
        "seeds": list(range(budget.scenes_seeds)),
        "output_dir": str(run_dir / "sweep"),
    }
    path = run_dir / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_transfer_sweep(run_dir, checkpoints, budget, cluster, progress):
    """Conversion and transfer as one sweep on ``cluster``; returns what the tables need."""
    spec = load_sweep(write_sweep_file(run_dir, checkpoints, budget))
    # one CPU and a few GB per run: a 2-core laptop runs two array tasks at once
    resources = Resources(
        job_name="ring-nce-demo", gpus_per_node=0, cpus_per_task=1, mem_gb=4, timeout_min=60
    )
    _, submitted = submit_sweep(spec, cluster, resources)
    progress.step(
        f"submitted {len(submitted)} transfer runs as one {cluster} job array "
        f"(after a conversion job); logs under {run_dir / 'sweep' / 'logs'}"
    )
    for _, job in submitted:
        job.wait()
    _, missing = write_reports(spec["output_dir"])
    if missing:
        raise RingNCEError(
            f"{len(missing)} transfer run(s) of the sweep failed: see their logs listed in "
            f"{run_dir / 'sweep' / 'results.md'}"
        )
    sweep_dir = Path(spec["output_dir"])
    converted = {}
    for sampler in checkpoints:
        weights = weights_path(sweep_dir, sampler)
        converted[sampler] = (weights, json.loads(weights.with_suffix(".json").read_text()))
    results = {}
    for run in transfer_runs(budget):
        folder = sweep_dir / "runs" / run.encoder / run.task / f"seed_{run.seed}"
        store(results, run, json.loads((folder / "results.json").read_text()))
    progress.step(f"collected the job array's results: {sweep_dir / 'results.md'}")
    return converted, results


def metric(mapping, *keys):
    for key in keys:
        if not isinstance(mapping, dict) or key not in mapping:
            return None
        mapping = mapping[key]
    return mapping


def fmt(value, scale=1.0):
    # COCO reports an AP of null when a model made no prediction
    return "n/a" if value is None else f"{value * scale:.1f}"


def ap_cells(runs, baseline):
    """Box and mask AP over the seeds (mean ± 95% CI) and the paired box-AP difference to
    ``baseline`` (random init; "-" on its own row); "n/a" where a run made no prediction."""
    cells = []
    for task in ("bbox", "segm"):
        values = [metric(result, task, "AP") for result in runs.values()]
        cells.append("n/a" if None in values else mean_confidence_interval(values).format(1.0))
    if runs is baseline:
        return [*cells, "-"]
    treated = {seed: metric(result, "bbox", "AP") for seed, result in runs.items()}
    control = {seed: metric(result, "bbox", "AP") for seed, result in baseline.items()}
    if None in treated.values() or None in control.values():
        return [*cells, "n/a"]
    return [*cells, paired_difference_ci(treated, control).format(1.0, signed=True)]


SCENES_COLUMNS = (
    "kNN-20 top-1",
    "linear top-1",
    "convert max diff",
    "scenes box AP",
    "scenes mask AP",
    "box AP - random init",
)


def scenes_table(evaluations, converted, transfers):
    """Markdown: raw pixels, random init, then each pretraining; accuracy in %, held-out AP
    in COCO points, mean ± 95% CI over the seeds ("(n=1)": one seed, no interval)."""
    scenes = transfers["scenes"]
    rows = [["raw pixels", *evaluation_cells(evaluations["raw pixels"]), *["-"] * 4]]
    rows.append(["random init", "-", "-", "-", *ap_cells(scenes[RANDOM_INIT], scenes[RANDOM_INIT])])
    for sampler in SAMPLERS:
        diff = f"{converted[sampler][1]['verification']['max_abs_diff']:.1e}"
        cells = [*evaluation_cells(evaluations[sampler]), diff]
        rows.append([label(sampler), *cells, *ap_cells(scenes[sampler], scenes[RANDOM_INIT])])
    return "\n".join(markdown_table(["pretraining", *SCENES_COLUMNS], rows))


def evaluation_cells(evaluation):
    return [fmt(evaluation["knn20_top1"], 100), fmt(evaluation["linear_top1"], 100)]


def photos_table(transfers):
    """Markdown: the labelme check, AP on the photos the model was fine-tuned on (seed 0)."""
    rows = [
        [
            label(sampler),
            fmt(metric(transfers["photos"][sampler][0], "bbox", "AP")),
            fmt(metric(transfers["photos"][sampler][0], "segm", "AP")),
        ]
        for sampler in SAMPLERS
    ]
    header = ["pretraining", "box AP on its training photos", "mask AP on its training photos"]
    return "\n".join(markdown_table(header, rows))


def report(evaluations, converted, transfers, budget):
    seeds = budget.scenes_seeds
    return (
        f"Held-out transfer: Mask R-CNN fine-tuned {budget.scenes_iters} iterations on the "
        f"Fashion-MNIST scenes, AP on held-out scenes of Fashion-MNIST's test items "
        f"(mean ± 95% CI over {seeds} seed{'s' * (seeds > 1)}):\n\n"
        + scenes_table(evaluations, converted, transfers)
        + "\n\nReal-photo check, not a transfer measure: Mask R-CNN fine-tuned "
        f"{budget.photos_iters} iterations on the 3 labelme VOC photos and evaluated on those "
        "same photos:\n\n" + photos_table(transfers)
    )


def run_demo(run_dir, budget, cluster=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    # pretrain and evaluate each, the raw-pixel floor, convert, then the transfer runs in this
    # process, or conversion and transfer as one submitted sweep (submitted, collected)
    late_steps = 2 if cluster else len(SAMPLERS) + len(transfer_runs(budget))
    progress = Progress(total=2 * len(SAMPLERS) + 1 + late_steps)
    print(f"[demo] run folder: {run_dir}", flush=True)
    checkpoints = run_pretraining(run_dir, budget, progress)
    evaluations = run_evaluation(checkpoints, budget, progress)
    if cluster:
        converted, transfers = run_transfer_sweep(run_dir, checkpoints, budget, cluster, progress)
    else:
        converted = run_conversion(run_dir, checkpoints, progress)
        transfers = run_transfer(run_dir, converted, budget, progress)
    text = report(evaluations, converted, transfers, budget)
    (run_dir / "results.md").write_text(text + "\n")
    summary = {"evaluation": evaluations, "transfer": transfers, "budget": budget.__dict__}
    (run_dir / "results.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return text


def main():
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(os.environ.get("DEMO_DIR", REPO / "runs" / f"demo-{stamp}")).resolve()
    try:
        budget = selected_budget(os.environ)
        text = run_demo(run_dir, budget, os.environ.get("DEMO_CLUSTER"))
    except RingNCEError as error:
        print(f"error: {error} (the demo's outputs so far are under {run_dir})", file=sys.stderr)
        return 2
    print("\n" + text)
    print(f"\n[demo] everything is under {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
