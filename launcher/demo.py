"""The end-to-end demo behind ``make demo``: real data through every stage, one results table.

Pretrain MoCo v2 with uniform and with Ring negatives on real Fashion-MNIST, evaluate each
(kNN + linear probe, beside the raw-pixel floor), convert both to verified Detectron2 weights,
fine-tune Mask R-CNN on the real labelme VOC photos and Keypoint R-CNN on the generated
keypoints fixture, and print one table. Everything lands under one run folder.

``DEMO_CLUSTER=slurm`` (``make demo-slurm``) runs the conversion and the transfer runs as a
sweep instead: a conversion job, then one Slurm job array, collected into the same table.
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
from launcher.sweep import load_sweep, submit_sweep, weights_path
from pretrain.config import ConfigError, load_config
from pretrain.data import load_source
from pretrain.errors import RingNCEError
from pretrain.evaluation.linear_probe import eval_options, evaluate_checkpoint, raw_pixel_floor
from pretrain.trainer import load_pretrain_config, train
from transfer.engine import run as run_transfer_config
from transfer.weights import convert

REPO = Path(__file__).resolve().parents[1]
SAMPLERS = ("uniform", "ring")


@dataclass(frozen=True)
class Budget:
    """How much of each stage the demo runs: ``configs/demo/{full,fast}.yaml``."""

    train_images: int
    epochs: int
    eval_train_images: int
    eval_test_images: int
    mask_iters: int
    keypoint_iters: int


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


def transfer_opts(weights, output_dir, iters):
    return ["MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(output_dir), "SOLVER.MAX_ITER", iters]


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


def transfer_tasks(budget):
    """(task, Detectron2 config, iterations) of the demo's fine-tuning runs."""
    return (
        (
            "mask",
            str(REPO / "configs" / "transfer" / "tiny_mask_rcnn_R50_FPN.yaml"),
            budget.mask_iters,
        ),
        (
            "keypoints",
            str(REPO / "configs" / "transfer" / "tiny_keypoint_rcnn_R50_FPN.yaml"),
            budget.keypoint_iters,
        ),
    )


def run_transfer(run_dir, converted, budget, progress):
    results = {}
    log_path = run_dir / "transfer" / "detectron2.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"[demo] Detectron2's own log goes to {log_path}", flush=True)
    # Detectron2 logs every loaded tensor and per-category table to stdout: keep the demo's
    # progress readable and the full log on disk.
    with open(log_path, "a") as log, contextlib.redirect_stdout(log):
        for sampler, (weights, _) in converted.items():
            results[sampler] = {}
            for task, config_file, iters in transfer_tasks(budget):
                output_dir = run_dir / "transfer" / f"{sampler}_moco" / task
                results[sampler][task] = run_transfer_config(
                    config_file, transfer_opts(weights, output_dir, iters)
                )
                progress.step(
                    f"fine-tuned {task} R-CNN from {sampler}-MoCo ({iters} iterations): "
                    + ", ".join(
                        f"{t} AP {fmt(r.get('AP'))}" for t, r in results[sampler][task].items()
                    )
                )
    return results


def write_sweep_file(run_dir, checkpoints, budget):
    spec = {
        "checkpoints": {sampler: str(path) for sampler, path in checkpoints.items()},
        "tasks": {
            task: {"config": config_file, "opts": ["SOLVER.MAX_ITER", iters]}
            for task, config_file, iters in transfer_tasks(budget)
        },
        "seeds": [0],
        "output_dir": str(run_dir / "sweep"),
    }
    path = run_dir / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_transfer_sweep(run_dir, checkpoints, budget, cluster, progress):
    """Conversion and transfer as one sweep on ``cluster``; returns what the table needs."""
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
    markdown, missing = write_reports(spec["output_dir"])
    if missing:
        raise RingNCEError(
            f"{len(missing)} transfer run(s) of the sweep failed: see their logs listed in "
            f"{run_dir / 'sweep' / 'results.md'}"
        )
    sweep_dir = Path(spec["output_dir"])
    converted, transfers = {}, {}
    for sampler in checkpoints:
        weights = weights_path(sweep_dir, sampler)
        converted[sampler] = (weights, json.loads(weights.with_suffix(".json").read_text()))
        transfers[sampler] = {
            task: json.loads(
                (sweep_dir / "runs" / sampler / task / "seed_0" / "results.json").read_text()
            )
            for task, _, _ in transfer_tasks(budget)
        }
    progress.step(f"collected the job array's results: {sweep_dir / 'results.md'}")
    return converted, transfers


def metric(mapping, *keys):
    for key in keys:
        if not isinstance(mapping, dict) or key not in mapping:
            return None
        mapping = mapping[key]
    return mapping


def fmt(value, scale=1.0):
    # COCO reports an AP of null when a model made no prediction
    return "n/a" if value is None else f"{value * scale:.1f}"


TABLE_COLUMNS = (
    "kNN-20 top-1",
    "linear top-1",
    "convert max diff",
    "Mask R-CNN box AP",
    "mask AP",
    "Keypoint R-CNN box AP",
    "keypoint AP",
)


def results_table(evaluations, converted, transfers):
    """Markdown: one row per pretraining (raw pixels first), accuracy in %, AP in COCO points."""
    rows = []
    for name, evaluation in evaluations.items():
        knn, linear = evaluation["knn20_top1"], evaluation["linear_top1"]
        cells = [fmt(knn, 100), fmt(linear, 100)]
        if name in converted:
            transfer = transfers[name]
            cells += [
                f"{converted[name][1]['verification']['max_abs_diff']:.1e}",
                fmt(metric(transfer, "mask", "bbox", "AP")),
                fmt(metric(transfer, "mask", "segm", "AP")),
                fmt(metric(transfer, "keypoints", "bbox", "AP")),
                fmt(metric(transfer, "keypoints", "keypoints", "AP")),
            ]
        else:
            cells += ["-"] * 5
        label = name if name not in converted else f"{name}-MoCo"
        rows.append([label, *cells])
    return "\n".join(markdown_table(["pretraining", *TABLE_COLUMNS], rows))


def run_demo(run_dir, budget, cluster=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    # pretrain and evaluate each, the raw-pixel floor, then convert and fine-tune two tasks
    # each in this process, or submit and collect one sweep
    late_steps = 2 if cluster else 3 * len(SAMPLERS)
    progress = Progress(total=2 * len(SAMPLERS) + 1 + late_steps)
    print(f"[demo] run folder: {run_dir}", flush=True)
    checkpoints = run_pretraining(run_dir, budget, progress)
    evaluations = run_evaluation(checkpoints, budget, progress)
    if cluster:
        converted, transfers = run_transfer_sweep(run_dir, checkpoints, budget, cluster, progress)
    else:
        converted = run_conversion(run_dir, checkpoints, progress)
        transfers = run_transfer(run_dir, converted, budget, progress)
    table = results_table(evaluations, converted, transfers)
    (run_dir / "results.md").write_text(table + "\n")
    summary = {"evaluation": evaluations, "transfer": transfers, "budget": budget.__dict__}
    (run_dir / "results.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return table


def main():
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(os.environ.get("DEMO_DIR", REPO / "runs" / f"demo-{stamp}")).resolve()
    try:
        budget = selected_budget(os.environ)
        table = run_demo(run_dir, budget, os.environ.get("DEMO_CLUSTER"))
    except RingNCEError as error:
        print(f"error: {error} (the demo's outputs so far are under {run_dir})", file=sys.stderr)
        return 2
    print("\n" + table)
    print(f"\n[demo] everything is under {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
