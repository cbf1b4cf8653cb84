"""Study presets (configs/studies/) and the demo's budgets (configs/demo/) as config files."""

import os
from pathlib import Path

import pytest

from launcher.demo import Budget, load_budget, selected_budget
from launcher.study import config_pairs
from launcher.study_presets import PresetError, load_preset, preset_names
from pretrain.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_preset_has_a_config_for_each_method_and_arm(name):
    preset = load_preset(name)
    pairs = config_pairs(REPO / "configs" / "pretrain", preset["dataset"], preset["methods"],
                         preset["arms"])  # fmt: skip
    assert all("uniform" in arms for arms in pairs.values())
    assert preset["seeds"] == [0, 1, 2]


def test_the_committed_study_is_the_cpu_budget_with_every_strategy():
    cpu, strategies = load_preset("cpu"), load_preset("fmnist_strategies")
    assert strategies["overrides"] == cpu["overrides"] and strategies["eval"] == cpu["eval"]
    assert "optim.epochs=2" in cpu["overrides"]
    assert strategies["arms"] == [
        "uniform", "ring", "moco:ring-equal", "simclr:ring-equal", "ring-anneal", "dcl", "hcl",
        "mochi",
    ]  # fmt: skip


def test_unknown_preset_names_the_nearest_and_the_choices():
    with pytest.raises(PresetError, match=r"unknown study preset 'cpuu' \(did you mean 'cpu'\?\)"):
        load_preset("cpuu")


def test_a_preset_file_with_an_unknown_key_is_refused(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("dataset: fmnist\nmethod: [moco]\n")
    with pytest.raises(ConfigError, match="unknown config key 'method'.*'methods'"):
        load_preset(str(path))
    path.write_text("seeds: [4]\n")
    assert load_preset(str(path))["seeds"] == [4] and load_preset(str(path))["arms"][0] == "uniform"


def test_compare_negatives_reports_a_bad_preset_in_one_line(tmp_path, capsys):
    from tests.test_study_compare import load_tool

    assert load_tool().main(["--preset", "gpux", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'gpu'" in err[0]
    assert not (tmp_path / "out").exists()


def test_demo_budgets_are_read_from_configs_demo():
    fast = selected_budget({"DEMO_FAST": "1"})
    full = selected_budget({})
    assert isinstance(fast, Budget) and fast.epochs == 1 and fast.scenes_iters == 4
    assert full.train_images == 12000 and full.scenes_iters == 150
    assert selected_budget({"DEMO_BUDGET": str(REPO / "configs/demo/fast.yaml")}) == fast


def test_a_bad_demo_budget_names_every_problem(tmp_path):
    path = tmp_path / "budget.yaml"
    path.write_text("train_images: 100\nepochs: 0\nscenes_iter: 3\n")
    with pytest.raises(ConfigError) as caught:
        load_budget(path)
    message = str(caught.value)
    assert "unknown scenes_iter" in message and "missing eval_train_images" in message
    assert "not a positive integer: epochs" in message and os.linesep not in message
