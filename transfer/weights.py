"""Convert ResNet checkpoints to Detectron2 weights and prove the conversion numerically.

Detectron2 only *warns* when checkpoint keys do not match, so a badly converted file silently
trains from scratch. ``convert`` therefore (1) maps torchvision names to Detectron2's with an
explicit table, refusing anything it does not recognise, (2) loads the result with Detectron2's
own ``DetectionCheckpointer`` into Detectron2's own ResNet under the prefix a detector uses
(``backbone.bottom_up.``), failing on any missing or unused key, and (3) compares res2..res5 with
the source network's layer1..layer4 on a random batch. Only then are OUT and its ``.json``
(report + the config keys a transfer run must set) moved into place.

Inputs: ring-nce pretraining checkpoints (docs/design.md) and the layouts public
self-supervised ResNet checkpoints ship in (MoCo v1/v2/v3, SimSiam, DINO, SwAV, Barlow Twins,
VICReg, BYOL, VISSL, mmselfsup, solo-learn, lightly, timm, torchvision: ``transfer.layouts``),
read by ``transfer.sources``. CMC checkpoints are refused: their encoders read Lab channels and
L is a nonlinear function of RGB, so no first convolution reproduces them on RGB input.
"""

import json
import os
import pickle
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn

from pretrain.backbones import build_backbone
from pretrain.data import IMAGENET_MEAN, IMAGENET_STD
from transfer.checkpointer import RecordingCheckpointer
from transfer.modeling import build_any_width_resnet_backbone, is_narrow_basic_resnet
from transfer.sources import (  # noqa: F401  (FORMATS: part of this module's API)
    FORMATS,
    ConversionError,
    SourceBackbone,
    describe_keys,
    read_source,
)

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


# ---------------------------------------------------------------- architecture


def _check_all_tensors(state: dict) -> None:
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ConversionError(
            f"backbone entries {describe_keys(not_tensors)} are not tensors: the checkpoint is "
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
            f"{describe_keys(missing) or 'none'}; unexpected "
            f"{describe_keys(incompatible.unexpected_keys) or 'none'}; re-export it"
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
    if is_narrow_basic_resnet(cfg.MODEL.RESNETS):
        # Detectron2's builder asserts 64 res2 channels for ResNet-18/34; transfer runs build
        # these with transfer.modeling's builder (Detectron2's own blocks), so verify with it.
        return build_any_width_resnet_backbone(cfg, input_shape)
    return build_resnet_backbone(cfg, input_shape)


def load_like_a_detector(weights_path: Path, resnet: nn.Module) -> None:
    """Load the file as a detector would (``backbone.bottom_up.`` prefix, name heuristics)."""
    detector = nn.Module()
    detector.backbone = nn.Module()
    detector.backbone.bottom_up = resnet
    checkpointer = RecordingCheckpointer(detector)
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
                f"({describe_keys(keys)}): this is a converter bug, please report it"
            )


def check_key_coverage(converted: dict, resnet: nn.Module) -> None:
    """Every Detectron2 backbone tensor in the file, and nothing else."""
    expected = set(resnet.state_dict())
    missing, unused = sorted(expected - set(converted)), sorted(set(converted) - expected)
    if missing or unused:
        raise ConversionError(
            f"the checkpoint does not fill Detectron2's ResNet exactly: missing "
            f"{describe_keys(missing) or 'none'}; unused {describe_keys(unused) or 'none'}; "
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
