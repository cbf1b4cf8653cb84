"""transfer.weights: round trips through Detectron2, every input layout, and refusals."""

import json
import pickle

import pytest
import torch
import torchvision
from torch import nn

import transfer.weights as weights
from pretrain.backbones import backbone_state_dict, build_backbone
from pretrain.checkpoint import save_checkpoint
from transfer.weights import ConversionError, convert

FASHION_MEAN, FASHION_STD = (0.286, 0.286, 0.286), (0.353, 0.353, 0.353)


pytestmark = pytest.mark.usefixtures("single_thread")


def randomize(net: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BN affine and running statistics, so a misplaced BN tensor changes outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.normal_(0, 0.05, generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.weight.copy_(0.5 + torch.rand(size, generator=generator))
                module.bias.copy_(0.2 * torch.randn(size, generator=generator))
                module.running_mean.copy_(0.2 * torch.randn(size, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(size, generator=generator))
                module.num_batches_tracked.fill_(17)
    return net.eval()


def torchvision_resnet(arch: str, seed: int = 0) -> nn.Module:
    return randomize(getattr(torchvision.models, arch)(weights=None), seed)


def ring_nce_checkpoint(tmp_path, method, encoders, arch="resnet18", width=1.0, **meta_changes):
    """A pretraining checkpoint written by pretrain.checkpoint, content as docs/design.md."""
    meta = {
        "method": method,
        "sampler": "ring",
        "arch": arch,
        "width": width,
        "stem": "imagenet",
        "in_channels": 3,
        "pixel_mean": list(FASHION_MEAN),
        "pixel_std": list(FASHION_STD),
        "input_format": "RGB",
        "image_size": 64,
        "dataset": "fashion_mnist",
        "default_encoder": {"moco": "query", "cmc": "l"}.get(method, "encoder"),
        **meta_changes,
    }
    checkpoint = {
        "meta": meta,
        "encoders": encoders,
        "model": {"head.0.weight": torch.randn(8, 4), "queue": torch.randn(8, 16)},
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 3,
        "global_step": 30,
        "config": {"method": {"name": method}},
        "metrics": {"knn_top1": 0.5},
    }
    return save_checkpoint(checkpoint, tmp_path / "run", epoch=3)


def ring_nce_encoder(arch="resnet18", width=1.0, seed=0):
    net = randomize(build_backbone(arch, width=width), seed)
    return net, backbone_state_dict(net)


def converted_tensors(out):
    with open(out, "rb") as handle:
        return pickle.load(handle)


def assert_verified(report):
    verification = report["verification"]
    assert verification["max_abs_diff"] < 1e-4
    assert verification["max_abs_output"] > 0.1  # the comparison is not between zeros


# ---------------------------------------------------------------- names


def test_name_table_on_every_kind_of_tensor():
    assert weights.detectron2_name("conv1.weight") == "stem.conv1.weight"
    assert weights.detectron2_name("bn1.running_var") == "stem.conv1.norm.running_var"
    assert weights.detectron2_name("layer1.0.conv3.weight") == "res2.0.conv3.weight"
    assert weights.detectron2_name("layer3.5.bn2.bias") == "res4.5.conv2.norm.bias"
    assert weights.detectron2_name("layer4.0.downsample.0.weight") == "res5.0.shortcut.weight"
    assert (
        weights.detectron2_name("layer2.0.downsample.1.num_batches_tracked")
        == "res3.0.shortcut.norm.num_batches_tracked"
    )


@pytest.mark.parametrize("name", ["fc.weight", "layer5.0.conv1.weight", "layer1.0.se.fc.weight"])
def test_name_table_refuses_foreign_tensors(name):
    with pytest.raises(ConversionError, match="not part of a torchvision ResNet"):
        weights.detectron2_name(name)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101"])
def test_renamed_keys_are_exactly_detectron2s_resnet(arch):
    state = getattr(torchvision.models, arch)(weights=None).state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    layout = weights.infer_layout(state)
    assert layout.arch == arch
    config = weights.detectron2_config(layout, weights.IMAGENET_MEAN, weights.IMAGENET_STD)
    detectron2_keys = set(weights.build_detectron2_resnet(config).state_dict())
    assert set(weights.to_detectron2_names(state)) == detectron2_keys


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_round_trip(tmp_path, arch):
    net = torchvision_resnet(arch)
    torch.save(net.state_dict(), tmp_path / "tv.pth")
    report = convert(tmp_path / "tv.pth", tmp_path / "tv.pkl")

    assert report["format"] == "torchvision" and report["arch"] == arch
    assert_verified(report)
    assert sorted(report["dropped"]) == ["fc.bias", "fc.weight"]
    payload = converted_tensors(tmp_path / "tv.pkl")
    assert payload["matching_heuristics"] is True and payload["__author__"]
    assert torch.equal(
        torch.from_numpy(payload["model"]["res4.1.conv2.norm.running_var"]),
        net.layer3[1].bn2.running_var,
    )
    written = json.loads((tmp_path / "tv.json").read_text())
    assert written["d2_config"] == report["d2_config"]
    expected_res2 = 64 if arch == "resnet18" else 256
    assert written["d2_config"]["MODEL.RESNETS.RES2_OUT_CHANNELS"] == expected_res2
    assert written["d2_config"]["MODEL.PIXEL_MEAN"] == [123.675, 116.28, 103.53]
    assert written["d2_config"]["INPUT.FORMAT"] == "RGB"
    assert written["d2_config"]["MODEL.RESNETS.STRIDE_IN_1X1"] is False


@pytest.mark.parametrize(
    ("method", "names", "chosen"),
    [
        ("moco", ("query", "key"), "query"),
        ("moco", ("query", "key"), "key"),
        ("ir", ("encoder",), "encoder"),
        ("simclr", ("encoder",), "encoder"),
    ],
)
def test_ring_nce_checkpoint_of_each_method(tmp_path, method, names, chosen):
    nets, encoders = {}, {}
    for seed, name in enumerate(names):
        nets[name], encoders[name] = ring_nce_encoder(seed=seed)
    path = ring_nce_checkpoint(tmp_path, method, encoders)
    encoder_arg = chosen if method == "moco" and chosen == "key" else None
    report = convert(path, tmp_path / "d2.pkl", encoder=encoder_arg)

    assert report["format"] == "ring-nce" and report["encoder"] == chosen
    assert f"method {method}" in report["detected"]
    assert_verified(report)
    stem = converted_tensors(tmp_path / "d2.pkl")["model"]["stem.conv1.weight"]
    assert torch.equal(torch.from_numpy(stem), nets[chosen].conv1.weight.detach())
    config = report["d2_config"]
    assert config["MODEL.PIXEL_MEAN"] == pytest.approx([255 * m for m in FASHION_MEAN])
    assert config["MODEL.PIXEL_STD"] == pytest.approx([255 * s for s in FASHION_STD])
    assert report["pixel_stats"] == "checkpoint meta"


def test_narrow_resnet18_maps_width_to_detectron2_keys(tmp_path):
    _, state = ring_nce_encoder("resnet18", width=0.25)
    path = ring_nce_checkpoint(tmp_path, "moco", {"query": state, "key": state}, width=0.25)
    report = convert(path, tmp_path / "d2.pkl")

    assert_verified(report)
    config = report["d2_config"]
    assert config["MODEL.RESNETS.STEM_OUT_CHANNELS"] == 16
    assert config["MODEL.RESNETS.RES2_OUT_CHANNELS"] == 16
    assert "MODEL.BACKBONE.NAME" not in config  # transfer runs pick the builder from widths


def test_narrow_resnet50_maps_width_to_detectron2_keys(tmp_path):
    _, state = ring_nce_encoder("resnet50", width=0.5)
    path = ring_nce_checkpoint(tmp_path, "ir", {"encoder": state}, arch="resnet50", width=0.5)
    report = convert(path, tmp_path / "d2.pkl")

    assert_verified(report)
    config = report["d2_config"]
    assert config["MODEL.RESNETS.STEM_OUT_CHANNELS"] == 32
    assert config["MODEL.RESNETS.RES2_OUT_CHANNELS"] == 128
    assert config["MODEL.RESNETS.WIDTH_PER_GROUP"] == 32
    assert "MODEL.BACKBONE.NAME" not in config


@pytest.mark.parametrize(("encoder", "prefix"), [(None, "encoder_q"), ("key", "encoder_k")])
def test_moco_public_layout(tmp_path, encoder, prefix):
    query, key = torchvision_resnet("resnet18", seed=1), torchvision_resnet("resnet18", seed=2)
    state = {f"module.encoder_q.{k}": v for k, v in query.state_dict().items()}
    state |= {f"module.encoder_k.{k}": v for k, v in key.state_dict().items()}
    state |= {"module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1)}
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": state}, tmp_path / "moco.pth")
    report = convert(tmp_path / "moco.pth", tmp_path / "d2.pkl", encoder=encoder)

    assert report["format"] == "moco" and f"module.{prefix}." in report["detected"]
    assert_verified(report)
    source = query if prefix == "encoder_q" else key
    stem = converted_tensors(tmp_path / "d2.pkl")["model"]["stem.conv1.weight"]
    assert torch.equal(torch.from_numpy(stem), source.conv1.weight.detach())
    assert "module.queue" in report["dropped"]


def test_backbone_prefix_and_explicit_pixel_statistics(tmp_path):
    net = torchvision_resnet("resnet18")
    state = {f"backbone.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    state["head.fc.weight"] = torch.randn(10, 512)
    torch.save({"state_dict": state}, tmp_path / "mm.pth")
    report = convert(
        tmp_path / "mm.pth", tmp_path / "d2.pkl", pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.25,) * 3
    )

    assert report["format"] == "backbone" and report["dropped"] == ["head.fc.weight"]
    assert_verified(report)
    assert report["d2_config"]["MODEL.PIXEL_MEAN"] == [127.5] * 3
    assert report["d2_config"]["MODEL.PIXEL_STD"] == [63.75] * 3


def test_missing_batch_counters_are_filled_so_bn_detectors_load_everything(tmp_path):
    state = torchvision_resnet("resnet18").state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    assert_verified(convert(tmp_path / "old.pth", tmp_path / "d2.pkl"))


@pytest.mark.parametrize(("norm", "freeze_at"), [("SyncBN", 0), ("FrozenBN", 2)])
def test_weights_load_into_detectron2_fpn_from_the_json_config(tmp_path, norm, freeze_at):
    """What a transfer run does: an FPN backbone built from d2_config loads every bottom_up key
    (a width-0.25 ResNet-18 needs transfer.modeling's builder; Detectron2's asserts 64 channels).

    FrozenBN has no num_batches_tracked buffer, so only those counters go unused there.
    """
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_backbone as build_detectron2_backbone

    _, state = ring_nce_encoder("resnet18", width=0.25)
    path = ring_nce_checkpoint(tmp_path, "simclr", {"encoder": state}, width=0.25)
    convert(path, tmp_path / "d2.pkl")
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_any_width_resnet_fpn_backbone"  # what transfer runs use
    config = json.loads((tmp_path / "d2.json").read_text())["d2_config"]
    cfg.merge_from_list([item for pair in config.items() for item in pair])
    cfg.MODEL.RESNETS.OUT_FEATURES = cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.RESNETS.NORM = cfg.MODEL.FPN.NORM = norm
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    detector = nn.Module()
    detector.backbone = build_detectron2_backbone(cfg, ShapeSpec(channels=3))
    checkpointer = weights.RecordingCheckpointer(detector)
    checkpointer.load(str(tmp_path / "d2.pkl"))

    incompatible = checkpointer.incompatible
    assert not [k for k in incompatible.missing_keys if ".bottom_up." in k]
    assert all(k.endswith(".num_batches_tracked") for k in incompatible.unexpected_keys)
    assert bool(incompatible.unexpected_keys) == (norm == "FrozenBN")
    loaded = detector.backbone.bottom_up.res3[1].conv2.norm.running_mean
    assert torch.equal(loaded, state["layer2.1.bn2.running_mean"])


# ---------------------------------------------------------------- refusals


def _without_layer3(state):
    return {k: v for k, v in state.items() if not k.startswith("layer3.")}


def _without_fc(state):
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _vit_state():
    return {
        "cls_token": torch.zeros(1, 1, 192),
        "patch_embed.proj.weight": torch.zeros(192, 3, 16, 16),
        "blocks.0.attn.qkv.weight": torch.zeros(576, 192),
    }


def _write_bad_input(tmp_path, kind):
    path = tmp_path / f"{kind}.pth"
    resnet18 = torchvision.models.resnet18(weights=None)
    if kind == "missing layer3":
        torch.save(_without_layer3(resnet18.state_dict()), path)
    elif kind == "vit":
        torch.save(_vit_state(), path)
    elif kind == "empty":
        path.touch()
    elif kind == "text":
        path.write_text("epoch 3, loss 0.12\n")
    elif kind == "truncated":
        torch.save(resnet18.state_dict(), path)
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "pickled module":
        torch.save(resnet18, path)
    elif kind == "resnext":
        torch.save(torchvision.models.resnext50_32x4d(weights=None).state_dict(), path)
    elif kind == "cifar stem":
        net = build_backbone("resnet18", width=0.25, stem="cifar")
        torch.save(backbone_state_dict(net), path)
    elif kind == "detectron2 model":
        state = weights.to_detectron2_names(_without_fc(resnet18.state_dict()))
        torch.save({"model": {f"backbone.bottom_up.{k}": v for k, v in state.items()}}, path)
    elif kind == "moco without key encoder":
        state = {f"module.encoder_q.{k}": v for k, v in resnet18.state_dict().items()}
        torch.save({"state_dict": state}, path)
    elif kind == "not found":
        pass
    return path


BAD_INPUTS = {
    "missing layer3": "layer3 is missing",
    "vit": "holds no ResNet in any known layout .top-level keys: cls_token",
    "empty": "is empty",
    "text": "is a text file",
    "truncated": "not a readable PyTorch checkpoint",
    "pickled module": "save a dict of tensors",
    "resnext": "grouped convolution",
    "cifar stem": "CIFAR-style stem",
    "not found": "checkpoint not found",
    "detectron2 model": "already has Detectron2 names",
    "moco without key encoder": "moco layout .* has no key encoder.*choose one of query",
}
ENCODER_OF_BAD_INPUT = {"moco without key encoder": "key"}


def _assert_refused_and_nothing_written(tmp_path, src, match, **kwargs):
    out = tmp_path / "out" / "d2.pkl"
    out.parent.mkdir()
    out.write_bytes(b"previous weights")
    with pytest.raises(ConversionError, match=match) as raised:
        convert(src, out, **kwargs)
    assert "\n" not in str(raised.value)
    assert out.read_bytes() == b"previous weights"
    assert sorted(p.name for p in out.parent.iterdir()) == ["d2.pkl"]


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, kind):
    src = _write_bad_input(tmp_path, kind)
    encoder = ENCODER_OF_BAD_INPUT.get(kind)
    _assert_refused_and_nothing_written(tmp_path, src, BAD_INPUTS[kind], encoder=encoder)


def test_a_missing_tensor_is_refused_even_without_verification(tmp_path):
    state = torchvision.models.resnet50(weights=None).state_dict()
    del state["layer3.2.bn1.running_var"]
    torch.save(state, tmp_path / "tv.pth")
    _assert_refused_and_nothing_written(
        tmp_path, tmp_path / "tv.pth", "missing res4.2.conv1.norm.running_var", verify=False
    )


def test_converted_weights_given_back_are_recognised(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "tv.pth")
    report = convert(tmp_path / "tv.pth", tmp_path / "d2.pkl", verify=False)
    assert report["verified"] is False and "verification" not in report
    _assert_refused_and_nothing_written(tmp_path, tmp_path / "d2.pkl", "need no conversion")


def test_cmc_is_refused_with_the_reason(tmp_path):
    l_encoder = backbone_state_dict(build_backbone("resnet18", width=0.25, in_channels=1))
    ab_encoder = backbone_state_dict(build_backbone("resnet18", width=0.25, in_channels=2))
    path = ring_nce_checkpoint(
        tmp_path, "cmc", {"l": l_encoder, "ab": ab_encoder}, width=0.25, in_channels=1
    )
    for encoder in (None, "l", "ab"):
        with pytest.raises(ConversionError, match="nonlinear function of RGB.*moco, ir, simclr"):
            convert(path, tmp_path / "d2.pkl", encoder=encoder)


def test_ring_nce_meta_that_contradicts_the_tensors_is_refused(tmp_path):
    _, state = ring_nce_encoder("resnet18")
    path = ring_nce_checkpoint(tmp_path, "ir", {"encoder": state}, arch="resnet50")
    _assert_refused_and_nothing_written(tmp_path, path, "meta says arch resnet50")


def test_ring_nce_cifar_stem_is_refused_from_meta(tmp_path):
    _, state = ring_nce_encoder("resnet18")
    path = ring_nce_checkpoint(tmp_path, "ir", {"encoder": state}, stem="cifar")
    _assert_refused_and_nothing_written(tmp_path, path, "BasicStem")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"encoder": "momentum"}, "no encoder 'momentum'"),
        ({"fmt": "moco"}, "holds no ResNet in the moco layout"),
        ({"fmt": "yaml"}, "unknown format"),
        ({"pixel_mean": (123.7, 116.3, 103.5), "pixel_std": (58.4, 57.1, 57.4)}, r"\[0, 1\]"),
    ],
)
def test_bad_options_are_refused(tmp_path, kwargs, match):
    _, state = ring_nce_encoder("resnet18")
    path = ring_nce_checkpoint(tmp_path, "moco", {"query": state, "key": state})
    _assert_refused_and_nothing_written(tmp_path, path, match, **kwargs)


