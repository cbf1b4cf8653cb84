"""Detectron2 components the transfer configs name; importing this module registers them.

- ``Res5ROIHeadsExtraNorm``: the C4 ROI head of the self-supervised VOC/COCO C4 recipe. The
  pretrained res5 stage runs as the box head and its output gets one more normalisation layer,
  because the backbone is fine-tuned with (Sync)BN and the new box predictor otherwise sees
  unnormalised features.
- ``build_any_width_resnet_backbone`` / ``build_any_width_resnet_fpn_backbone``: ResNet-18/34
  with any res2 width (our CPU pretraining uses width-multiplied ResNet-18); Detectron2's own
  builder asserts 64 channels. Deeper ResNets go to Detectron2's builder unchanged.
"""

from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.backbone.resnet import (
    BasicBlock,
    BasicStem,
    ResNet,
    build_resnet_backbone,
)
from detectron2.modeling.roi_heads import Res5ROIHeads
from torch import nn

from pretrain.backbones import BASIC_BLOCKS_PER_STAGE


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    @classmethod
    def _build_res5_block(cls, cfg):
        res5, out_channels = super()._build_res5_block(cfg)
        res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return res5, out_channels


def is_narrow_basic_resnet(resnets_cfg) -> bool:
    """ResNet-18/34 whose res2 is not 64 channels wide: Detectron2's own builder refuses it, so
    transfer runs and the converter's verification both build it with ours."""
    return resnets_cfg.DEPTH in BASIC_BLOCKS_PER_STAGE and resnets_cfg.RES2_OUT_CHANNELS != 64


def basic_block_stages(depth, stem_channels, res2_channels, norm):
    stages = []
    in_channels, out_channels = stem_channels, res2_channels
    for index, num_blocks in enumerate(BASIC_BLOCKS_PER_STAGE[depth]):
        first_stride = 1 if index == 0 else 2
        stages.append(
            ResNet.make_stage(
                block_class=BasicBlock,
                num_blocks=num_blocks,
                stride_per_block=[first_stride] + [1] * (num_blocks - 1),
                in_channels=in_channels,
                out_channels=out_channels,
                norm=norm,
            )
        )
        in_channels, out_channels = out_channels, out_channels * 2
    return stages


@BACKBONE_REGISTRY.register()
def build_any_width_resnet_backbone(cfg, input_shape):
    resnets = cfg.MODEL.RESNETS
    if resnets.DEPTH not in BASIC_BLOCKS_PER_STAGE:
        return build_resnet_backbone(cfg, input_shape)
    if any(resnets.DEFORM_ON_PER_STAGE) or resnets.RES5_DILATION != 1 or resnets.NUM_GROUPS != 1:
        raise ValueError(
            f"ResNet-{resnets.DEPTH} supports no deformable conv, dilation or groups: set "
            "MODEL.RESNETS.DEFORM_ON_PER_STAGE all False, RES5_DILATION 1, NUM_GROUPS 1"
        )
    stem = BasicStem(input_shape.channels, resnets.STEM_OUT_CHANNELS, norm=resnets.NORM)
    stages = basic_block_stages(
        resnets.DEPTH, resnets.STEM_OUT_CHANNELS, resnets.RES2_OUT_CHANNELS, resnets.NORM
    )
    return ResNet(
        stem, stages, out_features=resnets.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT
    )


@BACKBONE_REGISTRY.register()
def build_any_width_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    return FPN(
        bottom_up=build_any_width_resnet_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


def res5_head_parameter_prefix(model):
    """Prefix of the pretrained res5 stage inside a C4 ROI head, or None for other heads."""
    heads = getattr(model, "roi_heads", None)
    if isinstance(heads, Res5ROIHeads) and isinstance(heads.res5, nn.Sequential):
        return "roi_heads.res5."
    return None
