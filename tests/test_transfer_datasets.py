"""Fixtures and dataset loaders: ground truth fed back as predictions must score AP 100 with the
evaluators the transfer runs use, so a wrong box/keypoint convention cannot hide."""

import json

import pytest

from transfer import fixtures
from transfer.config import TransferError
from transfer.datasets import (
    KEYPOINT_FIXTURES,
    KEYPOINTS_COCO_VAL,
    LABELME_COCO,
    LABELME_VOC_TEST,
    build_fixture,
    register_project_datasets,
)
from transfer.evaluation import FasterCOCOEvaluator

from detectron2.data import DatasetCatalog  # isort: skip  (after transfer: _C fallback)
from ground_truth import ground_truth_as_predictions  # isort: skip
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator  # isort: skip
from detectron2.structures import BoxMode  # isort: skip


def evaluate_ground_truth(evaluator, dataset_name):
    evaluator.reset()
    for record in DatasetCatalog.get(dataset_name):
        evaluator.process([{"image_id": record["image_id"]}], [ground_truth_as_predictions(record)])
    return evaluator.evaluate()


@pytest.fixture(scope="module", autouse=True)
def registered():
    register_project_datasets()


def test_generated_keypoints_score_100_as_their_own_predictions(tmp_path):
    build_fixture(KEYPOINTS_COCO_VAL)
    evaluator = COCOEvaluator(
        KEYPOINTS_COCO_VAL, tasks=("bbox", "keypoints"), output_dir=str(tmp_path),
        use_fast_impl=False,
    )  # fmt: skip
    results = evaluate_ground_truth(evaluator, KEYPOINTS_COCO_VAL)
    assert results["keypoints"]["AP"] == pytest.approx(100.0)
    assert results["bbox"]["AP"] == pytest.approx(100.0)


def test_labelme_coco_scores_100_as_its_own_predictions(tmp_path):
    """labelme numbers annotations from 0, and COCOeval reads a match with annotation 0 as no
    match: unless the fixture is renumbered, exact boxes score far below 100 (94.9)."""
    build_fixture(LABELME_COCO)
    evaluator = FasterCOCOEvaluator(LABELME_COCO, tasks=("bbox",), output_dir=str(tmp_path))
    assert evaluate_ground_truth(evaluator, LABELME_COCO)["bbox"]["AP"] == pytest.approx(100.0)


def test_labelme_voc_layout_scores_100_with_the_voc_evaluator():
    build_fixture(LABELME_VOC_TEST)
    results = evaluate_ground_truth(PascalVOCDetectionEvaluator(LABELME_VOC_TEST), LABELME_VOC_TEST)
    present = {
        a["category_id"] for r in DatasetCatalog.get(LABELME_VOC_TEST) for a in r["annotations"]
    }
    # Detectron2's VOC evaluator averages over all 20 classes; absent ones count as AP 0
    assert results["bbox"]["AP50"] == pytest.approx(100.0 * len(present) / 20)
    assert 0 < len(present) < 20


def test_voc_loader_returns_the_coco_boxes_of_the_same_photos():
    build_fixture(LABELME_VOC_TEST)
    coco = {
        record["file_name"].rsplit("/", 1)[-1]: record
        for record in DatasetCatalog.get(LABELME_COCO)
    }
    voc = DatasetCatalog.get(LABELME_VOC_TEST)
    assert len(voc) == len(coco) == 3
    for record in voc:
        expected = coco[record["file_name"].rsplit("/", 1)[-1]]
        boxes = sorted(a["bbox"] for a in record["annotations"])
        coco_boxes = sorted(
            BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
            for a in expected["annotations"]
        )
        # VOC stores integer pixel indices: at most one pixel of rounding
        assert len(boxes) == len(coco_boxes)
        for box, coco_box in zip(boxes, coco_boxes):
            assert max(abs(a - b) for a, b in zip(box, coco_box)) <= 1.0
        # labelme ids are VOC ids + 1 (its id 0 is "_background_")
        assert sorted(a["category_id"] for a in record["annotations"]) == sorted(
            a["category_id"] - 1 for a in expected["annotations"]
        )


def test_keypoint_fixture_is_deterministic(tmp_path, monkeypatch):
    params = KEYPOINT_FIXTURES[KEYPOINTS_COCO_VAL]
    monkeypatch.setenv("RINGNCE_CACHE", str(tmp_path))
    generated = json.loads((fixtures.keypoints_coco_dir(**params) / "annotations.json").read_text())
    monkeypatch.delenv("RINGNCE_CACHE")
    cached = json.loads((fixtures.keypoints_coco_dir(**params) / "annotations.json").read_text())
    assert generated == cached
    assert all(a["num_keypoints"] == 17 and a["area"] > 0 for a in generated["annotations"])


def test_missing_labelme_fixture_says_how_to_fetch_it(tmp_path, monkeypatch):
    monkeypatch.setenv("RINGNCE_CACHE", str(tmp_path))
    with pytest.raises(
        TransferError, match=r"labelme COCO fixture not found.*make test.*setup_env"
    ):
        fixtures.labelme_coco_dir()