def test_output_must_be_a_pkl(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "tv.pth")
    with pytest.raises(ConversionError, match="must end with .pkl"):
        convert(tmp_path / "tv.pth", tmp_path / "d2.pth")


# ---------------------------------------------------------------- the checks can fail


def _swap_bn1_and_bn2(real_name):
    def swapped(name):
        if ".bn1." in name and name.startswith("layer"):
            name = name.replace(".bn1.", ".bn2.")
        elif ".bn2." in name:
            name = name.replace(".bn2.", ".bn1.")
        return real_name(name)

    return swapped


def test_verification_catches_misplaced_tensors(tmp_path, monkeypatch):
    torch.save(torchvision_resnet("resnet18").state_dict(), tmp_path / "tv.pth")
    monkeypatch.setattr(weights, "detectron2_name", _swap_bn1_and_bn2(weights.detectron2_name))
    _assert_refused_and_nothing_written(tmp_path, tmp_path / "tv.pth", "differs from the source")


def test_verification_catches_keys_detectron2_would_not_load(tmp_path, monkeypatch):
    torch.save(torchvision_resnet("resnet18").state_dict(), tmp_path / "tv.pth")
    real_name = weights.detectron2_name
    monkeypatch.setattr(
        weights, "detectron2_name", lambda name: real_name(name).replace("shortcut.", "proj.")
    )
    _assert_refused_and_nothing_written(tmp_path, tmp_path / "tv.pth", "missing res3.0.shortcut")


# ---------------------------------------------------------------- checkpoints of the real trainer


@pytest.mark.parametrize("method", ["moco", "ir", "simclr", "cmc"])
def test_checkpoint_written_by_the_trainer(tmp_path, tiny_config, method):
    from pretrain.trainer import train

    tiny_config["method"] = method
    tiny_config["model"]["stem"] = "imagenet"  # the stem Detectron2 can express
    tiny_config["optim"]["epochs"] = 1
    train(tiny_config)
    last = tmp_path / "run" / "checkpoints" / "last.pth"
    if method == "cmc":
        _assert_refused_and_nothing_written(tmp_path, last, "nonlinear function of RGB")
        return
    report = convert(last, tmp_path / "d2.pkl")
    assert report["format"] == "ring-nce" and f"method {method}" in report["detected"]
    assert_verified(report)
    assert report["d2_config"]["MODEL.RESNETS.STEM_OUT_CHANNELS"] == 8  # width 0.125
