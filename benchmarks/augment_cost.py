#!/usr/bin/env python
"""Per-image cost of one MoCo v2 view: the PIL pipeline vs batched tensor ops (augment_on gpu).

    python -m benchmarks.augment_cost [--preset full|smoke] [--devices auto|cpu|cuda|cpu,cuda]
        [--batch N] [--repeats N] [--threads N] [--json OUT.json]

Rows, measured interleaved in one run on the same images (ImageNet-like 500 x 375 photos,
smooth colour fields plus noise, 224 px views):
- ``pil``: ``pretrain.data.augmentation("moco", ...)`` on each PIL image, what a loader worker
  does per view with ``data.augment_on: cpu``;
- ``jpeg_canvas``: JPEG decode + ``ToCanvas`` (the worker's whole job with augment_on gpu);
- ``batched``: ``BatchAugment`` on the batch of uint8 canvases, per image, on each device.
Ratios are pil / batched; with ``--threads 1`` (the default) a CPU row is one core's cost.
"""

import argparse
import io
import sys

import numpy as np
import torch
from PIL import Image

from benchmarks.timing import (
    finish_run,
    interleaved_times,
    machine_facts,
    median,
    resolve_devices,
    synchronize,
)
from pretrain.data import IMAGENET_MEAN, IMAGENET_STD, augmentation
from pretrain.errors import PretrainError, one_line_errors
from pretrain.gpu_augment import BatchAugment, ToCanvas, spec_for

PRESETS = {  # batch, image size, source width x height, repeats
    "full": (64, 224, (500, 375), 5),
    "smoke": (4, 64, (90, 70), 1),
}


def photo_like(count, size, seed=0):
    """PIL images with smooth colour fields and noise (JPEG-compressible like photos)."""
    rng = np.random.default_rng(seed)
    width, height = size
    images = []
    for _ in range(count):
        coarse = rng.uniform(0, 255, size=(6, 8, 3))
        field = np.kron(coarse, np.ones((-(-height // 6), -(-width // 8), 1)))[:height, :width]
        pixels = np.clip(field + rng.normal(0, 20, field.shape), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels))
    return images


def jpeg_bytes(images):
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return encoded


def build_variants(images, image_size, devices):
    pipeline = augmentation("moco", image_size, IMAGENET_MEAN, IMAGENET_STD)
    encoded = jpeg_bytes(images)
    canvas = ToCanvas(max(images[0].size))
    variants = {
        "pil": lambda: [pipeline(image) for image in images],
        "jpeg_canvas": lambda: [
            canvas(Image.open(io.BytesIO(data)).convert("RGB")) for data in encoded
        ],
    }
    pairs = [canvas(image) for image in images]
    augment = BatchAugment(spec_for("moco", image_size, IMAGENET_MEAN, IMAGENET_STD))
    for device in devices:
        canvases = torch.stack([pair[0] for pair in pairs]).to(device)
        sizes = torch.stack([pair[1] for pair in pairs])

        def batched(canvases=canvases, sizes=sizes, device=device):
            augment(canvases, sizes, views=1)
            synchronize(device)  # a GPU row ends when its kernels do

        variants[f"batched_{device.type}"] = batched
    return variants


def measure(args):
    batch, image_size, source_size, repeats = PRESETS[args.preset]
    batch, repeats = args.batch or batch, args.repeats or repeats
    if batch < 1 or repeats < 1:
        raise PretrainError(f"--batch and --repeats must be >= 1, got {batch} and {repeats}")
    devices = resolve_devices(args.devices)
    variants = build_variants(photo_like(batch, source_size), image_size, devices)
    times = interleaved_times(variants, torch.device("cpu"), repeats)
    per_image_ms = {name: 1000 * median(values) / batch for name, values in times.items()}
    return {"batch": batch, "image_size": image_size, "source_size": source_size}, per_image_ms


def print_table(settings, per_image_ms):
    width, height = settings["source_size"]
    print(
        f"one MoCo v2 view at {settings['image_size']} px from {width}x{height} images, "
        f"batch {settings['batch']}, torch threads {torch.get_num_threads()}: ms per image"
    )
    for name, value in per_image_ms.items():
        ratio = per_image_ms["pil"] / value
        print(f"{name:14} {value:9.3f} ms   pil/this {ratio:6.2f}x")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=PRESETS, default="full")
    parser.add_argument("--devices", default="auto", help="auto (CPU, then GPU if present)")
    parser.add_argument("--batch", type=int, help="images per batch (default: the preset's)")
    parser.add_argument("--repeats", type=int, help="timed repetitions (default: the preset's)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", help="also write the figures and machine facts here")
    return parser.parse_args(argv)


@one_line_errors
def main(argv=None):
    args = parse_args(argv)
    if args.threads < 1:
        raise PretrainError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    facts = machine_facts()
    settings, per_image_ms = measure(args)
    print_table(settings, per_image_ms)
    finish_run("augment_cost", args, settings, facts, [per_image_ms])
    return 0


if __name__ == "__main__":
    sys.exit(main())
