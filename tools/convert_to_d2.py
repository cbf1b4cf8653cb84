#!/usr/bin/env python
"""Convert a ResNet checkpoint to Detectron2 weights, verified numerically.

    python tools/convert_to_d2.py CKPT OUT.pkl [--encoder NAME] [--no-verify] [--format LAYOUT]
        [--pixel-mean R G B --pixel-std R G B]

The layout is detected (ring-nce's own checkpoints, or the layouts of public checkpoints in
transfer/layouts.py: MoCo v1/v2/v3, SimSiam, DINO, SwAV, Barlow Twins, VICReg, BYOL, VISSL,
mmselfsup/mmpretrain, solo-learn, lightly, timm, torchvision) and printed. --encoder picks among
a file's encoders; the default is the first listed per layout (MoCo: query, MoCo v3: base, DINO:
teacher, BYOL: online, ...), for ring-nce the checkpoint's default_encoder.

Writes OUT.pkl and OUT.json (report + the Detectron2 config keys a transfer run must set) only
when conversion and verification succeed. CMC checkpoints are refused: their encoders read Lab
channels and L is a nonlinear function of RGB, so no RGB first convolution reproduces them. A
CIFAR-stem network is refused too (Detectron2's stem is 7x7 stride 2 + max-pool). See
transfer/weights.py.
"""

import argparse
import sys

from pretrain.errors import one_line_errors
from transfer.layouts import encoders_help
from transfer.weights import FORMATS, convert


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a ring-nce or public ResNet checkpoint (.pth)")
    parser.add_argument("output", help="Detectron2 weights to write (.pkl); .json goes beside it")
    parser.add_argument(
        "--encoder",
        help="which encoder, default first: " + encoders_help() + "; ring-nce: its encoder names",
    )
    parser.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare Detectron2's res2..res5 with the source network (default: on)",
    )
    parser.add_argument("--format", default="auto", choices=FORMATS, dest="fmt")
    parser.add_argument(
        "--pixel-mean", type=float, nargs=3, metavar=("R", "G", "B"), help="[0, 1] units"
    )
    parser.add_argument(
        "--pixel-std", type=float, nargs=3, metavar=("R", "G", "B"), help="[0, 1] units"
    )
    return parser.parse_args(argv)


def describe_dropped(dropped: list, limit: int = 4) -> str:
    if not dropped:
        return "nothing"
    more = f", ... ({len(dropped)} in all)" if len(dropped) > limit else ""
    return ", ".join(dropped[:limit]) + more


def as_opt(value) -> str:
    """A value as Detectron2's command-line opts parse it (Python literals, bare strings)."""
    return value if isinstance(value, str) else repr(value)


def format_report(report: dict) -> str:
    lines = [
        f"detected: {report['detected']}",
        f"network: {report['arch']} width {report['width']:g}, {report['tensors']} tensors written",
        f"dropped: {describe_dropped(report['dropped'])}",
        f"pixel statistics: {report['pixel_stats']}",
    ]
    verification = report.get("verification")
    if verification is None:
        lines.append("verification: SKIPPED (--no-verify): these weights are unchecked")
    else:
        per_stage = ", ".join(
            f"{stage} {diff:.2e}" for stage, diff in verification["max_abs_diff_per_stage"].items()
        )
        lines.append(
            f"verification: max |diff| {verification['max_abs_diff']:.2e} <= "
            f"{verification['tolerance']:g} ({per_stage}); all backbone keys loaded"
        )
    lines.append("a transfer config must set:")
    lines += [f"  {key} {as_opt(value)}" for key, value in report["d2_config"].items()]
    lines.append(f"wrote {report['output']} and its .json ({report['seconds']:.2f} s)")
    return "\n".join(lines)


@one_line_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    report = convert(
        args.checkpoint,
        args.output,
        encoder=args.encoder,
        verify=args.verify,
        fmt=args.fmt,
        pixel_mean=args.pixel_mean,
        pixel_std=args.pixel_std,
    )
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
