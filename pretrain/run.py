"""Pretrain a ResNet: ``python pretrain/run.py --config FILE [key=value ...]``.

Under ``torchrun`` each process runs this same command; the process group comes from the
environment. Project errors print one ``error: ...`` line and exit with status 2.
"""

import argparse
import json
import os
import sys

from pretrain.errors import one_line_errors
from pretrain.trainer import load_pretrain_config, train


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config (configs/pretrain/...)")
    parser.add_argument(
        "overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=0.1"
    )
    return parser.parse_args(argv)


@one_line_errors
def main(argv=None):
    args = parse_args(argv)
    metrics = train(load_pretrain_config(args.config, args.overrides))
    if int(os.environ.get("RANK", "0")) == 0:  # one summary line per run, not per process
        print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
