"""torchvision ResNets with unchanged parameter names, a CIFAR stem and a width multiplier.

Checkpoints hold these state dicts as they are, so they load into ``torchvision.models`` (at
width 1, imagenet stem) and convert to Detectron2, which mirrors the width multiplier with
``STEM_OUT_CHANNELS = 64w``, ``RES2_OUT_CHANNELS = 64w * expansion`` and
``WIDTH_PER_GROUP = 64w``.
"""

from torch import nn
from torchvision.models import resnet

from pretrain.errors import PretrainError

ARCHS = {
    "resnet18": (resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (resnet.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (resnet.Bottleneck, [3, 4, 6, 3]),
    "resnet101": (resnet.Bottleneck, [3, 4, 23, 3]),
    "resnet152": (resnet.Bottleneck, [3, 8, 36, 3]),
}
# The one architecture list: Detectron2 depths for the converter and transfer checks, and the
# basic-block ones (ResNet-18/34) that Detectron2's stock builder cannot make narrow.
DEPTHS = tuple(int(name.removeprefix("resnet")) for name in ARCHS)
BASIC_BLOCKS_PER_STAGE = {
    int(name.removeprefix("resnet")): tuple(layers)
    for name, (block, layers) in ARCHS.items()
    if block is resnet.BasicBlock
}
STEMS = ("imagenet", "cifar")


def stem_channels(width):
    """Channels after conv1 for a width multiplier; every stage must stay a whole number."""
    channels = 64 * width
    if width <= 0 or channels != int(channels):
        raise PretrainError(
            f"width {width} gives {channels} stem channels; use a multiplier w with 64*w a "
            "positive whole number (e.g. 0.25, 0.5, 1)"
        )
    return int(channels)


class ScaledResNet(resnet.ResNet):
    """torchvision's ResNet with all planes scaled by ``width`` and no classifier.

    Built through torchvision's own ``_make_layer`` so every parameter keeps its name
    (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...). ``fc`` is ``Identity``: the forward
    returns the globally pooled features, of size ``feature_dim``.
    """

    def __init__(self, block, layers, width=1.0, stem="imagenet", in_channels=3):
        nn.Module.__init__(self)
        base = stem_channels(width)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = base
        self.dilation = 1
        self.groups = 1
        self.base_width = 64  # bottleneck inner width = planes, as in torchvision's resnet50
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, base, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:  # 32 px inputs: a 7x7/2 conv and a max-pool would leave too little resolution
            self.conv1 = nn.Conv2d(in_channels, base, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, base, layers[0])
        self.layer2 = self._make_layer(block, 2 * base, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * base, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * base, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        self.feature_dim = 8 * base * block.expansion
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


def build_backbone(arch, width=1.0, stem="imagenet", in_channels=3):
    """A torchvision-named ResNet returning pooled features (``fc`` is ``Identity``)."""
    if arch not in ARCHS:
        raise PretrainError(f"unknown arch '{arch}'; choose one of {', '.join(ARCHS)}")
    if stem not in STEMS:
        raise PretrainError(f"unknown stem '{stem}'; choose one of {', '.join(STEMS)}")
    block, layers = ARCHS[arch]
    return ScaledResNet(block, layers, width=width, stem=stem, in_channels=in_channels)


def backbone_state_dict(backbone):
    """The checkpoint form of a backbone: torchvision names, no ``fc`` entries."""
    return {
        k: v.detach().clone() for k, v in backbone.state_dict().items() if not k.startswith("fc.")
    }
