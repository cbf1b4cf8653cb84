"""Detectron2 backbones for ResNet-18/34 narrower than 64 channels (width multiplier < 1).

Detectron2 v0.6's ``build_resnet_backbone`` asserts ``RES2_OUT_CHANNELS == 64`` for ResNet-18/34,
although its ``BasicBlock`` stages work at any width. The CPU configurations of this project
pretrain ResNet-18 at width 0.25, so the converter names these builders in ``d2_config``
(``MODEL.BACKBONE.NAME``) for such checkpoints. They are assembled only from Detectron2's own
modules (``BasicStem``, ``BasicBlock``, ``ResNet``, ``FPN``), so parameter names, forward pass and
``FREEZE_AT`` behave exactly as Detectron2's; any other depth is handed to Detectron2's builder.
Importing ``transfer.weights`` (or this module) registers them.
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.backbone.resnet import (
    BasicBlock,
    BasicStem,
    ResNet,
    build_resnet_backbone,
)

BASIC_BLOCKS_PER_STAGE = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
RESNET_BACKBONE_NAME = "build_ring_resnet_backbone"
RESNET_FPN_BACKBONE_NAME = "build_ring_resnet_fpn_backbone"


def _refuse_unsupported_basic_options(resnets_cfg):
    """The options Detectron2 rejects for BasicBlock networks stay rejected here."""
    if any(resnets_cfg.DEFORM_ON_PER_STAGE):
        raise ValueError("MODEL.RESNETS.DEFORM_ON_PER_STAGE is unsupported for ResNet-18/34")
    if resnets_cfg.RES5_DILATION != 1:
        raise ValueError("MODEL.RESNETS.RES5_DILATION must be 1 for ResNet-18/34")
    if resnets_cfg.NUM_GROUPS != 1:
        raise ValueError("MODEL.RESNETS.NUM_GROUPS must be 1 for ResNet-18/34")


def _basic_block_resnet(cfg, input_shape: ShapeSpec) -> ResNet:
    resnets_cfg = cfg.MODEL.RESNETS
    _refuse_unsupported_basic_options(resnets_cfg)
    stem = BasicStem(
        in_channels=input_shape.channels,
        out_channels=resnets_cfg.STEM_OUT_CHANNELS,
        norm=resnets_cfg.NORM,
    )
    in_channels, out_channels = resnets_cfg.STEM_OUT_CHANNELS, resnets_cfg.RES2_OUT_CHANNELS
    stages = []
    for index, num_blocks in enumerate(BASIC_BLOCKS_PER_STAGE[resnets_cfg.DEPTH]):
        # res2 keeps the stem's resolution (the stem already max-pools); later stages halve it.
        first_stride = 1 if index == 0 else 2
        stages.append(
            ResNet.make_stage(
                block_class=BasicBlock,
                num_blocks=num_blocks,
                stride_per_block=[first_stride] + [1] * (num_blocks - 1),
                in_channels=in_channels,
                out_channels=out_channels,
                norm=resnets_cfg.NORM,
            )
        )
        in_channels, out_channels = out_channels, out_channels * 2
    return ResNet(
        stem,
        stages,
        out_features=resnets_cfg.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )


@BACKBONE_REGISTRY.register()
def build_ring_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """Detectron2's ResNet; ResNet-18/34 may be narrower than 64 channels."""
    if cfg.MODEL.RESNETS.DEPTH in BASIC_BLOCKS_PER_STAGE:
        return _basic_block_resnet(cfg, input_shape)
    return build_resnet_backbone(cfg, input_shape)


@BACKBONE_REGISTRY.register()
def build_ring_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """Detectron2's ResNet-FPN over :func:`build_ring_resnet_backbone`."""
    return FPN(
        bottom_up=build_ring_resnet_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
