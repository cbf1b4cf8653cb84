"""The frozen network that embeds a classification task's images, and how it sees them.

- a checkpoint the converter accepts (ring-nce's own or a public layout, ``transfer.sources``):
  its backbone in eval mode, at the ``image_size`` and pixel statistics of its metadata (public
  layouts carry none: 224 px and ImageNet's statistics, as the converter assumes);
- ``random``: a freshly initialised backbone of the architecture of another checkpoint of the
  sweep (its ``like``, by default the first one with a file: the same rule as the Detectron2
  tasks' random init), seeded by the run's seed, so each seed is another random network, seen
  through that checkpoint's input pipeline;
- ``pixels``: the raw-pixel floor, the normalised image itself (pooled to at most 16 x 16: the
  linear probe's cost grows with the dimension).

``fingerprint`` hashes the weights, so the feature cache key changes when they do.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.backbones import build_backbone
from pretrain.data import IMAGENET_MEAN, IMAGENET_STD
from transfer.classification.errors import ClassificationError
from transfer.sources import read_source
from transfer.weights import (
    ConversionError,
    build_source_network,
    check_layout_matches_meta,
    infer_layout,
)

PUBLIC_IMAGE_SIZE = 224
PIXELS_MAX_SIDE = 16  # 768 values: a 28 px glyph keeps its shape (few-shot 58.3 vs 59.9 at 28 px)


@dataclass
class FrozenEncoder:
    network: nn.Module
    image_size: int
    pixel_mean: tuple
    pixel_std: tuple
    fingerprint: str
    description: str


@dataclass(frozen=True)
class Reference:
    """A checkpoint's architecture and input pipeline (what ``random`` and ``pixels`` copy)."""

    arch: str
    width: float
    image_size: int
    pixel_mean: tuple
    pixel_std: tuple


class RawPixels(nn.Module):
    """The normalised image as the feature vector, pooled to at most PIXELS_MAX_SIDE a side."""

    def forward(self, images):
        side = min(PIXELS_MAX_SIDE, images.shape[-1])
        return F.adaptive_avg_pool2d(images, side).flatten(1)


def weights_fingerprint(network):
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _read(entry):
    try:
        source = read_source(Path(entry["path"]), encoder=entry.get("encoder"))
        layout = infer_layout(source.state_dict)
        check_layout_matches_meta(layout, source.meta)
    except ConversionError as error:
        raise ClassificationError(f"cannot evaluate {entry['path']}: {error}") from None
    meta = source.meta
    reference = Reference(
        arch=layout.arch,
        width=layout.width,
        image_size=int(meta.get("image_size", PUBLIC_IMAGE_SIZE)),
        pixel_mean=tuple(float(v) for v in meta.get("pixel_mean", IMAGENET_MEAN)),
        pixel_std=tuple(float(v) for v in meta.get("pixel_std", IMAGENET_STD)),
    )
    return source, layout, reference


def reference_of(entry):
    """The architecture and input pipeline of the checkpoint ``entry`` (a sweep's ``like``),
    which random init and raw pixels copy."""
    if entry is None:
        raise ClassificationError(
            "a 'random' or 'pixels' checkpoint entry copies the architecture and input size of "
            "another checkpoint of the sweep, and this sweep has none: add one"
        )
    return _read(entry)[2]


def through(reference, network, description, fingerprint=None):
    """``network`` seeing images through ``reference``'s input pipeline."""
    fingerprint = fingerprint or weights_fingerprint(network)
    return FrozenEncoder(
        network.eval(),
        reference.image_size,
        reference.pixel_mean,
        reference.pixel_std,
        fingerprint,
        description,
    )


def from_checkpoint(entry):
    source, layout, reference = _read(entry)
    return through(reference, build_source_network(source, layout), source.description)


def random_init(reference, seed):
    torch.manual_seed(seed)
    network = build_backbone(reference.arch, width=reference.width, stem="imagenet")
    description = f"random init {reference.arch} width {reference.width:g} (seed {seed})"
    return through(reference, network, description)


def raw_pixels(reference):
    side = min(reference.image_size, PIXELS_MAX_SIDE)
    return through(reference, RawPixels(), f"raw pixels at {side} px", f"pixels-{PIXELS_MAX_SIDE}")
