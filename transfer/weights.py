"""Convert ResNet checkpoints to Detectron2 weights and prove the conversion numerically.

Detectron2 only *warns* when checkpoint keys do not match, so a badly converted file silently
trains from scratch. ``convert`` therefore (1) maps torchvision names to Detectron2's with an
explicit table, refusing anything it does not recognise, (2) loads the result with Detectron2's
own ``DetectionCheckpointer`` into Detectron2's own ResNet under the prefix a detector uses
(``backbone.bottom_up.``), failing on any missing or unused key, and (3) compares res2..res5 with
the source network's layer1..layer4 on a random batch. Only then are OUT and its ``.json``
(report + the config keys a transfer run must set) moved into place.

Inputs: ring-nce pretraining checkpoints (docs/design.md), MoCo-style ``state_dict`` with
``module.encoder_q.`` / ``module.encoder_k.`` prefixes, ``backbone.``-prefixed state dicts and
plain torchvision ResNet state dicts (fc allowed). CMC checkpoints are refused: their encoders
read Lab channels and L is a nonlinear function of RGB, so no first convolution reproduces them
on RGB input.
"""

import json
import os
import pickle
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn

from pretrain.backbones import build_backbone
from pretrain.errors import PretrainError
from transfer.modeling import build_any_width_resnet_backbone

RING_NCE_FORMAT = "ring-nce-pretrain"
RING_NCE_VERSION = 1
FORMATS = ("auto", "ring-nce", "moco", "backbone", "torchvision")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TOLERANCE = 1e-4
VERIFY_BATCH_SHAPE = (2, 3, 64, 64)
STAGES = ("res2", "res3", "res4", "res5")
AUTHOR = "ring-nce transfer.weights"
DEPTH_BY_LAYOUT = {
    ("basic", (2, 2, 2, 2)): 18,
    ("basic", (3, 4, 6, 3)): 34,
    ("bottleneck", (3, 4, 6, 3)): 50,
    ("bottleneck", (3, 4, 23, 3)): 101,
    ("bottleneck", (3, 8, 36, 3)): 152,
}
# Checkpoints saved with numpy RNG state pickle these; they are data, not code.
# numpy 1.x pickles name the array rebuilder numpy.core..., numpy 2.x numpy._core...
_reconstruct = np._core.multiarray._reconstruct
NUMPY_SAFE_GLOBALS = [
    np.ndarray,
    np.dtype,
    _reconstruct,
    (_reconstruct, "numpy.core.multiarray._reconstruct"),
] + [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]


class ConversionError(PretrainError):
    """A checkpoint that cannot be converted; the message says why and what to do instead."""


@dataclass(frozen=True)
class ResNetLayout:
    """What Detectron2 needs to rebuild the network, read off the tensors themselves."""

    depth: int
    block: str  # "basic" or "bottleneck"
    stem_channels: int
    res2_channels: int
    bottleneck_channels: int  # res2's inner width; equals stem_channels for basic blocks

    @property
    def arch(self) -> str:
        return f"resnet{self.depth}"

    @property
    def width(self) -> float:
        return self.stem_channels / 64


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


def _prefixes_of_resnets(state: dict) -> list[str]:
    """Every prefix P under which P + 'conv1.weight' and P + 'layer1.0.conv1.weight' exist."""
    anchor = "layer1.0.conv1.weight"
    prefixes = [key[: -len(anchor)] for key in _string_keys(state) if key.endswith(anchor)]
    return sorted(p for p in prefixes if f"{p}conv1.weight" in state)


def _string_keys(state: dict) -> list[str]:
    return [key for key in state if isinstance(key, str)]


def _format_of_prefix(prefix: str) -> str:
    if "encoder_q." in prefix or "encoder_k." in prefix:
        return "moco"
    if prefix.endswith("backbone."):
        return "backbone"
    return "torchvision"


def _tensor_dicts(obj: dict):
    """The checkpoint itself and the usual containers inside it, in order of preference."""
    yield "", obj
    for name in ("state_dict", "model", "module"):
        if isinstance(obj.get(name), dict):
            yield f"['{name}']", obj[name]


