"""The trainer end to end on synthetic data: contract, exact resume, bad input."""

import copy
import math
import os
import stat
from pathlib import Path

import pytest
import torch
import yaml

from pretrain import run
from pretrain.backbones import build_backbone
from pretrain.checkpoint import load_checkpoint
from pretrain.data import fashion_mnist_root
from pretrain.errors import PretrainError
from pretrain.trainer import train

pytestmark = pytest.mark.usefixtures("single_thread")


def write_config(tmp_path, config, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


def run_cli(tmp_path, config, *overrides, capsys):
    code = run.main(["--config", write_config(tmp_path, config), *overrides])
    return code, capsys.readouterr()


def test_checkpoint_follows_the_contract(tiny_config):
    tiny_config["optim"]["epochs"] = 1
    tiny_config["knn"]["every_epochs"] = 1
    # what a killed write of an earlier run left behind, removed when this run starts
    output_dir = Path(tiny_config["output_dir"])
    stale = [
        output_dir / ".metrics.json.x1.tmp",
        output_dir / "checkpoints" / ".epoch_0001.pth.x2.tmp",
    ]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    previous_umask = os.umask(0o077)  # a strict umask must not hide results from collaborators
    try:
        metrics = train(tiny_config)
    finally:
        os.umask(previous_umask)
    assert not any(path.exists() for path in stale)
    written = [output_dir / "config.yaml", output_dir / "metrics.json", Path(metrics["checkpoint"])]
    assert [stat.S_IMODE(path.stat().st_mode) for path in written] == [0o644] * 3
    assert 0.0 <= metrics["knn_top1"] <= 1.0 and metrics["finished"]
    checkpoint = load_checkpoint(metrics["checkpoint"])
    meta = checkpoint["meta"]
    assert set(checkpoint["encoders"]) == {"query", "key"} and meta["default_encoder"] == "query"
    assert (meta["method"], meta["arch"], meta["width"], meta["stem"]) == (
        "moco",
        "resnet18",
        0.125,
        "cifar",
    )
    backbone = build_backbone(meta["arch"], meta["width"], meta["stem"], meta["in_channels"])
    backbone.fc = torch.nn.Linear(1, 1)  # the checkpoint must hold no fc: only it goes missing
    missing, unexpected = backbone.load_state_dict(checkpoint["encoders"]["query"], strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    assert checkpoint["config"]["method"] == "moco" and "queue" in checkpoint["model"]
    assert len(meta["pixel_mean"]) == 3 and meta["input_format"] == "RGB"


@pytest.mark.parametrize("method", ["moco", "ir"])
def test_resume_replays_an_uninterrupted_run_exactly(method, tiny_config, tmp_path):
    tiny_config["method"] = method
    tiny_config["sampler"] = {
        "name": "ring",
        "upper": 0.5,
        "schedule": "linear",
        "anneal_fraction": 1.0,
    }
    straight = copy.deepcopy(tiny_config)
    straight["output_dir"] = str(tmp_path / "straight")
    train(straight)
    halves = copy.deepcopy(tiny_config)
    halves["output_dir"] = str(tmp_path / "halves")
    first = train({**halves, "train": {**halves["train"], "stop_after_epoch": 1}})
    assert first["epoch"] == 1 and not first["finished"]
    second = train(halves)  # resume=auto picks epoch 1 up
    assert second["epoch"] == 2 and second["global_step"] == 8
    a = load_checkpoint(tmp_path / "straight/checkpoints/last.pth")
    b = load_checkpoint(tmp_path / "halves/checkpoints/last.pth")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()


def one_line_error(code, captured, *fragments):
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_key_names_the_nearest(tiny_config, tmp_path, capsys):
    code, out = run_cli(tmp_path, tiny_config, "optim.momentun=0.5", capsys=capsys)
    one_line_error(code, out, "optim.momentun", "optim.momentum")


def test_unknown_method(tiny_config, tmp_path, capsys):
    code, out = run_cli(tmp_path, tiny_config, "method=byol", capsys=capsys)
    one_line_error(code, out, "unknown method 'byol'", "moco")


def test_missing_dataset_path(tiny_config, tmp_path, capsys):
    code, out = run_cli(
        tmp_path,
        tiny_config,
        "data.name=fashion_mnist",
        f"data.root={tmp_path}/nowhere",
        capsys=capsys,
    )
    one_line_error(code, out, "Fashion-MNIST not found", "nowhere", "dataset-fashion-mnist")
    code, out = run_cli(
        tmp_path, tiny_config, "data.name=cifar10", f"data.root={tmp_path}", capsys=capsys
    )
    one_line_error(code, out, "cifar-10-batches-py/data_batch_1")


def test_batch_larger_than_dataset(tiny_config, tmp_path, capsys):
    code, out = run_cli(tmp_path, tiny_config, "optim.batch_size=100", capsys=capsys)
    one_line_error(code, out, "optim.batch_size=100 is larger than the dataset (64 images)")


def test_empty_dataset(tiny_config, tmp_path, capsys):
    code, out = run_cli(tmp_path, tiny_config, "data.synthetic.train_count=0", capsys=capsys)
    one_line_error(code, out, "training set of data.name=synthetic is empty")


def test_cmc_refuses_grayscale(tiny_config, tmp_path, capsys):
    code, out = run_cli(
        tmp_path, tiny_config, "method=cmc", "data.synthetic.channels=1", capsys=capsys
    )
    one_line_error(code, out, "needs colour input", "grayscale")


def test_nan_loss_stops_with_a_hint_and_keeps_checkpoints(tiny_config, tmp_path, capsys):
    tiny_config["optim"]["epochs"] = 3
    assert (
        run.main(["--config", write_config(tmp_path, tiny_config), "train.stop_after_epoch=1"]) == 0
    )
    capsys.readouterr()
    code, out = run_cli(tmp_path, tiny_config, "optim.lr=1.0e+30", "resume=none", capsys=capsys)
    one_line_error(code, out, "loss became nan", "lower optim.lr")
    assert load_checkpoint(tmp_path / "run/checkpoints/epoch_0001.pth")["epoch"] == 1


def test_corrupt_checkpoint_on_resume(tiny_config, tmp_path, capsys):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "epoch_0001.pth").write_bytes(b"not a checkpoint")
    code, out = run_cli(tmp_path, tiny_config, capsys=capsys)
    assert code == 2 and "error: no loadable checkpoint" in out.err and "resume=none" in out.err
    code, out = run_cli(tmp_path, tiny_config, f"resume={folder}/epoch_0001.pth", capsys=capsys)
    one_line_error(code, out, "corrupt or truncated", "resume=none")
    assert (folder / "epoch_0001.pth").read_bytes() == b"not a checkpoint"  # nothing lost


def test_checkpoint_of_another_architecture(tiny_config, tmp_path, capsys):
    tiny_config["optim"]["epochs"] = 1
    assert run.main(["--config", write_config(tmp_path, tiny_config)]) == 0
    capsys.readouterr()
    code, out = run_cli(tmp_path, tiny_config, "optim.epochs=2", "model.width=0.25", capsys=capsys)
    one_line_error(code, out, "does not fit this config", "width=0.125")


@pytest.mark.slow
def test_ring_moco_on_a_fashion_mnist_slice(tmp_path):
    """A real short run: the shipped ring-MoCo config on 1,024 Fashion-MNIST images."""
    from pretrain.trainer import load_pretrain_config

    if not (fashion_mnist_root() / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    cfg = load_pretrain_config(
        "configs/pretrain/ring_moco_fmnist.yaml",
        [
            f"output_dir={tmp_path}/ring_moco",
            "data.train_subset=1024",
            "data.num_workers=0",
            "optim.batch_size=32",
            "optim.epochs=1",
            "sampler.anneal_fraction=0.5",
            "moco.queue_size=512",
            "knn.train_subset=2000",
            "knn.test_subset=500",
            "train.progress=false",
        ],
    )
    metrics = train(cfg)
    assert metrics["global_step"] == 32 and metrics["finished"]
    assert math.isfinite(metrics["loss"]) and 0.1 < metrics["knn_top1"] <= 1.0
    assert metrics["ring_upper"] == pytest.approx(0.1)
    checkpoint = load_checkpoint(tmp_path / "ring_moco/checkpoints/last.pth")
    assert checkpoint["meta"]["dataset"] == "fashion_mnist" and checkpoint["epoch"] == 1
    assert (tmp_path / "ring_moco/config.yaml").is_file()
    assert list((tmp_path / "ring_moco/tensorboard").glob("events.out.tfevents.*"))


def test_nan_stops_within_log_every_steps_and_every_stat_is_logged(tiny_config, monkeypatch):
    """The loss is read on the host once per window: a NaN at step 3 stops the run at the
    window's end (step 4 with log_every_steps=4), not later; any numeric stat a method returns
    is averaged into the epoch's history without the trainer knowing its name."""
    from pretrain.methods.moco import MoCo

    forward = MoCo.forward
    calls = []

    def forward_with_extra_stat(self, views, indices, sampler):
        loss, stats = forward(self, views, indices, sampler)
        calls.append(len(calls))
        stats["made_up_share"] = torch.tensor(float(len(calls)))
        return (loss * math.nan if calls[-1] == 2 and poison else loss), stats

    poison = False
    monkeypatch.setattr(MoCo, "forward", forward_with_extra_stat)
    tiny_config["optim"]["epochs"] = 1
    tiny_config["train"]["log_every_steps"] = 4
    metrics = train(copy.deepcopy(tiny_config))
    steps = len(calls)  # 64 images / batch 16
    assert metrics["history"][0]["made_up_share"] == pytest.approx((steps + 1) / 2)
    assert "negatives_per_anchor" in metrics["history"][0]
    calls.clear()
    poison = True
    tiny_config["output_dir"] += "_nan"
    with pytest.raises(PretrainError, match=r"loss became nan at epoch 1 by step 4 .*optim.lr"):
        train(tiny_config)
    assert len(calls) == 4
