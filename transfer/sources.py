"""Read a checkpoint and pick the backbone to convert: ring-nce's own format or a public layout.

``read_source`` returns the chosen encoder's ResNet tensors in torchvision names, with what it
dropped (fc, heads, projectors, queues, other encoders) and the layout it detected. The layouts
of public checkpoints are the table in ``transfer.layouts``.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pretrain.checkpoint import FORMAT as RING_NCE_FORMAT
from pretrain.checkpoint import VERSION as RING_NCE_VERSION
from transfer import layouts
from transfer.errors import ConversionError

FORMATS = ("auto", "ring-nce", *layouts.LAYOUT_NAMES)
# Checkpoints saved with numpy RNG state pickle these; they are data, not code.
# numpy 1.x pickles name the array rebuilder numpy.core..., numpy 2.x numpy._core...
_reconstruct = np._core.multiarray._reconstruct
NUMPY_SAFE_GLOBALS = [
    np.ndarray,
    np.dtype,
    _reconstruct,
    (_reconstruct, "numpy.core.multiarray._reconstruct"),
] + [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]


@dataclass
class SourceBackbone:
    """The backbone tensors (torchvision names, no fc) and what is known about their training."""

    state_dict: dict
    fmt: str
    description: str
    encoder: str | None = None
    meta: dict = field(default_factory=dict)
    dropped: list = field(default_factory=list)


# ---------------------------------------------------------------- reading the checkpoint


def load_checkpoint(path: Path):
    """``torch.load`` without running arbitrary pickled code; clear errors for non-checkpoints."""
    if not path.is_file():
        raise ConversionError(f"checkpoint not found: {path} (give the path of a .pth file)")
    if path.stat().st_size == 0:
        raise ConversionError(f"{path} is empty (0 bytes): the save was interrupted; re-export it")
    try:
        with torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for foreign or truncated files
        raise ConversionError(_load_failure_message(path, error)) from error


def _load_failure_message(path: Path, error: Exception) -> str:
    if _looks_like_text(path):
        return f"{path} is a text file, not a PyTorch checkpoint: give a file written by torch.save"
    if path.suffix == ".pkl":
        return (
            f"{path} is a plain pickle (.pkl), e.g. converted Detectron2 weights, which need no "
            "conversion: give the torch.save checkpoint (.pth) it came from"
        )
    if "Weights only load failed" in str(error):
        unsafe = _unsafe_globals(path)
        objects = f"Python objects ({', '.join(unsafe[:3])})" if unsafe else "content"
        return (
            f"{path} pickles {objects} that torch cannot load safely (weights_only): "
            "save a dict of tensors (model.state_dict()) with torch.save instead"
        )
    text = str(error).strip()
    first_line = text.splitlines()[0][:120] if text else "no message"
    return (
        f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {first_line}); "
        "it is truncated or of another kind: give a file written by torch.save"
    )


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a torch.save zip file at all: the caller reports it as unreadable
        return []


def _looks_like_text(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(512)
    try:
        return all(line.isprintable() for line in head.decode("utf-8").splitlines())
    except UnicodeDecodeError:
        return False


def describe_keys(keys, limit=3) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def _source_from_ring_nce(obj: dict, encoder: str | None, path: Path) -> SourceBackbone:
    if obj.get("version") != RING_NCE_VERSION:
        raise ConversionError(
            f"{path} is a ring-nce checkpoint of version {obj.get('version')!r}; this converter "
            f"reads version {RING_NCE_VERSION}: convert it with the ring-nce that wrote it"
        )
    meta, encoders = obj.get("meta"), obj.get("encoders")
    if not isinstance(meta, dict) or not isinstance(encoders, dict) or not encoders:
        raise ConversionError(
            f"{path} is a ring-nce checkpoint without 'meta' or 'encoders': it is corrupt; "
            "use another epoch's checkpoint"
        )
    if meta.get("method") == "cmc" or {"l", "ab"} <= set(encoders):
        raise ConversionError(
            f"{path} is a CMC checkpoint: its encoders read Lab channels (L, ab) and L is a "
            "nonlinear function of RGB, so no first convolution reproduces them on RGB images; "
            "convert a checkpoint of an RGB method (moco, ir, simclr) instead"
        )
    name = encoder or meta.get("default_encoder")
    if name is None and len(encoders) == 1:
        name = next(iter(encoders))
    if name not in encoders:
        raise ConversionError(
            f"{path} has no encoder {name!r}; choose one with --encoder: "
            f"{', '.join(sorted(encoders))}"
        )
    if meta.get("stem", "imagenet") != "imagenet":
        raise ConversionError(_stem_message(path, meta.get("stem")))
    state = dict(encoders[name])
    dropped = [f"fc ({k})" for k in state if k.startswith("fc.")]
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    dropped += [f"encoder {other}" for other in sorted(encoders) if other != name]
    dropped += ["model (heads, queues, banks)"] if "model" in obj else []
    description = (
        f"ring-nce checkpoint (method {meta.get('method')}, sampler {meta.get('sampler')}, "
        f"epoch {obj.get('epoch')}), encoder '{name}'"
    )
    return SourceBackbone(state, "ring-nce", description, encoder=name, meta=meta, dropped=dropped)


def _stem_message(path: Path, stem) -> str:
    return (
        f"{path} was pretrained with the {stem!r} stem (3x3 stride-1 conv1, no max-pool), which "
        "Detectron2's BasicStem (7x7 stride-2 conv1 + max-pool) cannot express: pretrain with "
        "stem=imagenet to transfer to Detectron2"
    )


# ---------------------------------------------------------------- public layouts


def _choose_encoder(obj: dict, layout, encoder: str | None, path: Path):
    name = encoder or layout.default_encoder
    if name not in layout.encoders:
        raise ConversionError(
            f"--encoder {name}: {path} is in the {layout.name} layout ({layout.title}), whose "
            f"encoders are {', '.join(layout.encoders)} (default {layout.default_encoder})"
        )
    found = layouts.find_encoder(obj, layout, name)
    if found is None:
        present = [other for other in layout.encoders if layouts.find_encoder(obj, layout, other)]
        raise ConversionError(
            f"--encoder {name}: {path} is in the {layout.name} layout ({layout.title}) but has "
            f"no {name} encoder (no ResNet at '{layout.encoders[name][0]}'): choose one of "
            f"{', '.join(present)}"
        )
    return name, found


def _source_from_layout(obj: dict, layout, encoder: str | None, path: Path) -> SourceBackbone:
    name, (place, backbone, others) = _choose_encoder(obj, layout, encoder, path)
    other_encoders = [
        f"encoder {other}"
        for other in layout.encoders
        if other != name and layouts.find_encoder(obj, layout, other)
    ]
    description = (
        f"layout {layout.name} ({layout.title}; per {layout.source}), encoder '{name}' at '{place}'"
    )
    return SourceBackbone(
        backbone, layout.name, description, encoder=name, dropped=other_encoders + others
    )


def read_source(path: Path, fmt: str = "auto", encoder: str | None = None) -> SourceBackbone:
    """Detect the checkpoint layout and return the chosen encoder's backbone tensors."""
    if fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    obj = load_checkpoint(path)
    if not isinstance(obj, dict):
        raise ConversionError(
            f"{path} holds a {type(obj).__name__}, not a dict of tensors: save model.state_dict()"
        )
    is_ring_nce = obj.get("format") == RING_NCE_FORMAT
    if fmt in ("auto", "ring-nce") and is_ring_nce:
        return _source_from_ring_nce(obj, encoder, path)
    if fmt == "ring-nce":
        raise ConversionError(
            f"{path} is not a ring-nce checkpoint (no format '{RING_NCE_FORMAT}'); "
            "use --format auto"
        )
    names = layouts.LAYOUT_NAMES if fmt == "auto" else (fmt,)
    layout = None if is_ring_nce else layouts.detect(obj, names)
    if layout is None:
        raise ConversionError(_unknown_layout_message(path, obj, fmt))
    return _source_from_layout(obj, layout, encoder, path)


def _unknown_layout_message(path: Path, obj: dict, fmt: str) -> str:
    keys = [str(key) for key in obj]
    if any(key.endswith("stem.conv1.weight") for key in layouts.key_paths(obj)):
        return (
            f"{path} already has Detectron2 names (stem.conv1, res2..res5): it needs no conversion "
            "(give it to MODEL.WEIGHTS), or convert the pretraining checkpoint it came from"
        )
    nearest = layouts.nearest_layout(obj) if fmt == "auto" else layouts.layout_named(fmt)
    what = "in any known layout" if fmt == "auto" else f"in the {fmt} layout"
    return (
        f"{path} holds no ResNet {what} (top-level keys: {describe_keys(keys, 6) or 'none'}); "
        f"nearest known layout: {nearest.name} ({nearest.title}), which keeps the ResNet at "
        f"'{nearest.encoders[nearest.default_encoder][0]}conv1.weight': re-save the backbone "
        "as a torchvision state dict, or pass --format with one of "
        f"{', '.join(layouts.LAYOUT_NAMES)}"
    )