MOCO_ENCODER_PREFIXES = {"query": "encoder_q.", "key": "encoder_k."}


def _choose_prefix(prefixes: list[str], encoder: str | None, path: Path) -> str:
    """The one ResNet to convert; MoCo's query encoder unless --encoder says otherwise."""
    moco = [p for p in prefixes if _format_of_prefix(p) == "moco"]
    if encoder is not None and encoder not in MOCO_ENCODER_PREFIXES:
        raise ConversionError(
            f"--encoder {encoder!r} is not query or key, the encoders a state dict can hold"
        )
    if len(prefixes) == 1 and not moco:
        if encoder not in (None, "query"):
            raise ConversionError(
                f"--encoder {encoder}: {path} holds a single ResNet (prefix "
                f"'{prefixes[0]}'); omit --encoder"
            )
        return prefixes[0]
    wanted = MOCO_ENCODER_PREFIXES[encoder or "query"]
    matches = [p for p in moco if p.endswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    raise ConversionError(
        f"{path} holds ResNets under prefixes {', '.join(repr(p) for p in prefixes)}, none or "
        f"several of them the {encoder or 'query'} encoder: pick another --encoder or --format"
    )


def _source_from_state_dict(obj: dict, fmt: str, encoder: str | None, path: Path):
    for where, state in _tensor_dicts(obj):
        prefixes = _prefixes_of_resnets(state)
        if fmt != "auto":
            prefixes = [p for p in prefixes if _format_of_prefix(p) == fmt]
        if not prefixes:
            continue
        prefix = _choose_prefix(prefixes, encoder, path)
        keys = _string_keys(state)
        backbone = {k[len(prefix) :]: state[k] for k in keys if k.startswith(prefix)}
        dropped = [k for k in keys if not k.startswith(prefix)]
        dropped += [prefix + k for k in backbone if k.startswith("fc.")]
        backbone = {k: v for k, v in backbone.items() if not k.startswith("fc.")}
        detected = _format_of_prefix(prefix)
        name = {"moco": "query" if "encoder_q." in prefix else "key"}.get(detected)
        description = f"{detected} state dict{where}, prefix '{prefix}'"
        return SourceBackbone(backbone, detected, description, encoder=name, dropped=dropped)
    return None


def _describe_keys(keys, limit=3) -> str:
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
    source = None if is_ring_nce else _source_from_state_dict(obj, fmt, encoder, path)
    if source is None:
        raise ConversionError(_no_resnet_message(path, obj, fmt))
    return source


def _no_resnet_message(path: Path, obj: dict, fmt: str) -> str:
    keys = [str(key) for _, state in _tensor_dicts(obj) for key in state]
    if any(key.endswith("stem.conv1.weight") for key in keys):
        return (
            f"{path} already has Detectron2 names (stem.conv1, res2..res5): it needs no conversion "
            "(give it to MODEL.WEIGHTS), or convert the pretraining checkpoint it came from"
        )
    wanted = "ResNet" if fmt == "auto" else f"{fmt}-style ResNet"
    return (
        f"{path} holds no {wanted} (no keys like 'conv1.weight' + 'layer1.0.conv1.weight'; "
        f"found {_describe_keys(keys[:50] or ['nothing'])}): only ResNet checkpoints convert"
    )


# ---------------------------------------------------------------- architecture


def _check_all_tensors(state: dict) -> None:
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ConversionError(
            f"backbone entries {_describe_keys(not_tensors)} are not tensors: the checkpoint is "
            "corrupt; re-export it"
        )


def _blocks_per_stage(state: dict) -> tuple[int, ...]:
    counts = []
    for stage in range(1, 5):
        block_key = re.compile(rf"^layer{stage}\.(\d+)\.")
        indices = {int(m.group(1)) for k in state if (m := block_key.match(k))}
        if not indices or indices != set(range(len(indices))):
            raise ConversionError(
                f"the checkpoint's layer{stage} is missing or has gaps (blocks "
                f"{sorted(indices)}): the file is truncated or not a ResNet; re-export it"
            )
        counts.append(len(indices))
    return tuple(counts)


def infer_layout(state: dict) -> ResNetLayout:
    """Depth, block type and channel widths of a torchvision-named ResNet state dict."""
    conv1 = state["conv1.weight"]
    if conv1.dim() != 4 or conv1.shape[-1] != 7:
        kernel = "x".join(map(str, conv1.shape[2:]))
        raise ConversionError(
            f"conv1 is a {kernel} convolution, not 7x7: a CIFAR-style stem cannot be expressed "
            "by Detectron2's BasicStem; pretrain with stem=imagenet to transfer to Detectron2"
        )
    if conv1.shape[1] != 3:
        raise ConversionError(
            f"conv1 takes {conv1.shape[1]} input channels, Detectron2 transfer feeds 3 (RGB): "
            "pretrain on 3-channel input (grayscale repeated to 3 channels)"
        )
    block = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    counts = _blocks_per_stage(state)
    depth = DEPTH_BY_LAYOUT.get((block, counts))
    if depth is None:
        raise ConversionError(
            f"unsupported ResNet layout ({block} blocks {list(counts)}): "
            "convert resnet18, 34, 50, 101 or 152"
        )
    if "layer1.0.conv2.weight" not in state:  # conv3 defines bottlenecks, conv2 every block
        raise ConversionError("the checkpoint lacks layer1.0.conv2.weight: it is truncated")
    inner = state["layer1.0.conv1.weight"].shape[0]
    if state["layer1.0.conv2.weight"].shape[1] != inner:
        raise ConversionError(
            "layer1.0.conv2 is a grouped convolution (ResNeXt): only plain ResNets convert"
        )
    last_conv = "conv3" if block == "bottleneck" else "conv2"
    return ResNetLayout(
        depth=depth,
        block=block,
        stem_channels=conv1.shape[0],
        res2_channels=state[f"layer1.0.{last_conv}.weight"].shape[0],
        bottleneck_channels=inner,
    )


def check_layout_matches_meta(layout: ResNetLayout, meta: dict) -> None:
    """A checkpoint whose meta disagrees with its tensors must not be trusted."""
    if "arch" in meta and meta["arch"] != layout.arch:
        raise ConversionError(
            f"checkpoint meta says arch {meta['arch']} but its tensors are a {layout.arch}: "
            "the checkpoint is inconsistent; re-export it"
        )
    if "width" in meta and abs(float(meta["width"]) - layout.width) > 1e-9:
        raise ConversionError(
            f"checkpoint meta says width {meta['width']} but conv1 has {layout.stem_channels} "
            "channels: the checkpoint is inconsistent; re-export it"
        )


# ---------------------------------------------------------------- names

_STAGE_KEY = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")
_BLOCK_PART = (
    (re.compile(r"^conv([1-3])\.weight$"), r"conv\1.weight"),
    (re.compile(r"^bn([1-3])\.(.+)$"), r"conv\1.norm.\2"),
    (re.compile(r"^downsample\.0\.weight$"), r"shortcut.weight"),
    (re.compile(r"^downsample\.1\.(.+)$"), r"shortcut.norm.\1"),
)


def detectron2_name(name: str) -> str:
    """``layer3.1.bn2.running_var`` -> ``res4.1.conv2.norm.running_var`` (torchvision names)."""
    if name == "conv1.weight":
        return "stem.conv1.weight"
    if name.startswith("bn1."):
        return "stem.conv1.norm." + name[len("bn1.") :]
    match = _STAGE_KEY.match(name)
    if match:
        stage, block, part = match.groups()
        for pattern, replacement in _BLOCK_PART:
            if pattern.match(part):
                return f"res{int(stage) + 1}.{block}.{pattern.sub(replacement, part)}"
    raise ConversionError(
        f"tensor {name!r} is not part of a torchvision ResNet backbone: "
        "the checkpoint is not a plain ResNet (or use --format to pick the right prefix)"
    )


def to_detectron2_names(state: dict) -> dict:
    """Rename every tensor, refusing two tensors that would land on the same Detectron2 key."""
    renamed = {}
    for name, tensor in state.items():
        target = detectron2_name(name)
        if target in renamed:
            raise ConversionError(f"two tensors map to {target}: the checkpoint is corrupt")
        renamed[target] = tensor
    return renamed


def _fill_batch_counters(state: dict) -> dict:
    """BN/SyncBN detectors expect num_batches_tracked; some exporters drop it (momentum ignores
    it, so 0 changes nothing) and its absence would show as missing backbone keys."""
    filled = dict(state)
    for key in state:
        if key.endswith(".running_mean"):
            counter = key[: -len("running_mean")] + "num_batches_tracked"
            filled.setdefault(counter, torch.tensor(0, dtype=torch.long))
    return filled


def to_numpy(state: dict) -> dict:
    # float32 whatever the saved precision: Detectron2 models are float32 and numpy has no bf16.
    return {
        k: (v.detach().float() if v.is_floating_point() else v.detach()).numpy().copy()
        for k, v in state.items()
    }


# ---------------------------------------------------------------- Detectron2 config


def _pixel_stats(source: SourceBackbone, pixel_mean, pixel_std):
    if pixel_mean is not None or pixel_std is not None:
        if pixel_mean is None or pixel_std is None:
            raise ConversionError("give both --pixel-mean and --pixel-std, or neither")
        mean, std, origin = pixel_mean, pixel_std, "given explicitly"
    elif "pixel_mean" in source.meta and "pixel_std" in source.meta:
        mean, std, origin = source.meta["pixel_mean"], source.meta["pixel_std"], "checkpoint meta"
    else:
        mean, std, origin = IMAGENET_MEAN, IMAGENET_STD, "ImageNet default (torchvision)"
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if len(mean) != 3 or len(std) != 3:
        raise ConversionError(f"pixel mean/std need 3 values (R G B), got {mean} / {std}")
    if not all(0 <= m <= 1 for m in mean) or not all(0 < s <= 1 for s in std):
        raise ConversionError(
            f"pixel mean/std {mean} / {std} are not in [0, 1] units: give them as torchvision's "
            "Normalize does (e.g. 0.485 0.456 0.406 / 0.229 0.224 0.225)"
        )
    return mean, std, origin


def detectron2_config(layout: ResNetLayout, mean, std, input_format: str = "RGB") -> dict:
    """Flat dotted Detectron2 keys a transfer run must set for these weights."""
    config = {
        "INPUT.FORMAT": input_format,
        "MODEL.PIXEL_MEAN": [round(255 * m, 6) for m in mean],
        "MODEL.PIXEL_STD": [round(255 * s, 6) for s in std],
        "MODEL.RESNETS.DEPTH": layout.depth,
        "MODEL.RESNETS.STRIDE_IN_1X1": False,
        "MODEL.RESNETS.STEM_OUT_CHANNELS": layout.stem_channels,
        "MODEL.RESNETS.RES2_OUT_CHANNELS": layout.res2_channels,
        "MODEL.RESNETS.NUM_GROUPS": 1,
    }
    if layout.block == "bottleneck":
        config["MODEL.RESNETS.WIDTH_PER_GROUP"] = layout.bottleneck_channels
    return config


def _input_format(source: SourceBackbone) -> str:
    input_format = source.meta.get("input_format", "RGB")
    if input_format != "RGB":
        raise ConversionError(
            f"checkpoint meta says input_format {input_format!r}; ring-nce pretrains on RGB: "
            "the checkpoint is inconsistent"
        )
    return input_format


# ---------------------------------------------------------------- verification


def build_source_network(source: SourceBackbone, layout: ResNetLayout) -> nn.Module:
    """The network the tensors came from, rebuilt the way its trainer built it."""
    if source.fmt == "ring-nce" or layout.stem_channels != 64:
        net = build_backbone(layout.arch, width=layout.width, stem="imagenet", in_channels=3)
    else:
        net = getattr(torchvision.models, layout.arch)(
            weights=None, width_per_group=layout.bottleneck_channels
        )
        net.fc = nn.Identity()
    incompatible = net.load_state_dict(source.state_dict, strict=False)
    missing = [k for k in incompatible.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or incompatible.unexpected_keys:
        raise ConversionError(
            f"the checkpoint does not fit a {layout.arch} of width {layout.width:g}: missing "
            f"{_describe_keys(missing) or 'none'}; unexpected "
            f"{_describe_keys(incompatible.unexpected_keys) or 'none'}; re-export it"
        )
    return net.eval()


def build_detectron2_resnet(config: dict) -> nn.Module:
    """Detectron2's ResNet for ``config`` with every stage output and no frozen layers."""
    cfg = get_cfg()
    cfg.merge_from_list([item for pair in config.items() for item in pair])
    cfg.MODEL.RESNETS.OUT_FEATURES = list(STAGES)
    cfg.MODEL.RESNETS.NORM = "BN"  # BN keeps num_batches_tracked, so every file key is checked
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    if layout_is_narrow_basic(cfg.MODEL.RESNETS):
        # Detectron2's builder asserts 64 res2 channels for ResNet-18/34; transfer runs build
        # these with transfer.modeling's builder (Detectron2's own blocks), so verify with it.
        return build_any_width_resnet_backbone(cfg, input_shape)
    return build_resnet_backbone(cfg, input_shape)


def layout_is_narrow_basic(resnets_cfg) -> bool:
    return resnets_cfg.DEPTH in (18, 34) and resnets_cfg.RES2_OUT_CHANNELS != 64


class _RecordingCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer, keeping the incompatible keys it would only log."""

    def _log_incompatible_keys(self, incompatible):
        self.incompatible = incompatible
        super()._log_incompatible_keys(incompatible)


def load_like_a_detector(weights_path: Path, resnet: nn.Module) -> None:
    """Load the file as a detector would (``backbone.bottom_up.`` prefix, name heuristics)."""
    detector = nn.Module()
    detector.backbone = nn.Module()
    detector.backbone.bottom_up = resnet
    checkpointer = _RecordingCheckpointer(detector)
    checkpointer.load(str(weights_path))
    incompatible = checkpointer.incompatible
    problems = [
        ("missing", incompatible.missing_keys),
        ("unexpected", incompatible.unexpected_keys),
        ("wrong shape", [k for k, *_ in incompatible.incorrect_shapes]),
    ]
    for kind, keys in problems:
        if keys:
            raise ConversionError(
                f"Detectron2 loads the converted file with {kind} keys "
                f"({_describe_keys(keys)}): this is a converter bug, please report it"
            )


def check_key_coverage(converted: dict, resnet: nn.Module) -> None:
    """Every Detectron2 backbone tensor in the file, and nothing else."""
    expected = set(resnet.state_dict())
    missing, unused = sorted(expected - set(converted)), sorted(set(converted) - expected)
    if missing or unused:
        raise ConversionError(
            f"the checkpoint does not fill Detectron2's ResNet exactly: missing "
            f"{_describe_keys(missing) or 'none'}; unused {_describe_keys(unused) or 'none'}; "
            "the file is incomplete or not a plain ResNet: re-export it"
        )


def source_stage_outputs(net: nn.Module, images: torch.Tensor) -> dict:
    x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
    outputs = {}
    for index, stage in enumerate(STAGES, start=1):
        x = getattr(net, f"layer{index}")(x)
        outputs[stage] = x
    return outputs


@torch.no_grad()
def compare_outputs(net: nn.Module, resnet: nn.Module) -> dict:
    """Max |difference| per stage between the source network and Detectron2's ResNet."""
    images = torch.randn(VERIFY_BATCH_SHAPE, generator=torch.Generator().manual_seed(0))
    expected, actual = source_stage_outputs(net, images), resnet.eval()(images)
    differences = {}
    for stage in STAGES:
        if expected[stage].shape != actual[stage].shape:
            raise ConversionError(
                f"{stage} output shape {tuple(actual[stage].shape)} differs from the source's "
                f"{tuple(expected[stage].shape)}: this is a converter bug, please report it"
            )
        differences[stage] = (expected[stage] - actual[stage]).abs().max().item()
    return {
        "max_abs_diff": max(differences.values()),
        "max_abs_diff_per_stage": differences,
        "max_abs_output": max(v.abs().max().item() for v in expected.values()),
        "tolerance": TOLERANCE,
        "batch_shape": list(VERIFY_BATCH_SHAPE),
    }


def verify_conversion(weights_path: Path, resnet: nn.Module, source, layout) -> dict:
    """Load the written file into Detectron2's ResNet and compare it with the source network."""
    load_like_a_detector(weights_path, resnet)
    result = compare_outputs(build_source_network(source, layout), resnet)
    if not result["max_abs_diff"] <= TOLERANCE:  # written so that NaN fails too
        raise ConversionError(
            f"Detectron2's ResNet differs from the source network by {result['max_abs_diff']:.3g} "
            f"(tolerance {TOLERANCE:g}): the weights do not transfer faithfully; please report it"
        )
    return result


# ---------------------------------------------------------------- writing


def _temporary_beside(path: Path, suffix: str) -> Path:
    handle, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    return Path(name)


def _check_output_path(out: Path) -> None:
    if out.suffix != ".pkl":
        raise ConversionError(
            f"output {out} must end with .pkl: Detectron2 reads converted weights only from .pkl"
        )
    if not out.parent.is_dir():
        raise ConversionError(f"output directory {out.parent} does not exist: create it first")


def convert(
    src,
    out,
    encoder: str | None = None,
    verify: bool = True,
    fmt: str = "auto",
    pixel_mean=None,
    pixel_std=None,
) -> dict:
    """Convert checkpoint ``src`` to Detectron2 weights ``out`` (.pkl) plus ``out``.json.

    Returns the report (also the JSON's content): detected format, architecture, dropped
    tensors, verification figures and ``d2_config``, the flat Detectron2 keys a transfer run must
    set. Raises ``ConversionError`` with a one-line message; then nothing is written.
    """
    started = time.perf_counter()
    src, out = Path(src), Path(out)
    _check_output_path(out)
    source = read_source(src, fmt=fmt, encoder=encoder)
    _check_all_tensors(source.state_dict)
    layout = infer_layout(source.state_dict)
    check_layout_matches_meta(layout, source.meta)
    mean, std, stats_origin = _pixel_stats(source, pixel_mean, pixel_std)
    config = detectron2_config(layout, mean, std, _input_format(source))
    converted = to_detectron2_names(_fill_batch_counters(source.state_dict))
    resnet = build_detectron2_resnet(config)
    check_key_coverage(converted, resnet)  # cheap, so even --no-verify gets it
    payload = {"model": to_numpy(converted), "__author__": AUTHOR, "matching_heuristics": True}
    report = {
        "source": str(src),
        "output": str(out),
        "format": source.fmt,
        "detected": source.description,
        "encoder": source.encoder,
        "arch": layout.arch,
        "width": layout.width,
        "tensors": len(converted),
        "dropped": source.dropped,
        "pixel_stats": stats_origin,
        "verified": verify,
        "d2_config": config,
    }
    weights_tmp = _temporary_beside(out, ".pkl")
    report_tmp = _temporary_beside(out, ".json")
    try:
        with open(weights_tmp, "wb") as handle:
            pickle.dump(payload, handle, protocol=pickle.HIGHEST_PROTOCOL)
        if verify:
            report["verification"] = verify_conversion(weights_tmp, resnet, source, layout)
        report["seconds"] = round(time.perf_counter() - started, 3)
        report_tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(weights_tmp, out)
        os.replace(report_tmp, out.with_suffix(".json"))
    finally:
        for leftover in (weights_tmp, report_tmp):
            leftover.unlink(missing_ok=True)
    return report
