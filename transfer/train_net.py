"""Detectron2 transfer training/evaluation with Detectron2's usual command line.

    python transfer/train_net.py --config-file configs/transfer/coco_mask_rcnn_R50_FPN_1x.yaml \\
        --num-gpus 8 MODEL.WEIGHTS out.pkl OUTPUT_DIR runs/x

Flags: --config-file, --num-gpus, --num-machines, --machine-rank, --dist-url, --resume,
--eval-only, --dataset NAME=ANNOTATIONS.json:IMAGE_DIR (repeatable: registers a COCO-format
dataset of your own under NAME for DATASETS.TRAIN/TEST), then KEY VALUE overrides. Writes
OUTPUT_DIR/results.json and metrics.json.
"""

import sys

from pretrain.errors import one_line_errors
from transfer.engine import run

from detectron2.engine import default_argument_parser  # isort: skip  (after transfer: _C fallback)


@one_line_errors
def main(argv=None):
    parser = default_argument_parser()
    parser.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="NAME=ANNOTATIONS.json:IMAGE_DIR",
        help="register a COCO-format dataset under NAME (repeatable)",
    )
    args = parser.parse_args(argv)
    run(
        args.config_file,
        opts=args.opts,
        num_gpus=args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        resume=args.resume,
        eval_only=args.eval_only,
        datasets=args.dataset,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
