"""Every public checkpoint layout in transfer.layouts: a file written exactly the way that project
saves it (a ResNet-18 standing in for the ResNet-50), converted and verified numerically, the
right encoder chosen, heads dropped; and the unknown-layout error."""

import pytest
import torch
from test_convert_weights import assert_verified, converted_tensors, torchvision_resnet

from transfer import layouts
from transfer.weights import ConversionError, convert

pytestmark = pytest.mark.usefixtures("single_thread")


def state(net, prefix="", without_fc=False):
    return {
        f"{prefix}{k}": v
        for k, v in net.state_dict().items()
        if not (without_fc and k.startswith("fc."))
    }


def head(prefix):
    """A stand-in projector / predictor / prototypes: tensors outside the backbone."""
    return {f"{prefix}0.weight": torch.randn(8, 4), f"{prefix}0.bias": torch.randn(8)}


def sequential_children(net, prefix):
    """lightly: nn.Sequential(*list(resnet.children())[:-1]) names children by index."""
    children = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    renamed = {}
    for key, value in net.state_dict().items():
        first, _, rest = key.partition(".")
        if first in children:
            renamed[f"{prefix}{children.index(first)}.{rest}"] = value
    return renamed


# Each writer returns (checkpoint object, {encoder name: the net stored as that encoder}).
def moco(a, b):
    sd = state(a, "module.encoder_q.") | state(b, "module.encoder_k.")
    sd |= {"module.queue": torch.randn(16, 32), "module.queue_ptr": torch.zeros(1)}
    return {"epoch": 200, "arch": "resnet50", "state_dict": sd, "optimizer": {}}, {
        "query": a,
        "key": b,
    }


def moco_v3(a, b):
    sd = state(a, "module.base_encoder.") | state(b, "module.momentum_encoder.")
    sd |= head("module.predictor.")
    return {"epoch": 100, "arch": "resnet50", "state_dict": sd, "scaler": {}}, {
        "base": a,
        "momentum": b,
    }


def simsiam(a, _):
    sd = state(a, "module.encoder.") | head("module.predictor.")
    return {"epoch": 100, "arch": "resnet50", "state_dict": sd}, {"encoder": a}


def dino_training(a, b):
    student = state(a, "module.backbone.", without_fc=True) | head("module.head.")
    teacher = state(b, "module.backbone.", without_fc=True) | head("module.head.")
    checkpoint = {"student": student, "teacher": teacher, "epoch": 100, "dino_loss": {}}
    return checkpoint, {"teacher": b, "student": a}


def dino_released(a, _):
    return state(a, without_fc=True), {"model": a}


def swav_released(a, _):
    sd = state(a, "module.", without_fc=True) | head("module.projection_head.")
    return sd | {"module.prototypes.weight": torch.randn(30, 8)}, {"model": a}


def swav_training(a, _):
    sd, encoders = swav_released(a, _)
    return {"epoch": 800, "state_dict": sd, "optimizer": {}}, encoders


def barlowtwins(a, _):
    sd = state(a, "module.backbone.", without_fc=True) | head("module.projector.")
    sd |= {"module.bn.running_mean": torch.zeros(8), "module.bn.running_var": torch.ones(8)}
    return {"epoch": 1000, "model": sd, "optimizer": {}}, {"backbone": a}


def vicreg(a, _):
    sd = state(a, "module.backbone.", without_fc=True) | head("module.projector.")
    return {"epoch": 1000, "model": sd, "optimizer": {}}, {"backbone": a}


def byol(a, b):
    sd = state(a, "online_encoder.net.") | head("online_encoder.projector.net.")
    sd |= state(b, "target_encoder.net.") | head("online_predictor.net.")
    return sd, {"online": a, "target": b}


def vissl(a, _):
    trunk = state(a, "_feature_blocks.", without_fc=True)
    model = {"trunk": trunk, "heads": head("0.clustering_layer.")}
    classy = {"base_model": {"model": model, "meta": {}}, "optimizer": {}}
    return {"phase_idx": 3, "iteration": 100, "classy_state_dict": classy}, {"trunk": a}


def mmselfsup(a, b):
    sd = state(a, "backbone.", without_fc=True) | head("neck.mlp.")
    sd |= state(b, "encoder_k.module.0.", without_fc=True) | head("encoder_k.module.1.")
    sd |= {"queue": torch.randn(8, 16), "encoder_k.steps": torch.tensor(7)}
    meta = {"mmengine_version": "0.7.0", "epoch": 200}
    return {"meta": meta, "state_dict": sd, "optimizer": {}}, {"backbone": a, "key": b}


def solo_learn(a, b):
    sd = state(a, "backbone.", without_fc=True) | state(b, "momentum_backbone.", without_fc=True)
    sd |= head("projector.") | head("classifier.") | head("predictor.")
    checkpoint = {"epoch": 400, "global_step": 9, "pytorch-lightning_version": "2.0.0"}
    return checkpoint | {"state_dict": sd, "hyper_parameters": {}}, {
        "backbone": a,
        "momentum": b,
    }


