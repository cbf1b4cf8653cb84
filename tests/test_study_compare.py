"""End to end: tools/compare_negatives.py on tiny synthetic configs (seconds per run)."""

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "device": "cpu",
    "model": {"arch": "resnet18", "width": 0.125, "stem": "cifar", "embedding_dim": 16},
    "moco": {"queue_size": 64},
    "data": {
        "name": "synthetic",
        "num_workers": 0,
        "synthetic": {"image_size": 16, "train_count": 64, "test_count": 32},
    },
    "optim": {"batch_size": 16, "epochs": 1},
    "train": {"progress": False, "tensorboard": False},
    "knn": {"every_epochs": 0},
    "checkpoint": {"every_epochs": 1},
}


pytestmark = pytest.mark.usefixtures("single_thread")


FAST_EVAL = ["--eval", "lbfgs_max_iter=10", "--eval", "weight_decays=[0.001]"]


def load_tool():
    spec = importlib.util.spec_from_file_location(
        "compare_negatives_tool", REPO / "tools" / "compare_negatives.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_configs(folder, ring_changes=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "_base.yaml").write_text(yaml.safe_dump({**BASE, "method": "moco"}))
    (folder / "uniform_moco_synthetic.yaml").write_text("_base_: [_base.yaml]\n")
    ring = {"_base_": ["_base.yaml"], "sampler": {"name": "ring", "upper": 0.5}}
    ring.update(ring_changes or {})
    (folder / "ring_moco_synthetic.yaml").write_text(yaml.safe_dump(ring))
    return folder


def study_args(tmp_path, configs, *extra):
    return [
        "--preset", "none", "--dataset", "synthetic", "--methods", "moco", "--seeds", "0", "1",
        "--config-dir", str(configs), "--output", str(tmp_path / "out"),
        "--report-dir", str(tmp_path / "report"), *FAST_EVAL, *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_study_end_to_end_and_rerun_reuses_finished_runs(tmp_path, capsys):
    configs = write_configs(tmp_path / "configs")
    main = load_tool().main
    assert main(study_args(tmp_path, configs)) == 0
    out = capsys.readouterr().out
    assert out.count("pretraining + evaluation") == 4
    report = (tmp_path / "report" / "results.md").read_text()
    assert "python tools/compare_negatives.py --preset none --dataset synthetic" in report
    assert "| moco |" in report and "Floor, raw pixels with the same protocol" in report
    records = json.loads((tmp_path / "report" / "records.json").read_text())
    assert {(r["sampler"], r["seed"]) for r in records} == {
        ("uniform", 0),
        ("ring", 0),
        ("uniform", 1),
        ("ring", 1),
    }
    assert all(r["error"] is None and 0 <= r["metrics"]["linear_top1"] <= 1 for r in records)
    ring_cfg = yaml.safe_load((tmp_path / "out" / "moco_ring_s1" / "config.yaml").read_text())
    uniform_cfg = yaml.safe_load((tmp_path / "out" / "moco_uniform_s1" / "config.yaml").read_text())
    assert ring_cfg["sampler"]["name"] == "ring" and ring_cfg["seed"] == 1
    assert ring_cfg["optim"] == uniform_cfg["optim"] and ring_cfg["data"] == uniform_cfg["data"]

    assert main(study_args(tmp_path, configs)) == 0
    assert capsys.readouterr().out.count("already evaluated") == 4

    (tmp_path / "out" / "moco_ring_s1" / "checkpoints" / "eval.json").unlink()
    frozen = tmp_path / "out" / "moco_ring_s1" / "study_config.yaml"
    frozen_before = frozen.stat().st_mtime_ns
    assert main(study_args(tmp_path, configs, "--report-only")) == 0
    # a report writes nothing into run folders (another study process may be training there)
    assert frozen.stat().st_mtime_ns == frozen_before
    assert "pretraining" not in capsys.readouterr().out
    report = (tmp_path / "report" / "results.md").read_text()
    assert "moco ring seed 1: not run" in report
    assert "| 1 | 1 seed: no interval, no verdict |" in report


def test_unfair_configs_fail_before_any_training(tmp_path, capsys):
    configs = write_configs(tmp_path / "configs", {"optim": {"batch_size": 32}})
    assert load_tool().main(study_args(tmp_path, configs)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differ in optim.batch_size" in err[0]
    assert not (tmp_path / "out").exists()


def test_cmc_on_grayscale_fashion_mnist_is_refused_with_the_reason(tmp_path, capsys):
    args = ["--methods", "ir", "cmc", "--output", str(tmp_path / "out")]
    assert load_tool().main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: CMC is excluded") and "grayscale" in err


def test_typo_in_eval_option_fails_before_training(tmp_path, capsys):
    configs = write_configs(tmp_path / "configs")
    assert load_tool().main(study_args(tmp_path, configs, "--eval", "solvr=sgd")) == 2
    assert "did you mean 'solver'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_config_names_the_expected_file(tmp_path, capsys):
    args = ["--methods", "byol", "--output", str(tmp_path / "out")]
    assert load_tool().main(args) == 2
    assert "uniform_byol_fmnist.yaml" in capsys.readouterr().err


@pytest.mark.slow
def test_study_as_one_job_array_on_the_debug_cluster(tmp_path, capsys):
    configs = write_configs(tmp_path / "configs")
    args = study_args(tmp_path, configs, "--cluster", "debug")
    args[args.index("--seeds") + 1 : args.index("--seeds") + 3] = ["0"]
    assert load_tool().main(args) == 0
    out = capsys.readouterr().out
    assert "submitting 2" in out and "2 tasks on debug" in out
    records = json.loads((tmp_path / "report" / "records.json").read_text())
    assert [r["error"] for r in records] == [None, None]
