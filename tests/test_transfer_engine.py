"""Transfer runs on CPU: converted weights load and train, results/metrics are written, resume
continues, SyncBN configs run in one process, and bad input fails in one clear line."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from transfer.config import TransferError
from transfer.engine import run
from transfer.modeling import build_any_width_resnet_backbone

from detectron2.config import get_cfg  # isort: skip  (after transfer: _C fallback)
from detectron2.layers import ShapeSpec  # isort: skip

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "transfer"
TINY_MASK = CONFIGS / "tiny_mask_rcnn_R50_FPN.yaml"
# what the converter's .json says for a width-0.25 ResNet-18 from our CPU pretraining
NARROW_R18 = {
    "INPUT.FORMAT": "RGB",
    "MODEL.PIXEL_MEAN": [72.9, 72.9, 72.9],
    "MODEL.PIXEL_STD": [90.0, 90.0, 90.0],
    "MODEL.RESNETS.DEPTH": 18,
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 16,
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 16,
    "MODEL.RESNETS.WIDTH_PER_GROUP": 64,
}
# narrower heads than the recipe's: the tests check the pipeline, not the architecture
LIGHT_HEADS = [
    "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "64", "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", "(64, 64)",
]  # fmt: skip


# a ResNet-50 with a quarter of the channels: C4's res5 head runs on every proposal
THIN_R50 = [
    "MODEL.RESNETS.WIDTH_PER_GROUP", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "32", "INPUT.MIN_SIZE_TEST", "96",
    "INPUT.MIN_SIZE_TRAIN", "(96,)",
]  # fmt: skip


def save_converted_backbone(path, d2_config, with_json=True):
    """Weights as the converter writes them: Detectron2 backbone names, numpy arrays, json."""
    cfg = get_cfg()
    cfg.merge_from_list([item for pair in d2_config.items() for item in pair])
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    backbone = build_any_width_resnet_backbone(cfg, ShapeSpec(channels=3))
    model = {name: tensor.numpy() for name, tensor in backbone.state_dict().items()}
    with open(path, "wb") as file:
        pickle.dump({"model": model, "__author__": "test", "matching_heuristics": True}, file)
    if with_json:
        path.with_suffix(".json").write_text(json.dumps({"d2_config": d2_config}))
    return path


@pytest.fixture(scope="module")
def narrow_weights(tmp_path_factory):
    return save_converted_backbone(tmp_path_factory.mktemp("weights") / "r18.pkl", NARROW_R18)


@pytest.fixture(scope="module")
def mask_run(tmp_path_factory, narrow_weights):
    """Two iterations of the tiny Mask R-CNN from converted weights, then resumed to three."""
    output = tmp_path_factory.mktemp("mask_run")
    opts = ["MODEL.WEIGHTS", str(narrow_weights), "OUTPUT_DIR", str(output), *LIGHT_HEADS]
    first = run(str(TINY_MASK), opts + ["SOLVER.MAX_ITER", "2"])
    first_metrics = (output / "metrics.json").read_text()
    resumed = run(str(TINY_MASK), opts + ["SOLVER.MAX_ITER", "3"], resume=True)
    return output, first, first_metrics, resumed


def training_iterations(text):
    """Iterations of metrics.json's training lines (evaluation lines carry no loss)."""
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [record["iteration"] for record in records if "total_loss" in record]


@pytest.mark.slow
def test_mask_rcnn_from_converted_weights_reports_box_and_mask_ap(mask_run, capsys):
    output, first, _, _ = mask_run
    assert set(first) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert {"AP", "AP50", "AP75"} <= set(first[task])
        assert all(value is None or 0.0 <= value <= 100.0 for value in first[task].values())
    config = (output / "config.yaml").read_text()
    # the converter's keys were applied and SyncBN fell back to BN in one process
    assert "DEPTH: 18" in config and "RES2_OUT_CHANNELS: 16" in config
    assert "SyncBN" not in config and "NORM: BN" in config


@pytest.mark.slow
def test_resume_continues_from_the_last_iteration(mask_run):
    output, _, first_metrics, resumed = mask_run
    assert training_iterations(first_metrics) == [1]
    # the resumed run logged iteration 2 only: it restarted neither from 0 nor from 1
    assert training_iterations((output / "metrics.json").read_text()) == [1, 2]
    assert json.loads((output / "results.json").read_text()) == resumed
    assert (output / "last_checkpoint").read_text().strip() == "model_final.pth"


