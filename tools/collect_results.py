"""Gather a transfer sweep's results: ``python tools/collect_results.py SWEEP_DIR``.

Writes SWEEP_DIR/results.md, results.csv and results.png (rows: pretraining; columns: AP, AP50,
AP75 for boxes, masks and keypoints; mean ± std over seeds), prints the markdown, and lists every
run without results with the path of its log. Exit status 0 when every run has results, 1 when
some do not, 2 on bad input.
"""

import argparse
import sys

from launcher.collect import write_reports
from pretrain.errors import one_line_errors


@one_line_errors
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="the output_dir of a submitted sweep")
    args = parser.parse_args(argv)
    markdown, missing = write_reports(args.sweep_dir)
    print(markdown, end="")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
