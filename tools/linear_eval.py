"""Linear probe + weighted kNN of a pretraining checkpoint, written to eval.json beside it.

    python tools/linear_eval.py runs/x/checkpoints/last.pth [key=value ...]

Options (key=value, checked; see pretrain.evaluation.linear_probe.EVAL_DEFAULTS): solver=lbfgs|sgd,
train_limit=N, test_limit=N, knn_k=[20,200], encoder=NAME (MoCo: query|key; default: the
checkpoint's, CMC: L and ab concatenated), device=cpu|cuda, output=PATH, data_root=DIR.
"""

import argparse
import sys

from pretrain.errors import one_line_errors
from pretrain.evaluation.linear_probe import evaluate_checkpoint


@one_line_errors
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a ring-nce pretraining checkpoint (.pth)")
    parser.add_argument("overrides", nargs="*", help="key=value options")
    args = parser.parse_args(argv)
    result = evaluate_checkpoint(args.checkpoint, args.overrides)
    metrics = result["metrics"]
    print(
        f"linear top-1 {metrics['linear_top1']:.4f}  top-5 {metrics['linear_top5']:.4f}  "
        + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("knn"))
    )
    print(f"wrote {result['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