@pytest.mark.slow
def test_keypoint_rcnn_from_converted_weights_reports_keypoint_ap(tmp_path, narrow_weights):
    opts = [
        "MODEL.WEIGHTS", str(narrow_weights), "OUTPUT_DIR", str(tmp_path),
        "SOLVER.MAX_ITER", "2", *LIGHT_HEADS,
    ]  # fmt: skip
    results = run(str(CONFIGS / "tiny_keypoint_rcnn_R50_FPN.yaml"), opts)
    assert set(results) == {"bbox", "keypoints"}
    assert results["keypoints"]["AP"] is not None
    assert json.loads((tmp_path / "results.json").read_text()) == results


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "tasks"),
    [
        ("tiny_mask_rcnn_R50_C4.yaml", {"bbox", "segm"}),
        ("tiny_voc_faster_rcnn_R50_C4.yaml", {"bbox"}),
    ],
)
def test_c4_configs_train_one_iteration_and_evaluate(tmp_path, config, tasks):
    opts = ["MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "1", *THIN_R50]
    results = run(str(CONFIGS / config), opts)
    assert set(results) == tasks
    assert {"AP", "AP50", "AP75"} <= set(results["bbox"])


def test_missing_weights_file_is_one_clear_error(tmp_path):
    with pytest.raises(TransferError, match=r"MODEL.WEIGHTS .*nope.pkl not found.*convert_to_d2"):
        run(
            str(TINY_MASK),
            ["MODEL.WEIGHTS", str(tmp_path / "nope.pkl"), "OUTPUT_DIR", str(tmp_path)],
        )


def test_config_needing_weights_refuses_to_train_from_scratch_silently(tmp_path):
    with pytest.raises(TransferError, match="needs converted weights.*random_init"):
        run(str(TINY_MASK), ["OUTPUT_DIR", str(tmp_path)])


def test_missing_dataset_names_the_file_and_the_variable(tmp_path):
    opts = [
        "MODEL.WEIGHTS",
        "",
        "OUTPUT_DIR",
        str(tmp_path),
        "DATASETS.TRAIN",
        "('coco_2017_train',)",
    ]
    with pytest.raises(
        TransferError,
        match=r"coco_2017_train: .*instances_train2017.json not found.*DETECTRON2_DATASETS",
    ):
        run(str(TINY_MASK), opts)


def test_unknown_config_key_suggests_the_nearest(tmp_path):
    with pytest.raises(
        TransferError, match=r"unknown config key SOLVER.MAX_ITERS.*SOLVER.MAX_ITER\?"
    ):
        run(str(TINY_MASK), ["OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITERS", "3"])


def test_several_gpus_on_a_cpu_machine_is_refused(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA GPUs")
    with pytest.raises(TransferError, match="--num-gpus 2.*no.*--num-gpus 1"):
        run(str(TINY_MASK), ["MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path)], num_gpus=2)


@pytest.mark.slow
def test_weights_of_another_architecture_fail_the_run(tmp_path):
    # narrow ResNet-18 weights without their .json: the config's ResNet-50 finds no backbone
    weights = save_converted_backbone(tmp_path / "r18.pkl", NARROW_R18, with_json=False)
    opts = ["MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(tmp_path / "run"), *LIGHT_HEADS]
    with pytest.raises(
        TransferError, match=r"lacks \d+ pretrained backbone tensors .*backbone.bottom_up"
    ):
        run(str(TINY_MASK), opts)


@pytest.mark.slow
def test_corrupt_weights_file_is_one_clear_error(tmp_path):
    weights = tmp_path / "broken.pkl"
    weights.write_bytes(b"\x80\x04not a pickle at all")
    opts = ["MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(tmp_path / "run"), *LIGHT_HEADS]
    with pytest.raises(TransferError, match="cannot load MODEL.WEIGHTS .*broken.pkl"):
        run(str(TINY_MASK), opts)


def test_entry_point_prints_one_error_line_and_exits_2(tmp_path):
    command = [
        sys.executable, str(REPO / "transfer" / "train_net.py"), "--config-file", str(TINY_MASK),
        "MODEL.WEIGHTS", str(tmp_path / "missing.pkl"), "OUTPUT_DIR", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "missing.pkl not found" in errors[0]
    assert "Traceback" not in done.stderr
