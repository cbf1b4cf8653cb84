"""Negative strategies compared: pretrain every method x arm x seed, evaluate, report vs uniform.

    python tools/compare_negatives.py                      # CPU preset: Fashion-MNIST
    python tools/compare_negatives.py --preset fmnist_strategies   # the committed study
    python tools/compare_negatives.py --preset gpu --cluster slurm --gpus-per-node 1
    python tools/compare_negatives.py --methods moco --seeds 0 1 optim.epochs=2 --eval solver=sgd

Within a (method, seed) every arm shares every setting but the sampler (checked before anything
trains). Writes results.md (mean ± 95% CI per cell, paired arm - uniform difference with its CI,
raw-pixel floor), results.png and records.json to --report-dir.
Rerunning the same command reuses finished runs.
"""

import argparse
import shlex
import sys
import time
from pathlib import Path

from launcher.study import run_study_from_args
from pretrain.errors import one_line_errors

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset",
        default="cpu",
        help="configs/studies/NAME.yaml (cpu, fmnist_strategies, gpu, none) or a YAML path",
    )
    parser.add_argument("--dataset", help="config suffix: fmnist, cifar10, stl10, imagenet")
    parser.add_argument("--methods", nargs="+", help="subset of ir cmc moco simclr")
    parser.add_argument(
        "--samplers",
        nargs="+",
        help="arms: uniform (the reference) and any of ring dcl hcl mochi, or a variant with "
        "its own config such as ring-anneal; method:arm for one method only, e.g. moco:mochi "
        "(default: the preset's arms)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, help="default 0 1 2")
    parser.add_argument("--config-dir", default=str(REPO / "configs" / "pretrain"))
    parser.add_argument("--output", default="runs/compare_negatives", help="run folders")
    parser.add_argument("--report-dir", help="default: OUTPUT/report")
    parser.add_argument(
        "--eval",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a tools/linear_eval.py option for every run (repeatable)",
    )
    parser.add_argument(
        "--cluster", choices=("slurm", "local", "debug"), help="submit as one job array"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: report the finished runs, list the others as not run",
    )
    parser.add_argument(
        "--reuse-records",
        metavar="RECORDS.json",
        help="an earlier report's records.json: its runs count as finished where this study's "
        "folder has none (only for runs whose code path is unchanged)",
    )
    parser.add_argument("--partition")
    parser.add_argument("--gpus-per-node", type=int, default=0)
    parser.add_argument("--cpus-per-task", type=int, default=4)
    parser.add_argument("--timeout-min", type=int, default=240)
    parser.add_argument("--array-parallelism", type=int, default=32)
    parser.add_argument("overrides", nargs="*", help="pretraining key=value for every run")
    return parser.parse_args(argv)


@one_line_errors
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = "python tools/compare_negatives.py " + shlex.join(argv)
    started = time.time()
    headline = run_study_from_args(args, command, started)
    for method, verdict in headline.items():
        print(f"{method}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