def lightly(a, b):
    sd = sequential_children(a, "backbone.") | sequential_children(b, "backbone_momentum.")
    sd |= head("projection_head.layers.") | head("prediction_head.layers.")
    return {"pytorch-lightning_version": "2.1.0", "state_dict": sd}, {
        "backbone": a,
        "momentum": b,
    }


def timm_training(a, b):
    checkpoint = {"epoch": 99, "arch": "resnet50", "version": 2, "optimizer": {}}
    return checkpoint | {"state_dict": state(a), "state_dict_ema": state(b)}, {
        "model": a,
        "ema": b,
    }


def timm_released(a, _):
    return state(a), {"model": a}


WRITERS = {
    "moco": (moco, "moco"),
    "moco-v3": (moco_v3, "moco-v3"),
    "simsiam": (simsiam, "simsiam"),
    "dino-training": (dino_training, "dino"),
    "dino-released-backbone": (dino_released, "torchvision"),
    "swav-released": (swav_released, "swav"),
    "swav-training": (swav_training, "swav"),
    "barlowtwins": (barlowtwins, "barlowtwins"),
    "vicreg": (vicreg, "vicreg"),
    "byol": (byol, "byol"),
    "vissl": (vissl, "vissl"),
    "mmselfsup": (mmselfsup, "mmselfsup"),
    "solo-learn": (solo_learn, "solo-learn"),
    "lightly": (lightly, "lightly"),
    "timm-training": (timm_training, "timm"),
    "timm-released": (timm_released, "torchvision"),
}
DEFAULT_ENCODER = {"moco": "query", "dino": "teacher", "moco-v3": "base", "byol": "online"}


@pytest.fixture(scope="module")
def two_nets():
    return torchvision_resnet("resnet18", seed=1), torchvision_resnet("resnet18", seed=2)


def write(tmp_path, kind, two_nets):
    writer, layout = WRITERS[kind]
    checkpoint, encoders = writer(*two_nets)
    torch.save(checkpoint, tmp_path / f"{kind}.pth")
    return tmp_path / f"{kind}.pth", layout, encoders


def assert_converted_from(out, net):
    stem = converted_tensors(out)["model"]["stem.conv1.weight"]
    assert torch.equal(torch.from_numpy(stem), net.conv1.weight.detach())


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_each_public_layout_converts_and_verifies(tmp_path, kind, two_nets):
    path, layout, encoders = write(tmp_path, kind, two_nets)
    report = convert(path, tmp_path / "d2.pkl")

    assert report["format"] == layout and f"layout {layout} " in report["detected"]
    default = layouts.layout_named(layout).default_encoder
    assert report["encoder"] == DEFAULT_ENCODER.get(layout, default)
    assert_verified(report)
    assert_converted_from(tmp_path / "d2.pkl", encoders[report["encoder"]])
    # nothing but backbone reaches Detectron2: heads, projectors, queues are dropped
    kept = set(converted_tensors(tmp_path / "d2.pkl")["model"])
    assert all(key.startswith(("stem.", "res")) for key in kept)
    # (the released backbones and VISSL's trunk hold nothing else in the backbone's dict)
    assert report["dropped"] or kind in ("dino-released-backbone", "timm-released", "vissl")


@pytest.mark.parametrize(
    ("kind", "encoder"),
    [
        ("moco-v3", "momentum"),
        ("dino-training", "student"),
        ("byol", "target"),
        ("solo-learn", "momentum"),
        ("lightly", "momentum"),
        ("mmselfsup", "key"),
        ("timm-training", "ema"),
    ],
)
def test_encoder_picks_the_other_encoder(tmp_path, kind, encoder, two_nets):
    path, _, encoders = write(tmp_path, kind, two_nets)
    report = convert(path, tmp_path / "d2.pkl", encoder=encoder)
    assert report["encoder"] == encoder
    assert_verified(report)
    assert_converted_from(tmp_path / "d2.pkl", encoders[encoder])


def test_an_encoder_the_layout_does_not_have_is_named(tmp_path, two_nets):
    path, _, _ = write(tmp_path, "dino-training", two_nets)
    with pytest.raises(ConversionError, match="dino layout.*encoders are teacher, student"):
        convert(path, tmp_path / "d2.pkl", encoder="query")


def test_unknown_layout_lists_top_level_keys_and_the_nearest_layout(tmp_path, two_nets):
    net = two_nets[0]
    sd = state(net, "module.online_net.")  # a layout no project in the table uses
    torch.save({"epoch": 3, "networks": sd}, tmp_path / "odd.pth")
    with pytest.raises(ConversionError) as raised:
        convert(tmp_path / "odd.pth", tmp_path / "d2.pkl")
    message = str(raised.value)
    assert "\n" not in message
    assert "top-level keys: epoch, networks" in message
    assert "nearest known layout: " in message


def test_nearest_layout_is_the_closest_prefix():
    obj = {"state_dict": {"module.encoder_qq.conv1.weight": 0}}
    assert layouts.nearest_layout(obj).name == "moco"
    obj = {"teachr": {"module.backbone.conv1.weight": 0}}
    assert layouts.nearest_layout(obj).name == "dino"
