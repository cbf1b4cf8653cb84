import pytest
import torch
import torchvision

from pretrain.backbones import backbone_state_dict, build_backbone
from pretrain.errors import PretrainError


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_names_and_shapes_match_torchvision(arch):
    ours = backbone_state_dict(build_backbone(arch))
    theirs = getattr(torchvision.models, arch)().state_dict()
    theirs = {k: v for k, v in theirs.items() if not k.startswith("fc.")}
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_checkpoint_state_loads_into_torchvision():
    backbone = build_backbone("resnet18")
    model = torchvision.models.resnet18()
    missing, unexpected = model.load_state_dict(backbone_state_dict(backbone), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    model.fc = torch.nn.Identity()
    model.eval(), backbone.eval()
    image = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(image), backbone(image))


def test_width_scales_every_stage():
    backbone = build_backbone("resnet50", width=0.25)
    assert backbone.conv1.out_channels == 16
    assert backbone.layer1[0].conv1.out_channels == 16  # bottleneck width = 64w
    assert backbone.layer1[0].conv3.out_channels == 64  # res2 out = 256w
    assert backbone.layer4[0].conv3.out_channels == 512
    assert backbone(torch.randn(2, 3, 64, 64)).shape == (2, backbone.feature_dim)
    assert backbone.feature_dim == 512


def test_cifar_stem_keeps_resolution_and_in_channels():
    backbone = build_backbone("resnet18", width=0.125, stem="cifar", in_channels=2)
    assert backbone.conv1.kernel_size == (3, 3) and backbone.conv1.stride == (1, 1)
    assert isinstance(backbone.maxpool, torch.nn.Identity)
    assert backbone.conv1.in_channels == 2
    assert backbone(torch.randn(2, 2, 32, 32)).shape == (2, 64)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"arch": "resnet9"}, "unknown arch 'resnet9'"),
        ({"arch": "resnet18", "stem": "tiny"}, "unknown stem 'tiny'"),
        ({"arch": "resnet18", "width": 0.3}, "width 0.3"),
    ],
)
def test_bad_backbone_arguments(kwargs, message):
    with pytest.raises(PretrainError, match=message):
        build_backbone(**kwargs)
