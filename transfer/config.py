"""Build the Detectron2 config of a transfer run: file + overrides + what the weights require.

Modules of the ``transfer`` package may import Detectron2 at the top: the package's ``__init__``
has registered the ``detectron2._C`` fallback before any of them runs.

Everything that can be wrong with a run's inputs is checked here, before any model, data loader or
worker process exists, so bad input costs seconds and raises one ``TransferError`` line.
"""

import json
from pathlib import Path

import torch
from detectron2.config import CfgNode, get_cfg

from pretrain.backbones import DEPTHS
from pretrain.errors import nearest_name
from transfer.errors import TransferError
from transfer.modeling import is_narrow_basic_resnet

# transfer configs that need converted weights say so instead of silently training from scratch
REQUIRED_WEIGHTS = "REQUIRED"
SYNC_NORMS = ("SyncBN", "nnSyncBN", "naiveSyncBN")
# Detectron2's stock builders refuse ResNet-18/34 narrower than 64 channels at res2; ours don't.
NARROW_BACKBONE_BUILDERS = {
    "build_resnet_backbone": "build_any_width_resnet_backbone",
    "build_resnet_fpn_backbone": "build_any_width_resnet_fpn_backbone",
}


def notice(message):
    print(f"[transfer] {message}", flush=True)


def converted_weights_config_path(weights):
    """The ``.json`` the converter writes beside converted ``.pkl`` weights."""
    return Path(weights).with_suffix(".json")


def override_keys(opts):
    """The dotted keys a ``KEY VALUE ...`` list sets."""
    if len(opts) % 2:
        raise TransferError(
            f"overrides must be KEY VALUE pairs, got an odd number ({len(opts)}): {list(opts)}"
        )
    return [str(key) for key in opts[0::2]]


