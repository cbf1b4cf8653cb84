import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pretrain.evaluation.linear_probe import (
    LinearEvalSettings,
    evaluate_checkpoint,
    evaluate_features,
)
from pretrain.trainer import train

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "linear_eval.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("linear_eval_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_run(output_dir, method):
    cfg = {
        "method": method,
        "output_dir": str(output_dir),
        "resume": "none",
        "device": "cpu",
        "model": {"arch": "resnet18", "width": 0.125, "stem": "cifar", "embedding_dim": 16},
        "moco": {"queue_size": 64},
        "cmc": {"num_negatives": 32},
        "data": {
            "name": "synthetic",
            "num_workers": 0,
            "synthetic": {"image_size": 16, "train_count": 64, "test_count": 32},
        },
        "optim": {"batch_size": 16, "epochs": 1},
        "train": {"progress": False, "tensorboard": False},
        "knn": {"every_epochs": 0},
    }
    train(cfg)
    return Path(output_dir) / "checkpoints" / "last.pth"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {method: tiny_run(root / method, method) for method in ("moco", "cmc")}


def run_tool(*args):
    return subprocess.run(
        [sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, cwd=REPO
    )


@pytest.fixture
def tool_error(capsys):
    """Run the entry point in-process; return its one `error: ...` line (exit status 2)."""
    main = load_tool().main

    def run(*args):
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert code == 2, captured.out + captured.err
        assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
        return lines[0]

    return run


def test_knn_and_probe_on_one_hot_label_features_score_100_percent():
    labels = torch.arange(60) % 6
    features = F.one_hot(labels, 6).float()
    metrics = evaluate_features(
        (features[:40], labels[:40]),
        (features[40:], labels[40:]),
        6,
        LinearEvalSettings(lbfgs_max_iter=30),
        knn_ks=(1, 20, 200),
    )
    assert metrics["knn1_top1"] == 1.0
    assert metrics["knn20_top1"] == 1.0
    assert metrics["knn200_top1"] == 1.0  # k beyond the bank: the whole bank votes
    assert metrics["linear_top1"] == 1.0


def test_knn_scores_zero_when_test_features_point_at_other_classes():
    labels = torch.arange(60) % 6
    wrong = F.one_hot(labels.roll(1), 6).float()  # features of the neighbouring class
    metrics = evaluate_features(
        (wrong[:40], labels[:40]), (wrong[40:], labels[40:]), 6, LinearEvalSettings(), (20,)
    )
    assert metrics["knn20_top1"] == 1.0  # consistent relabelling is still learnable by kNN
    test_features = F.one_hot((labels[40:] + 3) % 6, 6).float()  # inconsistent with train
    metrics = evaluate_features(
        (wrong[:40], labels[:40]), (test_features, labels[40:]), 6, LinearEvalSettings(), (20,)
    )
    assert metrics["knn20_top1"] == 0.0


@pytest.mark.slow
def test_eval_json_beside_checkpoint_for_moco(checkpoints):
    result = evaluate_checkpoint(checkpoints["moco"], ["lbfgs_max_iter=20"], log=lambda _: None)
    written = json.loads((checkpoints["moco"].parent / "eval.json").read_text())
    assert written["encoders"] == ["query"]
    assert written["num_train"] == 64 and written["num_test"] == 32
    assert set(written["metrics"]) >= {"linear_top1", "linear_top5", "knn20_top1", "knn200_top1"}
    assert written["metrics"] == result["metrics"]
    assert written["checkpoint"].endswith("epoch_0001.pth")


@pytest.mark.slow
def test_cmc_concatenates_l_and_ab_features(checkpoints, tmp_path):
    out = tmp_path / "cmc_eval.json"
    result = evaluate_checkpoint(
        checkpoints["cmc"], ["lbfgs_max_iter=20", f"output={out}"], log=lambda _: None
    )
    assert result["encoders"] == ["l", "ab"]
    assert result["feature_dim"] == 2 * 64  # two width-0.125 ResNet-18s, 64 features each
    single = evaluate_checkpoint(
        checkpoints["cmc"], ["encoder=l", "lbfgs_max_iter=20", f"output={out}"], log=print
    )
    assert single["feature_dim"] == 64


@pytest.mark.slow
def test_moco_key_encoder_can_be_chosen(checkpoints, tmp_path):
    result = evaluate_checkpoint(
        checkpoints["moco"],
        ["encoder=key", "knn_k=[5]", f"output={tmp_path / 'e.json'}"],
        log=lambda _: None,
    )
    assert result["encoders"] == ["key"] and "knn5_top1" in result["metrics"]


@pytest.mark.slow
def test_cli_writes_eval_json_and_reports(checkpoints, tmp_path):
    out = tmp_path / "cli.json"
    proc = run_tool(checkpoints["moco"], "lbfgs_max_iter=10", f"output={out}")
    assert proc.returncode == 0, proc.stderr
    assert "linear top-1" in proc.stdout and out.is_file()


@pytest.mark.slow
def test_cli_bad_inputs_are_one_line_errors_and_keep_previous_results(
    checkpoints, tmp_path, tool_error
):
    previous = tmp_path / "eval.json"
    previous.write_text('{"kept": true}')

    assert "checkpoint not found" in tool_error(tmp_path / "missing.pth")

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(checkpoints["moco"].read_bytes()[:1000])
    assert "corrupt or truncated" in tool_error(corrupt)

    wrong_arch = tmp_path / "wrong_arch.pth"
    checkpoint = torch.load(checkpoints["moco"], weights_only=True)
    checkpoint["meta"]["width"] = 0.25
    torch.save(checkpoint, wrong_arch)
    assert "does not match meta" in tool_error(wrong_arch)

    assert "did you mean 'train_limit'" in tool_error(checkpoints["moco"], "train_limt=5")
    assert "encoder 'value'" in tool_error(checkpoints["moco"], "encoder=value")
    assert json.loads(previous.read_text()) == {"kept": True}
