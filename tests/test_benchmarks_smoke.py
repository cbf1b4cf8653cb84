"""The benchmark scripts run end to end on tiny shapes (so they cannot rot), and refuse bad input.

Scripts are imported in-process from the ``benchmarks`` package (one torch import for all) with
one CPU thread: a quick figure, not a measurement. Nothing here asserts a speed.
"""

import importlib
import importlib.util
import json

import pytest
import torch

from pretrain.errors import PretrainError


def load_script(name):
    return importlib.import_module(f"benchmarks.{name}")


# The scripts' --threads 1 sets what this fixture restores afterwards.
pytestmark = pytest.mark.usefixtures("single_thread")


def test_ring_selection_smoke_agrees_and_reports_every_case(tmp_path, capsys):
    script = load_script("ring_selection")
    out = tmp_path / "ring.json"
    argv = ["--preset", "smoke", "--devices", "cpu", "--threads", "1", "--json", str(out)]
    assert script.main(argv) == 0
    report = json.loads(out.read_text())
    cases = {(row["shape"], row["pass"]) for row in report["rows"]}
    shapes = ("moco", "ir60k", "ir1m")
    assert cases == {(s, p) for s in shapes for p in ("forward", "forward+backward")}
    for row in report["rows"]:
        assert row["loss_max_diff"] <= 1e-4  # ring == the full-sort reference
        assert row["loss_ring"] != pytest.approx(row["loss_uniform"])  # the ring really selects
        assert row["uniform_s"] > 0 and row["ring_s"] > 0 and row["full_sort_s"] > 0
        assert row["ring_topk_s"] > 0  # the GPU's route, timed on the CPU too
    printed = capsys.readouterr().out
    assert "ring/uniform" in printed and "by torch's topk (the GPU route)" in printed


def test_ring_selection_check_catches_a_loss_that_differs_from_the_reference():
    script = load_script("ring_selection")
    shape = script.SHAPES["smoke"]["moco"]
    functions = script.variants(shape, {"upper": 0.1, "lower_ratio": 0.1}, torch.device("cpu"))
    functions["ring"] = functions["uniform"]  # a "ring" that keeps every negative
    inputs = script.make_inputs(shape, torch.device("cpu"))
    with pytest.raises(PretrainError, match="ring and full_sort disagree"):
        script.check_agreement(shape, functions, inputs)


def test_train_throughput_smoke_measures_both_feeds(tmp_path):
    script = load_script("train_throughput")
    out = tmp_path / "throughput.json"
    assert script.main(["--preset", "smoke", "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [row["method"] for row in report["rows"]] == ["moco", "ring-moco"]
    for row in report["rows"]:
        assert row["synthetic_images_per_second"] > 0 and row["loader_images_per_second"] > 0
        assert row["loader_only_images_per_second"] > 0
        assert 0 <= row["data_wait_share"] <= 1
        assert row["loader_over_synthetic"] == pytest.approx(
            row["loader_images_per_second"] / row["synthetic_images_per_second"]
        )
    assert report["setup"]["mean_jpeg_bytes"] > 0


@pytest.mark.parametrize(
    ("name", "argv", "message"),
    [
        ("ring_selection", ["--devices", "tpu"], "unknown device 'tpu'"),
        ("ring_selection", ["--preset", "smoke", "--upper", "2"], "sampler.upper"),
        ("train_throughput", ["--methods", "simclr"], "unknown method 'simclr'"),
        ("train_throughput", ["--preset", "smoke", "--steps", "0"], "--steps must be >= 1"),
        ("peer_moco", ["--cases", "vit"], "unknown case 'vit'"),
        ("peer_moco", ["--preset", "smoke", "--rounds", "0"], "--rounds must be >= 1"),
    ],
)
def test_bad_options_give_one_line_errors(name, argv, message, capsys):
    assert load_script(name).main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_empty_jpeg_folder_is_refused(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    script = load_script("train_throughput")
    assert script.main(["--preset", "smoke", "--data-dir", str(tmp_path)]) == 2
    assert "holds no .jpg images" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without GPU")
def test_gpu_preset_without_gpu_is_refused(capsys):
    assert load_script("train_throughput").main(["--preset", "gpu"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert load_script("peer_moco").main(["--preset", "smoke", "--device", "cuda"]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err


def test_strategy_cost_smoke_times_every_strategy(tmp_path):
    script = load_script("strategy_cost")
    out = tmp_path / "strategies.json"
    assert (
        script.main(["--preset", "smoke", "--devices", "cpu", "--threads", "1", "--json", str(out)])
        == 0
    )
    rows = json.loads(out.read_text())["rows"]
    assert [row["strategy"] for row in rows] == list(script.STRATEGIES)
    assert all(row["forward_backward_s"] > 0 for row in rows)
    assert rows[0]["over_uniform"] == 1.0


def test_classification_smoke_times_episodes_and_the_c_grid(tmp_path):
    out = tmp_path / "classification.json"
    argv = ["--preset", "smoke", "--devices", "cpu", "--threads", "1", "--json", str(out)]
    assert load_script("classification").main(argv) == 0
    variants = [row["variant"] for row in json.loads(out.read_text())["rows"]]
    assert variants[:2] == ["episodes_5w1s_d16", "c_grid_torch_lbfgs"]


LIGHTLY = importlib.util.find_spec("lightly") is not None
NO_LIGHTLY = "lightly is an optional extra for benchmarks/peer_moco.py only (pip install '.[peer]')"


@pytest.mark.skipif(not LIGHTLY, reason=NO_LIGHTLY)
def test_peer_moco_smoke_checks_the_same_loss_then_times_both_steps(tmp_path):
    script = load_script("peer_moco")
    out = tmp_path / "peer.json"
    assert script.main(["--preset", "smoke", "--threads", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [row["case"] for row in rows] == list(script.CASES)
    for row in rows:
        assert row["check_loss_ours"] == pytest.approx(row["check_loss_lightly"], abs=1e-4)
        assert row["ours_s_per_step"] > 0 and row["lightly_s_per_step"] > 0


@pytest.mark.skipif(not LIGHTLY, reason=NO_LIGHTLY)
def test_peer_moco_check_catches_a_step_that_computes_something_else():
    script = load_script("peer_moco")
    case = {
        **script.CASES["resnet18-narrow"],
        **script.PRESETS["smoke"]["overrides"]["resnet18-narrow"],
    }
    pair = script.build_pair(case, torch.device("cpu"), steps=1)
    pair["lightly"].criterion.temperature *= 2  # not the same loss any more
    views = [torch.randn(case["batch"], 3, case["image_size"], case["image_size"]) for _ in "kq"]
    with pytest.raises(PretrainError, match="do not compute the same thing"):
        script.check_same_loss(pair, views, torch.arange(case["batch"]))


@pytest.mark.skipif(LIGHTLY, reason="checks the message on a machine without lightly")
def test_peer_moco_without_lightly_says_how_to_install_it(capsys):
    assert load_script("peer_moco").main(["--preset", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "lightly is not installed" in err and "[peer]" in err and err.count("\n") == 1


@pytest.mark.slow
def test_scenes_transfer_smoke_times_a_step_and_the_evaluation(tmp_path):
    script = load_script("scenes_transfer")
    out = tmp_path / "scenes.json"
    argv = ["--iters", "1", "--warmup", "1", "--configs", "mask_frozen", "--json", str(out)]
    assert script.main(argv) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["config"] == "mask_frozen" and row["s_per_iteration"] > 0
    assert row["evaluation_s"] > 0 and row["max_iter"] == 150
