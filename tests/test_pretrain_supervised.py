"""The supervised reference: it learns, shares the contrastive runs' budget, and its checkpoints
go through the converter and the evaluation tools like theirs."""

import pickle
from pathlib import Path

import pytest
import torch

from pretrain.checkpoint import load_checkpoint
from pretrain.data import augmentation, fashion_mnist_root
from pretrain.errors import PretrainError
from pretrain.evaluation.linear_probe import evaluate_checkpoint
from pretrain.methods import build_method
from pretrain.trainer import as_config, load_pretrain_config, train
from transfer.classification.encoders import from_checkpoint
from transfer.weights import convert

pytestmark = pytest.mark.usefixtures("single_thread")
REPO = Path(__file__).resolve().parents[1]
LEAVES = REPO / "configs" / "pretrain"


def test_supervised_leaf_has_the_contrastive_budget():
    """Same backbone, data, optimizer, monitor and checkpoints as uniform MoCo; same views."""
    supervised = load_pretrain_config(LEAVES / "supervised_fmnist.yaml")
    moco = load_pretrain_config(LEAVES / "uniform_moco_fmnist.yaml")
    assert supervised.method == "supervised" and supervised.sampler.name == "uniform"
    for section in ("data", "optim", "knn", "checkpoint", "train", "seed"):
        assert supervised[section] == moco[section], section
    for key in ("arch", "width", "stem"):
        assert supervised.model[key] == moco.model[key], key
    size, mean, std = 28, (0.3,) * 3, (0.35,) * 3
    assert repr(augmentation("supervised", size, mean, std, 0.5)) == repr(
        augmentation("moco", size, mean, std, 0.5)
    )


def test_config_errors_are_one_line(tiny_config):
    config = as_config({**tiny_config, "method": "supervised", "sampler": {"name": "ring"}})
    with pytest.raises(PretrainError, match="^method supervised uses no negatives, so sampler"):
        build_method(config, 4, 3, "synthetic", torch.arange(4), 4).check_config(config, 4)
    config = as_config({**tiny_config, "method": "supervised"})
    with pytest.raises(PretrainError, match=r"but 2 have none .* set data.stl_unlabeled=false$"):
        build_method(config, 4, 3, "stl10", torch.tensor([0, -1, 1, -1]), 2)
    with pytest.raises(PretrainError) as error:
        train({**tiny_config, "method": "supervised", "sampler": {"name": "ring"}})
    assert "\n" not in str(error.value) and not Path(tiny_config["output_dir"]).exists()


def test_only_the_supervised_method_is_handed_the_labels(tiny_config):
    supervised = build_method(
        as_config({**tiny_config, "method": "supervised"}), 4, 3, "synthetic", torch.arange(4), 4
    )
    assert torch.equal(supervised.labels, torch.arange(4))
    assert "labels" not in supervised.state_dict()  # rebuilt from the data on resume
    moco = build_method(as_config(tiny_config), 4, 3, "synthetic", torch.arange(4), 4)
    assert not hasattr(moco, "labels")


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory):
    """A few hundred steps' worth of the real thing: 1,024 Fashion-MNIST images, 3 epochs."""
    if not (fashion_mnist_root() / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    output = tmp_path_factory.mktemp("supervised")
    overrides = [
        f"output_dir={output}",
        "device=cpu",
        "data.train_subset=1024",
        "data.num_workers=0",
        "optim.batch_size=64",
        "optim.epochs=3",
        "knn.train_subset=512",
        "knn.test_subset=256",
        "train.progress=false",
        "train.tensorboard=false",
    ]
    metrics = train(load_pretrain_config(LEAVES / "supervised_fmnist.yaml", overrides))
    return metrics, Path(metrics["checkpoint"])


def test_a_tiny_supervised_run_learns(fashion_run):
    metrics, _ = fashion_run
    history = metrics["history"]
    assert metrics["finished"] and len(history) == 3
    assert history[-1]["loss"] < 0.75 * history[0]["loss"]
    assert history[-1]["train_accuracy"] > 0.3  # ten classes: chance is 0.1


def test_its_checkpoint_converts_exactly(fashion_run, tmp_path):
    _, path = fashion_run
    checkpoint = load_checkpoint(path)
    assert checkpoint["meta"]["method"] == "supervised"
    assert list(checkpoint["encoders"]) == ["encoder"]
    report = convert(path, tmp_path / "d2.pkl")
    assert report["format"] == "ring-nce" and report["encoder"] == "encoder"
    assert report["verification"]["max_abs_diff"] < 1e-4
    assert report["verification"]["max_abs_output"] > 0.1
    with open(tmp_path / "d2.pkl", "rb") as handle:
        stem = pickle.load(handle)["model"]["stem.conv1.weight"]
    assert torch.equal(torch.from_numpy(stem), checkpoint["encoders"]["encoder"]["conv1.weight"])


def test_the_evaluation_tools_accept_its_checkpoint(fashion_run, tmp_path):
    _, path = fashion_run
    result = evaluate_checkpoint(
        path,
        ["train_limit=512", "test_limit=256", "lbfgs_max_iter=20", f"output={tmp_path / 'e.json'}"],
        log=lambda _: None,
    )
    assert result["encoders"] == ["encoder"]
    assert result["metrics"]["linear_top1"] > 0.1 and result["metrics"]["knn200_top1"] > 0.1
    encoder = from_checkpoint({"path": str(path)})
    assert encoder.image_size == 28 and encoder.network(torch.rand(2, 3, 28, 28)).shape[0] == 2
