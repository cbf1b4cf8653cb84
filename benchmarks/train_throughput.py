#!/usr/bin/env python
"""Images/s of a full pretraining step (MoCo v2, Ring-MoCo v2): synthetic vs loader-fed.

    python -m benchmarks.train_throughput [--preset gpu|cpu|smoke] [--methods moco,ring-moco]
        [--workers N] [--steps N] [--rounds N] [--data-dir DIR] [--threads N] [--json OUT.json]

A step is what ``pretrain.trainer`` does per batch: the project's MoCo method (query forward,
momentum update, shuffle-BN keys, queue, sampler, InfoNCE) under bf16 autocast and
channels_last on a GPU, backward, SGD and schedule step: ``pretrain.trainer.train_step``, which
reads nothing back to the host (the trainer checks the loss every ``log_every_steps``). It is fed
two ways:

- ``synthetic``: two fixed random view batches already on the device (the model's ceiling);
- ``loader``: the trainer's own DataLoader (``pretrain.trainer.train_loader``) over the
  project's dataset and MoCo v2 augmentation (``pretrain.trainer.build_datasets``), on real
  images: generated JPEGs in an image folder (ImageNet-like 500x375 photos; ``gpu``, ``smoke``)
  or Fashion-MNIST upscaled (``cpu``).

Rounds interleave the feeds and methods; each segment skips warm-up steps (worker start,
allocator, autotuning) and times the rest. The figure reported per feed is the median over
rounds of images/s, and ``loader/synthetic`` their ratio; ``data wait`` is the share of the
loader segment spent waiting for a batch (near 0: the GPU is the bottleneck), and
``loader_only`` the rate of the loader alone, iterated without training (what it could feed).

Presets: ``gpu`` = ResNet-50 at 224 px, batch 256, queue 65,536 (issue 8's target: Ring-MoCo
>= 2,000 img/s and loader >= 0.9x synthetic); ``cpu`` = ResNet-18 width 0.25 at 64 px, batch
64, queue 4,096, finishing in a few minutes on 2 cores; ``smoke`` = seconds, for the tests.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from benchmarks.timing import finish_run, machine_facts, median, synchronize
from pretrain.data import load_source
from pretrain.distributed import DistInfo
from pretrain.errors import PretrainError, one_line_errors
from pretrain.gpu_augment import DeviceViews
from pretrain.methods import build_method
from pretrain.samplers import NegativeSampler
from pretrain.trainer import (
    as_config,
    build_datasets,
    build_optimization,
    train_loader,
    train_step,
    views_on_device,
)

METHODS = {"moco": "uniform", "ring-moco": "ring"}  # benchmark name -> sampler
FEEDS = ("synthetic", "loader", "loader_only")
TARGET_IMAGES_PER_SECOND = 2000  # Ring-MoCo v2 ResNet-50 on one H200-class GPU
TARGET_LOADER_OVER_SYNTHETIC = 0.9

PRESETS = {
    "gpu": {
        "device": "cuda",
        "model": {"arch": "resnet50", "width": 1.0, "stem": "imagenet"},
        "image_size": 224,
        "batch": 256,
        "queue": 65536,
        "data": "jpeg",
        "jpeg_count": 1024,
        "jpeg_size": (500, 375),
        "workers": None,  # all CPUs but two (the training process and the pin-memory thread)
        "warmup": 10,
        "rewarm": 3,  # warm-up steps of rounds after the first (workers and cuDNN are warm)
        "steps": 40,
        "rounds": 3,
    },
    "cpu": {
        "device": "cpu",
        "model": {"arch": "resnet18", "width": 0.25, "stem": "imagenet"},
        "image_size": 64,
        "batch": 64,
        "queue": 4096,
        "data": "fashion_mnist",
        "workers": 1,
        "warmup": 3,
        "steps": 30,
        "rounds": 3,
    },
    "smoke": {
        "device": "cpu",
        "model": {"arch": "resnet18", "width": 0.125, "stem": "cifar"},
        "image_size": 16,
        "batch": 4,
        "queue": 32,
        "data": "jpeg",
        "jpeg_count": 8,
        "jpeg_size": (40, 30),
        "workers": 0,  # the loader still runs the dataset and augmentation, in-process
        "warmup": 1,
        "steps": 2,
        "rounds": 1,
    },
}


# ---- data ----------------------------------------------------------------------------------


def write_jpeg_folder(root, count, size, seed=0):
    """An image folder (train/ and val/, two classes) of photo-like JPEGs.

    Smooth random colour fields with fine noise: they compress and decode like photographs
    (tens of KB at 500x375), unlike pure noise (incompressible) or flat colour (trivial).
    Returns the mean file size in bytes.
    """
    generator = np.random.default_rng(seed)
    width, height = size
    sizes = []
    for split, split_count in (("train", count), ("val", max(2, count // 8))):
        for index in range(split_count):
            folder = Path(root) / split / f"class{index % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            coarse = generator.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            field = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
            noise = generator.normal(0, 12, (height, width, 3))
            pixels = np.clip(np.asarray(field, dtype=np.float32) + noise, 0, 255)
            path = folder / f"{index:05d}.jpg"
            Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
            sizes.append(path.stat().st_size)
    return sum(sizes) / len(sizes)


class Repeated(Dataset):
    """``dataset`` cycled ``times`` times: long epochs from a small image folder."""

    def __init__(self, dataset, times):
        self.dataset = dataset
        self.times = times

    def __len__(self):
        return len(self.dataset) * self.times

    def __getitem__(self, index):
        return self.dataset[index % len(self.dataset)]


# ---- config and model ----------------------------------------------------------------------


def benchmark_config(preset, sampler_name, data_name, data_root, workers):
    """A validated pretraining config (``pretrain.defaults``) for one method of a preset."""
    return as_config(
        {
            "method": "moco",
            "device": preset["device"],
            "model": dict(preset["model"]),
            "sampler": {"name": sampler_name},
            "moco": {"queue_size": preset["queue"]},
            "data": {
                "name": "imagefolder" if data_name == "jpeg" else data_name,
                "root": data_root,
                "image_size": preset["image_size"],
                "num_workers": workers,
                "augment_on": preset.get("augment_on", "cpu"),
            },
            "optim": {"batch_size": preset["batch"]},
            "train": {"amp": True, "channels_last": True},
        }
    )


class Trainee:
    """One method's model, optimizer and sampler, stepped by ``pretrain.trainer.train_step``
    itself (the benchmark times the trainer's own step, not a copy)."""

    def __init__(self, cfg, num_samples, device):
        self.device = device
        on_gpu = device.type == "cuda"
        channels_last = on_gpu and cfg.train.channels_last
        self.memory_format = torch.channels_last if channels_last else torch.preserve_format
        self.method = build_method(cfg, num_samples, 3, cfg.data.name).to(device)
        if channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.method.train()
        steps_per_epoch = max(1, num_samples // cfg.optim.batch_size)
        self.optimizer, self.scheduler = build_optimization(cfg, self.method, steps_per_epoch)
        self.sampler = NegativeSampler.from_config(cfg.sampler, cfg.optim.epochs)
        self.use_amp = on_gpu and cfg.train.amp

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.use_amp else nullcontext()

    def to_device(self, views):
        return views_on_device(views, self.device, self.memory_format)

    def loader_views(self, views):  # with augment_on gpu: DeviceViews (build_runs)
        return self.to_device(views)

    def step(self, views, indices):
        loss, _ = train_step(
            self.method, views, indices, self.sampler, self.optimizer, self.scheduler, self.autocast
        )
        return loss


# ---- measurement ---------------------------------------------------------------------------


def synthetic_segment(trainee, batch, image_size, warmup, steps):
    """Images/s with fixed random views resident on the device."""
    views = trainee.to_device([torch.randn(batch, 3, image_size, image_size) for _ in range(2)])
    indices = torch.arange(batch, device=trainee.device)
    for _ in range(warmup):
        trainee.step(views, indices)
    synchronize(trainee.device)
    start = time.perf_counter()
    for _ in range(steps):
        trainee.step(views, indices)
    synchronize(trainee.device)
    return {"images_per_second": batch * steps / (time.perf_counter() - start)}


def loader_segment(trainee, loader, batch, warmup, steps):
    """Images/s through a new iterator of the loader (its persistent workers start within the
    first round's warm-up and are reused after)."""
    iterator = iter(loader)
    waited = 0.0
    try:
        for step in range(warmup + steps):
            if step == warmup:
                synchronize(trainee.device)
                start, waited = time.perf_counter(), 0.0
            fetch_start = time.perf_counter()
            views, _, indices = next(iterator)
            waited += time.perf_counter() - fetch_start
            trainee.step(trainee.loader_views(views), indices.to(trainee.device))
        synchronize(trainee.device)
        elapsed = time.perf_counter() - start
    finally:
        del iterator  # its prefetched batches are dropped; the kept workers wait idle
    return {"images_per_second": batch * steps / elapsed, "data_wait_share": waited / elapsed}


def loader_only_segment(loader, batch, warmup, steps):
    """Images/s of the loader alone (no training): the most it can feed the step."""
    iterator = iter(loader)
    try:
        for step in range(warmup + steps):
            if step == warmup:
                start = time.perf_counter()
            next(iterator)
        elapsed = time.perf_counter() - start
    finally:
        del iterator
    return {"images_per_second": batch * steps / elapsed}


def default_workers(preset):
    if preset["workers"] is not None:
        return preset["workers"]
    return max(1, (os.cpu_count() or 2) - 2)


def prepare_data(preset, args, scratch):
    """``(data name, root, mean JPEG bytes or None)``; generates the JPEG folder if needed."""
    if preset["data"] != "jpeg":
        return preset["data"], None, None
    root = Path(args.data_dir) if args.data_dir else Path(scratch) / "jpeg_folder"
    if (root / "train").is_dir():
        sizes = [p.stat().st_size for p in (root / "train").rglob("*.jpg")]
        if not sizes:
            raise PretrainError(f"{root}/train holds no .jpg images; empty it or pick a new dir")
        return "jpeg", str(root), sum(sizes) / len(sizes)
    print(f"writing {preset['jpeg_count']} JPEGs to {root} ...", file=sys.stderr, flush=True)
    mean_bytes = write_jpeg_folder(root, preset["jpeg_count"], preset["jpeg_size"])
    return "jpeg", str(root), mean_bytes


def build_runs(preset, methods, data_name, data_root, workers, steps):
    """Per method: a ``Trainee`` and the trainer's loader over enough images for a segment."""
    device = torch.device(preset["device"])
    warmup, batch = preset["warmup"], preset["batch"]
    trainees, loaders = {}, {}
    for name in methods:
        cfg = benchmark_config(preset, METHODS[name], data_name, data_root, workers)
        source = load_source(cfg.data)
        train_set, _, _ = build_datasets(cfg, cfg.method, source)
        if len(train_set) < batch:
            raise PretrainError(f"{len(train_set)} training images, fewer than a batch ({batch})")
        needed = (warmup + steps) * batch
        train_set = Repeated(train_set, -(-needed // len(train_set)))
        trainees[name] = Trainee(cfg, len(train_set), device)
        if cfg.data.augment_on == "gpu":  # the trainer's own device-side views
            trainees[name].loader_views = DeviceViews(
                cfg.method, preset["image_size"], source.mean, source.std, 0.2, 2
            ).bind(device, trainees[name].memory_format)
        loaders[name] = train_loader(train_set, batch, 0, cfg, DistInfo(device=device))
    return trainees, loaders


def interleaved_rounds(preset, trainees, loaders, steps, rounds):
    """``{(method, feed): [images/s per round]}`` and ``{method: [data wait share]}``."""
    batch = preset["batch"]
    figures = {(name, feed): [] for name in trainees for feed in FEEDS}
    waits = {name: [] for name in trainees}
    for round_index in range(rounds):
        warmup = preset["warmup"] if round_index == 0 else preset.get("rewarm", preset["warmup"])
        order = FEEDS if round_index % 2 == 0 else FEEDS[::-1]  # alternate who goes first
        for name, trainee in trainees.items():
            for feed in order:
                print(f"round {round_index + 1}/{rounds}: {name} {feed}", file=sys.stderr)
                if feed == "synthetic":
                    result = synthetic_segment(trainee, batch, preset["image_size"], warmup, steps)
                elif feed == "loader_only":
                    result = loader_only_segment(loaders[name], batch, warmup, steps)
                else:
                    result = loader_segment(trainee, loaders[name], batch, warmup, steps)
                    waits[name].append(result["data_wait_share"])
                figures[(name, feed)].append(result["images_per_second"])
    return figures, waits


def summary_row(name, device, figures, waits):
    synthetic = median(figures[(name, "synthetic")])
    loader = median(figures[(name, "loader")])
    return {
        "method": name,
        "device": device,
        "synthetic_images_per_second": synthetic,
        "loader_images_per_second": loader,
        "loader_over_synthetic": loader / synthetic,
        "loader_only_images_per_second": median(figures[(name, "loader_only")]),
        "data_wait_share": median(waits[name]),
        "per_round": {feed: figures[(name, feed)] for feed in FEEDS},
    }


def measure(preset, args, scratch):
    """``(setup, rows)``: the preset's figures for every method in ``args.methods``."""
    device = preset["device"]
    if device == "cuda" and not torch.cuda.is_available():
        raise PretrainError("preset 'gpu' needs a CUDA GPU and none is visible; use --preset cpu")
    data_name, data_root, jpeg_bytes = prepare_data(preset, args, scratch)
    workers = args.workers if args.workers is not None else default_workers(preset)
    steps = args.steps or preset["steps"]
    rounds = args.rounds or preset["rounds"]
    trainees, loaders = build_runs(preset, args.methods, data_name, data_root, workers, steps)
    figures, waits = interleaved_rounds(preset, trainees, loaders, steps, rounds)
    rows = [summary_row(name, device, figures, waits) for name in args.methods]
    setup = {
        "arch": preset["model"]["arch"],
        "width": preset["model"]["width"],
        "image_size": preset["image_size"],
        "batch": preset["batch"],
        "queue": preset["queue"],
        "data": data_name,
        "mean_jpeg_bytes": jpeg_bytes,
        "workers": workers,
        "warmup_steps": preset["warmup"],
        "timed_steps": steps,
        "rounds": rounds,
        "bf16_channels_last": device == "cuda",
    }
    return setup, rows


def verdict(preset_name, row):
    if preset_name != "gpu" or row["method"] != "ring-moco":
        return ""
    misses = []
    if row["loader_images_per_second"] < TARGET_IMAGES_PER_SECOND:
        misses.append(f"loader-fed < {TARGET_IMAGES_PER_SECOND} img/s")
    if row["loader_over_synthetic"] < TARGET_LOADER_OVER_SYNTHETIC:
        misses.append(f"loader/synthetic < {TARGET_LOADER_OVER_SYNTHETIC}")
    return "targets met" if not misses else "MISSED: " + ", ".join(misses)


def print_table(preset_name, setup, rows):
    print(f"setup: {setup}")
    print(
        f"{'method':10} {'device':6} {'synthetic img/s':>15} {'loader img/s':>12} "
        f"{'loader/synth':>12} {'data wait':>9} {'loader-only img/s':>17}  verdict"
    )
    for row in rows:
        print(
            f"{row['method']:10} {row['device']:6} {row['synthetic_images_per_second']:15.1f} "
            f"{row['loader_images_per_second']:12.1f} {row['loader_over_synthetic']:12.2f} "
            f"{row['data_wait_share']:9.0%} {row['loader_only_images_per_second']:17.1f}  "
            f"{verdict(preset_name, row)}"
        )


def parse_methods(text):
    names = text.split(",")
    for name in names:
        if name not in METHODS:
            raise PretrainError(f"unknown method '{name}' in --methods; use {','.join(METHODS)}")
    return names


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=PRESETS, default="cpu")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma list")
    parser.add_argument("--workers", type=int, help="loader workers (default: the preset's)")
    parser.add_argument("--steps", type=int, help="timed steps per segment")
    parser.add_argument("--rounds", type=int, help="interleaved rounds")
    parser.add_argument(
        "--data-dir", help="gpu/smoke presets: JPEG folder to reuse or create (default: temporary)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--augment-on", choices=("cpu", "gpu"), default="cpu", help="data.augment_on"
    )
    parser.add_argument("--json", help="also write the figures and machine facts here")
    return parser.parse_args(argv)


def run(args):
    args.methods = parse_methods(args.methods)
    for option in ("workers", "steps", "rounds", "threads"):
        value = getattr(args, option)
        minimum = 0 if option == "workers" else 1
        if value is not None and value < minimum:
            raise PretrainError(f"--{option} must be >= {minimum}, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = {**PRESETS[args.preset], "augment_on": args.augment_on}
    facts_before = machine_facts()
    print(f"machine: {facts_before}", flush=True)
    scratch = tempfile.mkdtemp(prefix="ring-nce-throughput-")
    try:
        setup, rows = measure(preset, args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_table(args.preset, setup, rows)
    finish_run("train_throughput", args, {"setup": setup}, facts_before, rows)
    return rows


@one_line_errors
def main(argv=None):
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
