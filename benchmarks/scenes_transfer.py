"""Seconds per training iteration and per evaluation of the Fashion-MNIST scenes transfer configs.

python -m benchmarks.scenes_transfer [--iters 30] [--warmup 5] [--threads 1] [--weights PKL]
    [--configs mask,mask_frozen,keypoint,keypoint_frozen] [--json OUT.json]

Each config trains ``warmup + iters`` iterations (random init unless ``--weights``; the narrow
ResNet-18 is in the configs) and then evaluates on the test scenes, as a sweep run does. Reported:
the median seconds per iteration after the warm-up and the evaluation's seconds, and what a run of
the config's MAX_ITER costs from them. Run it alone on the machine (other work inflates both).
"""

import argparse
import statistics
import tempfile
import time

import torch

import transfer  # noqa: F401  (Detectron2's _C fallback before any Detectron2 import)
from benchmarks.timing import finish_run, machine_facts
from transfer.config import build_config
from transfer.engine import Trainer, prepare_all_datasets, setup_run_logging

from detectron2.engine import HookBase  # isort: skip  (after transfer: _C fallback)

CONFIGS = {
    "mask": "configs/transfer/fmnist_scenes_mask_rcnn_R18_FPN.yaml",
    "mask_frozen": "configs/transfer/fmnist_scenes_mask_rcnn_R18_FPN_frozen.yaml",
    "keypoint": "configs/transfer/fmnist_scenes_keypoint_rcnn_R18_FPN.yaml",
    "keypoint_frozen": "configs/transfer/fmnist_scenes_keypoint_rcnn_R18_FPN_frozen.yaml",
}


class StepTimes(HookBase):
    """Wall seconds of each training step (forward, backward, optimiser, data loading)."""

    def __init__(self):
        self.seconds = []

    def before_step(self):
        self.started = time.perf_counter()

    def after_step(self):
        self.seconds.append(time.perf_counter() - self.started)


def measure(name, config, args, output):
    opts = ["MODEL.WEIGHTS", args.weights, "OUTPUT_DIR", output, "SEED", 0]
    schedule = build_config(config, opts).SOLVER.MAX_ITER
    cfg = build_config(config, [*opts, "SOLVER.MAX_ITER", args.warmup + args.iters])
    setup_run_logging(cfg, config, resume=False, eval_only=False)
    prepare_all_datasets(cfg, ())
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    steps = StepTimes()
    trainer.register_hooks([steps])
    started = time.perf_counter()
    trainer.train()  # ends with the evaluation on the test scenes
    evaluation = time.perf_counter() - started - sum(steps.seconds)
    per_iteration = statistics.median(steps.seconds[args.warmup :])
    return {
        "config": name,
        "threads": torch.get_num_threads(),
        "s_per_iteration": round(per_iteration, 3),
        "evaluation_s": round(evaluation, 1),
        "max_iter": schedule,
        "run_s": round(schedule * per_iteration + evaluation, 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weights", default="", help="converted .pkl (default: random init)")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.preset = "scenes"
    torch.set_num_threads(args.threads)
    facts = machine_facts()
    rows = []
    for name in args.configs.split(","):
        with tempfile.TemporaryDirectory() as output:
            rows.append(measure(name, CONFIGS[name], args, output))
        print(rows[-1], flush=True)
    print("\n| config | threads | s/iteration | evaluation s | MAX_ITER | run s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(value) for value in row.values()) + " |")
    finish_run("scenes_transfer", args, {"iters": args.iters, "warmup": args.warmup}, facts, rows)


if __name__ == "__main__":
    main()