def all_keys(node, prefix=""):
    keys = []
    for name, value in node.items():
        if isinstance(value, CfgNode):
            keys += all_keys(value, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def unknown_key_error(error, source, cfg):
    """Turn yacs' 'Non-existent config key' KeyError into a one-line hint with the nearest key."""
    text = str(error.args[0]) if error.args else str(error)
    key = text.rsplit(":", 1)[-1].strip()
    nearest = nearest_name(key, all_keys(cfg))
    hint = f"did you mean {nearest}?" if nearest else "see detectron2/config/defaults.py"
    return TransferError(f"unknown config key {key} in {source}: {hint}")


def merge_file(cfg, config_file):
    path = Path(config_file)
    if not path.is_file():
        raise TransferError(
            f"config file {config_file} not found: pass an existing yaml, e.g. one under "
            "configs/transfer/"
        )
    try:
        cfg.merge_from_file(str(path))
    except KeyError as error:
        raise unknown_key_error(error, config_file, cfg) from error
    except (ValueError, AssertionError) as error:
        raise TransferError(f"invalid config {config_file}: {error}") from error


def merge_overrides(cfg, opts, source):
    try:
        cfg.merge_from_list(list(opts))
    except KeyError as error:
        raise unknown_key_error(error, source, cfg) from error
    except AssertionError as error:
        # yacs reports an unknown key in a KEY VALUE list as an assertion
        if str(error).startswith("Non-existent key"):
            raise unknown_key_error(error, source, cfg) from error
        raise TransferError(f"invalid override in {source}: {error}") from error
    except ValueError as error:
        raise TransferError(f"invalid override in {source}: {error}") from error


def read_converted_weights_config(weights):
    """``d2_config`` of the converter's json beside ``weights``, or None when there is none."""
    if not weights or "://" in weights:
        return None
    path = converted_weights_config_path(weights)
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise TransferError(
            f"cannot read {path} ({error}): re-run tools/convert_to_d2.py for {weights}"
        ) from error
    d2_config = report.get("d2_config") if isinstance(report, dict) else None
    if not isinstance(d2_config, dict):
        raise TransferError(
            f"{path} has no 'd2_config' mapping: re-run tools/convert_to_d2.py for {weights}"
        )
    return d2_config


def add_project_keys(cfg):
    """``RINGNCE.ARCHITECTURE_FROM``: converted weights (.pkl or its .json) whose network a
    random-init run (``MODEL.WEIGHTS ""``) builds, input statistics included, so the baseline of
    a narrow ResNet-18 is that ResNet-18 and not the config's R50 (launcher.sweep sets it)."""
    cfg.RINGNCE = CfgNode({"ARCHITECTURE_FROM": ""})


def architecture_weights(cfg):
    """The weights whose converter .json sets the network: MODEL.WEIGHTS, or for random init
    RINGNCE.ARCHITECTURE_FROM, which must then have its .json."""
    source = cfg.RINGNCE.ARCHITECTURE_FROM
    if not source:
        return cfg.MODEL.WEIGHTS
    if cfg.MODEL.WEIGHTS:
        raise TransferError(
            'RINGNCE.ARCHITECTURE_FROM is for random init (MODEL.WEIGHTS ""); converted weights '
            "bring their own .json: drop one of the two"
        )
    if not converted_weights_config_path(source).is_file():
        raise TransferError(
            f"RINGNCE.ARCHITECTURE_FROM {source} has no {converted_weights_config_path(source)}: "
            "name weights converted by tools/convert_to_d2.py (the .pkl or its .json)"
        )
    return source


def apply_converted_weights_config(cfg, explicit_keys):
    """Set the keys the converted weights need (pixel statistics, widths), unless overridden."""
    weights = architecture_weights(cfg)
    d2_config = read_converted_weights_config(weights)
    if d2_config is None:
        return []
    applied = {key: value for key, value in d2_config.items() if key not in explicit_keys}
    pairs = [item for key_value in applied.items() for item in key_value]
    merge_overrides(cfg, pairs, str(converted_weights_config_path(weights)))
    if applied:
        notice(
            f"applying {len(applied)} keys from {converted_weights_config_path(weights)} "
            f"(what the converted weights need): {', '.join(applied)}"
        )
    return list(applied)


def sync_norm_keys(node, prefix=""):
    found = []
    for name, value in node.items():
        if isinstance(value, CfgNode):
            found += sync_norm_keys(value, f"{prefix}{name}.")
        elif name == "NORM" and value in SYNC_NORMS:
            found.append(f"{prefix}{name}")
    return found


def set_key(cfg, dotted_key, value):
    *parents, leaf = dotted_key.split(".")
    node = cfg
    for parent in parents:
        node = node[parent]
    node[leaf] = value


def fall_back_from_sync_bn(cfg, world_size):
    """One process has no peers to synchronise with: SyncBN computes exactly BN's statistics.

    Without this, torch's SyncBatchNorm crashes ("Default process group has not been
    initialized" on GPU, "expected input tensor to be on GPU" under a CPU process group).
    """
    if world_size > 1:
        return []
    keys = sync_norm_keys(cfg)
    for key in keys:
        set_key(cfg, key, "BN")
    if keys:
        notice(f"single process: SyncBN -> BN (identical statistics) for {', '.join(keys)}")
    return keys


def choose_device(cfg, num_gpus, num_machines):
    if torch.cuda.is_available():
        return
    if num_gpus * num_machines > 1:
        raise TransferError(
            f"--num-gpus {num_gpus} x {num_machines} machine(s) needs CUDA GPUs (Detectron2's "
            "launch uses NCCL) but this machine has none: use --num-gpus 1 for one CPU process"
        )
    if cfg.MODEL.DEVICE != "cpu":
        notice(f"no CUDA GPU: MODEL.DEVICE {cfg.MODEL.DEVICE} -> cpu")
        cfg.MODEL.DEVICE = "cpu"


def use_any_width_backbone(cfg):
    """Narrow (width-multiplied) ResNet-18/34 need our builder; Detectron2's asserts 64 channels."""
    replacement = NARROW_BACKBONE_BUILDERS.get(cfg.MODEL.BACKBONE.NAME)
    if is_narrow_basic_resnet(cfg.MODEL.RESNETS) and replacement:
        notice(
            f"ResNet-{cfg.MODEL.RESNETS.DEPTH} with {cfg.MODEL.RESNETS.RES2_OUT_CHANNELS} res2 "
            f"channels: MODEL.BACKBONE.NAME {cfg.MODEL.BACKBONE.NAME} -> {replacement}"
        )
        cfg.MODEL.BACKBONE.NAME = replacement


def check_architecture(cfg):
    if cfg.MODEL.RESNETS.DEPTH not in DEPTHS:
        raise TransferError(
            f"MODEL.RESNETS.DEPTH {cfg.MODEL.RESNETS.DEPTH} is not a ResNet depth: use one of "
            f"{', '.join(map(str, DEPTHS))}"
        )
    if cfg.MODEL.RESNETS.DEPTH < 50 and cfg.MODEL.ROI_HEADS.NAME.startswith("Res5ROIHeads"):
        raise TransferError(
            f"C4 configs run res5 as a bottleneck ROI head, which ResNet-"
            f"{cfg.MODEL.RESNETS.DEPTH} does not have: use an FPN config (e.g. "
            "configs/transfer/coco_mask_rcnn_R50_FPN_1x.yaml) for this backbone"
        )


def check_weights_file(cfg, config_file):
    weights = cfg.MODEL.WEIGHTS
    if weights == REQUIRED_WEIGHTS:
        raise TransferError(
            f"{config_file} needs converted weights: pass MODEL.WEIGHTS <file.pkl> (made by "
            "tools/convert_to_d2.py), or use its *_random_init.yaml baseline"
        )
    if weights and "://" not in weights and not Path(weights).is_file():
        raise TransferError(
            f"MODEL.WEIGHTS {weights} not found: convert a checkpoint with tools/convert_to_d2.py, "
            'or set MODEL.WEIGHTS "" for random init'
        )


def check_output_dir(cfg):
    if not cfg.OUTPUT_DIR:
        raise TransferError("OUTPUT_DIR is empty: pass OUTPUT_DIR <folder> on the command line")


def build_config(config_file, opts=(), num_gpus=1, num_machines=1):
    """The frozen config a transfer run uses; raises ``TransferError`` on any bad input."""
    cfg = get_cfg()
    add_project_keys(cfg)
    merge_file(cfg, config_file)
    explicit = override_keys(opts)
    merge_overrides(cfg, opts, "the command-line overrides")
    check_output_dir(cfg)
    check_weights_file(cfg, config_file)
    apply_converted_weights_config(cfg, explicit)
    choose_device(cfg, num_gpus, num_machines)
    fall_back_from_sync_bn(cfg, num_gpus * num_machines)
    use_any_width_backbone(cfg)
    check_architecture(cfg)
    cfg.freeze()
    return cfg
