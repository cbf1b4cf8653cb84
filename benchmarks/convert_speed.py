"""Print how long converting (and verifying) a ResNet-50 takes on this machine's CPU.

python -m benchmarks.convert_speed [--threads N] [--repeats R]
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from transfer.weights import convert


def time_conversions(arch: str, verify: bool, repeats: int) -> list[float]:
    with tempfile.TemporaryDirectory() as folder:
        src = Path(folder) / f"{arch}.pth"
        torch.save(getattr(torchvision.models, arch)(weights=None).state_dict(), src)
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            convert(src, Path(folder) / f"{arch}.pkl", verify=verify)
            seconds.append(time.perf_counter() - started)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Other processes on the machine distort the figures; say how busy it was.
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for verify in (True, False):
        seconds = time_conversions("resnet50", verify, args.repeats)
        print(
            f"resnet50 convert (verify={verify}, {args.threads} threads): "
            f"median {statistics.median(seconds):.2f} s, min {min(seconds):.2f} s "
            f"over {args.repeats} runs (Detectron2 already imported)"
        )


if __name__ == "__main__":
    main()
