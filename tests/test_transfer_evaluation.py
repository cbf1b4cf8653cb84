"""faster-coco-eval behind Detectron2's COCOEvaluator: every metric equal to pycocotools' (to
1e-6) on bbox, segm and keypoints of the fixtures, with imperfect predictions so the AP is not
trivially 100 or 0."""

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

import transfer.evaluation as evaluation
from transfer.datasets import KEYPOINTS_COCO_VAL, LABELME_COCO, prepare_datasets

from detectron2.config import get_cfg  # isort: skip  (after transfer: _C fallback)
from detectron2.data import DatasetCatalog  # isort: skip
from detectron2.evaluation import COCOEvaluator  # isort: skip
from detectron2.structures import BitMasks, BoxMode, Boxes, Instances  # isort: skip


def noisy_predictions(record, rng):
    """Ground truth moved a little, with random scores and one false positive per image."""
    annotations = record["annotations"]
    height, width = record["height"], record["width"]
    boxes = np.array(
        [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
    )
    boxes = np.vstack([boxes + rng.normal(0, 4, boxes.shape), [[0, 0, width / 3, height / 3]]])
    instances = Instances((height, width))
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    instances.scores = torch.tensor(rng.random(len(boxes)), dtype=torch.float32)
    classes = [a["category_id"] for a in annotations]
    instances.pred_classes = torch.tensor(classes + [classes[0]])
    if "segmentation" in annotations[0]:
        masks = [
            mask_util.decode(
                mask_util.merge(mask_util.frPyObjects(a["segmentation"], height, width))
            )
            for a in annotations
        ]
        masks = [np.roll(m, int(rng.integers(-6, 7)), axis=1) for m in masks]
        masks.append(np.zeros((height, width), dtype=np.uint8))
        masks[-1][: height // 3, : width // 3] = 1
        instances.pred_masks = BitMasks(torch.tensor(np.stack(masks), dtype=torch.bool)).tensor
    if "keypoints" in annotations[0]:
        points = np.array([a["keypoints"] for a in annotations], dtype=np.float32)
        points = points.reshape(len(annotations), -1, 3)
        points[..., :2] += rng.normal(0, 2, points[..., :2].shape)
        points = np.concatenate([points, points[:1] * 0.5])
        instances.pred_keypoints = torch.tensor(points)
    return {"instances": instances}


def evaluate(evaluator, dataset_name):
    rng = np.random.default_rng(0)
    evaluator.reset()
    for record in DatasetCatalog.get(dataset_name):
        evaluator.process([{"image_id": record["image_id"]}], [noisy_predictions(record, rng)])
    return evaluator.evaluate()


@pytest.fixture(scope="module", autouse=True)
def datasets():
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (LABELME_COCO,)
    cfg.DATASETS.TEST = (KEYPOINTS_COCO_VAL,)
    prepare_datasets(cfg)


@pytest.mark.parametrize(
    ("dataset", "tasks"),
    [(LABELME_COCO, ("bbox", "segm")), (KEYPOINTS_COCO_VAL, ("bbox", "keypoints"))],
)
def test_faster_coco_eval_equals_pycocotools(tmp_path, monkeypatch, dataset, tasks):
    used = []
    real = evaluation.coco_eval_for
    monkeypatch.setattr(
        evaluation, "coco_eval_for", lambda *args: used.append(type(real(*args))) or real(*args)
    )
    reference = evaluate(
        COCOEvaluator(dataset, tasks=tasks, output_dir=str(tmp_path), use_fast_impl=False), dataset
    )
    faster = evaluate(
        evaluation.FasterCOCOEvaluator(dataset, tasks=tasks, output_dir=str(tmp_path)), dataset
    )

    assert set(used) == {evaluation.COCOeval_faster}  # the fast path really ran
    for task in tasks:
        assert set(faster[task]) == set(reference[task])
        assert 5.0 < reference[task]["AP"] < 95.0  # imperfect predictions: a real comparison
        for metric, value in reference[task].items():
            # Detectron2 reports AP in percent: 1e-6 of AP is 1e-4 of a percent; ask for more
            assert faster[task][metric] == pytest.approx(value, abs=1e-6, nan_ok=True), metric


def test_detectron2s_compiled_evaluator_is_restored_after_evaluating(tmp_path):
    from detectron2.evaluation import coco_evaluation

    before = coco_evaluation.COCOeval_opt
    evaluate(
        evaluation.FasterCOCOEvaluator(LABELME_COCO, tasks=("bbox",), output_dir=str(tmp_path)),
        LABELME_COCO,
    )
    assert coco_evaluation.COCOeval_opt is before


def test_benchmark_small_run_agrees_and_prints_speedups_last(tmp_path, capsys):
    import json

    from benchmarks import coco_eval as script

    assert script.main(["--small", "--json", str(tmp_path / "coco.json")]) == 0

    rows = json.loads((tmp_path / "coco.json").read_text())["rows"]
    assert [row["task"] for row in rows] == ["bbox", "segm", "keypoints"]
    assert all(row["max_abs_stat_diff"] <= 1e-6 and 0.05 < row["AP"] < 0.95 for row in rows)
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("speedup keypoints:")
