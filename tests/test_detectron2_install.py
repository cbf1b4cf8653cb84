"""Issue 2: Detectron2 imports, the `_C` fallback is used only when needed, and Mask R-CNN and
Keypoint R-CNN from the project's own configs train and evaluate on CPU."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import transfer
from transfer.engine import run

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "transfer"
# one iteration at a small size keeps the full-size R50 models affordable on two CPU cores
ONE_SMALL_ITERATION = [
    "SOLVER.MAX_ITER", "1", "SOLVER.IMS_PER_BATCH", "1", "SOLVER.BASE_LR", "0.001",
    "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "DATALOADER.NUM_WORKERS", "0",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "SOLVER.CHECKPOINT_PERIOD", "100000",
    "TEST.DETECTIONS_PER_IMAGE", "10",
]  # fmt: skip

PROBE = """
import sys, types
{prepare}
from transfer.detectron2_env import ensure_detectron2
kind = ensure_detectron2()
print(kind, "FAKE" in vars(sys.modules["detectron2._C"]))
"""
FAKE_COMPILED = """
import detectron2
detectron2.__path__.append({folder!r})
"""


def probe_c_extension(prepare):
    code = textwrap.dedent(PROBE.format(prepare=prepare))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_compiled_extension_is_preferred_to_the_fallback(tmp_path):
    (tmp_path / "_C.py").write_text("FAKE = True\n")
    kind, is_fake = probe_c_extension(FAKE_COMPILED.format(folder=str(tmp_path)))
    assert (kind, is_fake) == ("compiled", "True")


def test_fallback_is_used_when_the_extension_is_missing():
    if transfer.DETECTRON2_C == "compiled":
        pytest.skip("this environment has a compiled detectron2._C")
    kind, is_fake = probe_c_extension("")
    assert (kind, is_fake) == ("fallback", "False")


def test_uncovered_op_names_itself_and_the_fix():
    if transfer.DETECTRON2_C == "compiled":
        pytest.skip("this environment has a compiled detectron2._C")
    import torch
    from detectron2.layers import nms_rotated

    from transfer._C_fallback import MissingCompiledOp

    boxes = torch.tensor([[5.0, 5.0, 4.0, 4.0, 0.0], [5.0, 5.0, 4.0, 4.0, 10.0]])
    with pytest.raises(MissingCompiledOp, match="nms_rotated.*compiled Detectron2"):
        nms_rotated(boxes, torch.tensor([0.9, 0.8]), 0.5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "dataset", "tasks"),
    [
        ("coco_mask_rcnn_R50_FPN_1x_random_init.yaml", "ringnce_labelme_coco", {"bbox", "segm"}),
        (
            "coco_keypoint_rcnn_R50_FPN_1x_random_init.yaml",
            "ringnce_keypoints_coco_val",
            {"bbox", "keypoints"},
        ),
    ],
)
def test_project_config_trains_one_iteration_and_evaluates(tmp_path, config, dataset, tasks):
    opts = ONE_SMALL_ITERATION + [
        "DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST", f"('{dataset}',)",
        "OUTPUT_DIR", str(tmp_path),
    ]  # fmt: skip
    if dataset == "ringnce_labelme_coco":
        opts += ["MODEL.ROI_HEADS.NUM_CLASSES", "21"]
    results = run(str(CONFIGS / config), opts)
    assert set(results) == tasks
    for task in tasks:
        # an untrained model scores near zero, but COCOeval must have run and produced numbers
        assert 0.0 <= results[task]["AP"] <= 100.0
    assert (tmp_path / "model_final.pth").is_file()
    assert (tmp_path / "metrics.json").is_file()
