"""Gather transfer sweeps into one leaderboard: ``python tools/collect_results.py SWEEP_DIR...``.

Writes results.md, results.csv and results.png (rows: pretraining; columns: AP, AP50, AP75 for
boxes, masks and keypoints per task; mean with a 95% CI over seeds; with a baseline, the paired
difference to it) into the one sweep folder or ``--output``, prints the markdown, and lists every
run without results with the path of its log. The baseline is ``--baseline NAME`` or the sweeps'
``baseline:`` (random init: a ``random`` checkpoint entry, no file). Exit status 0 when every run
has results, 1 when some do not, 2 on bad input.
"""

import argparse
import sys

from launcher.collect import write_reports
from pretrain.errors import one_line_errors


@one_line_errors
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", nargs="+", help="output_dir(s) of submitted sweeps")
    parser.add_argument("--baseline", help="checkpoint name the paired differences are against")
    parser.add_argument("--output", help="folder for the leaderboard (needed for several sweeps)")
    args = parser.parse_args(argv)
    markdown, missing = write_reports(args.sweep_dirs, args.baseline, args.output)
    print(markdown, end="")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
