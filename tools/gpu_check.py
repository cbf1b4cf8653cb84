#!/usr/bin/env python
"""The one device check: what this project does on a GPU, in <= 6.5 minutes, one table + JSON.

    python tools/gpu_check.py [--json OUT.json] [--work-dir DIR]     # the check, one GPU
    python tools/gpu_check.py --study [--json OUT.json]              # ring-vs-uniform study
    python tools/gpu_check.py --tiny [--study]                       # every part on CPU (a test)

Parts, each in its own subprocess with its own time limit (``LIMITS``): a part that fails or
runs out of time is reported as such and the next one runs.

- ``environment``: GPU, CUDA, torch, torchvision, CPUs, Python; which optional packages import;
- ``ring_selection``: ``benchmarks/ring_selection.py`` on CUDA at the MoCo (256 x 65,536) and
  IR (256 x 1,281,167 bank) shapes;
- ``throughput``: ``benchmarks/train_throughput.py --preset gpu``: MoCo v2 and Ring-MoCo v2,
  ResNet-50, 224 px, batch 256, queue 65,536, bf16 + channels_last, synthetic vs loader-fed
  through the trainer's own dataset, augmentation and loader (images/s, data wait share),
  with ``data.augment_on`` cpu (PIL in the workers) and gpu (``pretrain/gpu_augment.py``),
  each figure the median of 3 rounds;
- ``augment_cost``: ``benchmarks/augment_cost.py``: ms per image of one MoCo v2 view, PIL on a
  core vs ``pretrain.gpu_augment`` batched on the GPU (``data.augment_on: gpu``);
- ``bf16_agreement``: the MoCo loss of one batch under bf16 autocast vs fp32 (TF32 off),
  uniform and ring, from the same weights, and float32 similarities, ranks and loss inside
  autocast;
- ``resume_convert``: ``pretrain.trainer.train`` for 100 steps straight, and 50 + stop +
  resume 50 under deterministic algorithms, compared parameter by parameter; then
  ``tools/convert_to_d2.py`` on the result;
- ``detectron2``: Mask R-CNN R50-FPN (on the labelme COCO fixture) and Keypoint R-CNN R50-FPN
  (on the generated keypoint fixture, ``transfer/fixtures.py``), 50 iterations each at 800 px
  from the converted weights through ``transfer.engine.run``, evaluated; s/iter and AP;
- ``study`` (only with ``--study``, a separate run): ``tools/compare_negatives.py``, MoCo,
  uniform vs ring, seeds 0 1 2 on Fashion-MNIST, sized for <= 7 minutes.

On the device machine (Python 3.12 with its own torch, no registry) everything else travels
with the working tree: ``bash tools/prepare_gpu_carry.sh`` builds ``.carry/`` here (wheels of
the missing pure-Python / cp312 packages, the Detectron2 Python package as
``tools/install_detectron2.py`` builds it, Fashion-MNIST and the labelme fixture) and prints
the exact ``run`` call: carry ``.carry``, and a command that installs the wheels into
/tmp/site, sets ``PYTHONPATH`` and ``RINGNCE_CACHE`` and runs this script with
``--json $OUT/gpu_check.json``.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repository's packages uninstalled, as on the device machine

# beside this script, whose folder Python puts on sys.path when it runs the script
from gpu_check_parts import PARTS  # noqa: E402

from pretrain.errors import PretrainError, one_line_errors  # noqa: E402

# seconds per part; the GPU check's sum (380 s) stays within the 480 s call with its start-up
LIMITS = {
    "gpu": {
        "environment": 40,  # first imports compile the carried packages (no .pyc travels)
        "ring_selection": 35,
        "throughput": 150,  # augment_on cpu and gpu, 3 rounds each
        "augment_cost": 20,
        "bf16_agreement": 25,
        "resume_convert": 45,
        "detectron2": 65,
        "study": 420,
    },
    "tiny": {
        "environment": 240,  # a loaded 2-core machine took over 60 s to import it all
        "ring_selection": 120,
        "throughput": 240,
        "augment_cost": 120,
        "bf16_agreement": 120,
        "resume_convert": 240,
        "detectron2": 400,
        "study": 600,
    },
}
CHECK_PARTS = ("environment", "ring_selection", "throughput", "augment_cost", "bf16_agreement")
CHECK_PARTS += ("resume_convert", "detectron2")


def run_part(name, mode, work_dir, limit):
    """One part in a subprocess: ``{"status", "seconds", "figures" or "error"}``."""
    result_path = work_dir / f"{name}.json"
    result_path.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--part", name, "--mode", mode]
    command += ["--work-dir", str(work_dir)]
    started = time.perf_counter()
    # the repository importable from the scripts the parts start (no editable install there)
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=limit, env=env, cwd=REPO
        )
    except subprocess.TimeoutExpired as expired:
        tail = (expired.stderr or b"")[-2000:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return {
            "status": "timeout",
            "seconds": time.perf_counter() - started,
            "error": f"over its {limit} s limit; last output: {last_line(tail)}",
        }
    seconds = time.perf_counter() - started
    if done.returncode == 0 and result_path.is_file():
        return {"status": "ok", "seconds": seconds, **json.loads(result_path.read_text())}
    return {
        "status": "failed",
        "seconds": seconds,
        "error": f"exit {done.returncode}: {last_line(done.stderr or done.stdout)}",
        "stderr_tail": (done.stderr or "")[-3000:],
    }


def last_line(text):
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def summary(figures):
    """A part's headline figures in one cell."""
    cells = []
    for key, value in figures.get("headline", {}).items():
        cells.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return "; ".join(cells)


def print_table(mode, results):
    print(f"gpu_check ({mode}):")
    print(f"{'part':16} {'status':8} {'s':>6}  figures")
    for name, result in results.items():
        text = summary(result) if result["status"] == "ok" else result["error"]
        print(f"{name:16} {result['status']:8} {result['seconds']:6.1f}  {text}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="every part on CPU, small (a test)")
    parser.add_argument("--study", action="store_true", help="run the ring-vs-uniform study")
    parser.add_argument("--json", help="write every part's result here")
    parser.add_argument("--work-dir", help="scratch folder (default: runs/gpu_check[_tiny])")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # the subprocess
    parser.add_argument("--mode", choices=LIMITS, default="gpu", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_one_part(args):
    """Inside a part's subprocess: run it and write its figures for the parent."""
    work_dir = Path(args.work_dir)
    figures = PARTS[args.part](args.mode, work_dir)
    (work_dir / f"{args.part}.json").write_text(json.dumps(figures, indent=2, default=str))
    return 0


@one_line_errors
def main(argv=None):
    args = parse_args(argv)
    if args.part:
        return run_one_part(args)
    mode = "tiny" if args.tiny else "gpu"
    work_dir = Path(args.work_dir or REPO / "runs" / f"gpu_check_{mode}").resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    if mode == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise PretrainError("no CUDA GPU is visible; run with --tiny to check on the CPU")
    names = ("study",) if args.study else CHECK_PARTS
    results = {}
    for name in names:
        results[name] = run_part(name, mode, work_dir, LIMITS[mode][name])
        print(f"{name}: {results[name]['status']} in {results[name]['seconds']:.0f} s", flush=True)
    print_table(mode, results)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"mode": mode, "parts": results}, indent=2))
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
