"""transfer.evaluation's COCOEvaluator (faster-coco-eval from the predictions to the stats): every
metric equal to Detectron2's pycocotools path (to 1e-6) on bbox, segm and keypoints of the
fixtures, with imperfect predictions so the AP is not trivially 100 or 0; Detectron2's files,
image subsets and detection limits alike; bad input refused in one line. The benchmark's small
run checks the same at 50 images x 20 detections for every task."""

import contextlib
import copy
import io
import json

import faster_coco_eval
import numpy as np
import pycocotools.coco as pycocotools_coco
import pycocotools.cocoeval as pycocotools_eval
import pytest
import torch
from pycocotools import mask as mask_util

import transfer.evaluation as evaluation
from transfer.datasets import KEYPOINTS_COCO_VAL, LABELME_COCO, prepare_datasets
from transfer.errors import TransferError

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


def reference_evaluator(dataset, tasks, tmp_path, **kwargs):
    """Detectron2's own path: pycocotools' loadRes and COCOeval."""
    return COCOEvaluator(
        dataset, tasks=tasks, output_dir=str(tmp_path / "reference"), use_fast_impl=False, **kwargs
    )


def faster_evaluator(dataset, tasks, tmp_path, **kwargs):
    return evaluation.FasterCOCOEvaluator(
        dataset, tasks=tasks, output_dir=str(tmp_path / "faster"), **kwargs
    )


def without_pycocotools_evaluation(monkeypatch):
    """Fail if pycocotools' loadRes or COCOeval run (the faster path uses neither)."""

    def refuse(*args, **kwargs):
        raise AssertionError("pycocotools ran on the faster path")

    monkeypatch.setattr(pycocotools_coco.COCO, "loadRes", refuse)
    monkeypatch.setattr(pycocotools_eval.COCOeval, "evaluate", refuse)


def assert_same_metrics(faster, reference, tasks):
    for task in tasks:
        assert set(faster[task]) == set(reference[task])
        assert 5.0 < reference[task]["AP"] < 95.0  # imperfect predictions: a real comparison
        for metric, value in reference[task].items():
            # Detectron2 reports AP in percent: 1e-6 of AP is 1e-4 of a percent; ask for more
            assert faster[task][metric] == pytest.approx(value, abs=1e-6, nan_ok=True), metric


def same(metrics, other):
    """Equal metric dicts, NaN (a metric without data) equal to NaN."""
    return json.dumps(metrics, sort_keys=True) == json.dumps(other, sort_keys=True)


TASKS_OF = [(LABELME_COCO, ("bbox", "segm")), (KEYPOINTS_COCO_VAL, ("bbox", "keypoints"))]


@pytest.mark.parametrize(("dataset", "tasks"), TASKS_OF)
def test_faster_evaluator_equals_pycocotools_end_to_end(tmp_path, monkeypatch, dataset, tasks):
    reference = evaluate(reference_evaluator(dataset, tasks, tmp_path), dataset)
    without_pycocotools_evaluation(monkeypatch)
    faster = evaluate(faster_evaluator(dataset, tasks, tmp_path), dataset)
    assert_same_metrics(faster, reference, tasks)


@pytest.mark.parametrize(("dataset", "tasks"), TASKS_OF)
def test_results_file_and_a_second_evaluation_are_detectron2s(tmp_path, dataset, tasks):
    reference = reference_evaluator(dataset, tasks, tmp_path)
    faster = faster_evaluator(dataset, tasks, tmp_path)
    first = evaluate(faster, dataset)
    written = json.loads((tmp_path / "faster" / evaluation.RESULTS_FILE).read_text())
    evaluate(reference, dataset)
    assert written == json.loads((tmp_path / "reference" / evaluation.RESULTS_FILE).read_text())
    # the held predictions keep the model's class ids: evaluating again maps them once more
    assert same(faster.evaluate(), first)


def test_image_subset_and_detection_limit_equal_pycocotools(tmp_path):
    dataset, tasks = LABELME_COCO, ("bbox", "segm")
    image_ids = [record["image_id"] for record in DatasetCatalog.get(dataset)][:2]
    limits = {"max_dets_per_image": 3}  # fewer than some images' detections: the cut matters
    reference = reference_evaluator(dataset, tasks, tmp_path, **limits)
    faster = faster_evaluator(dataset, tasks, tmp_path, **limits)
    for evaluator in (reference, faster):
        evaluate(evaluator, dataset)
    expected = reference.evaluate(img_ids=image_ids)
    assert_same_metrics(faster.evaluate(img_ids=image_ids), expected, tasks)
    assert expected != evaluate(reference_evaluator(dataset, tasks, tmp_path), dataset)


def test_no_detections_give_detectron2s_nan_metrics(tmp_path):
    tasks = ("bbox", "keypoints")
    found = []
    for evaluator in (
        reference_evaluator(KEYPOINTS_COCO_VAL, tasks, tmp_path),
        faster_evaluator(KEYPOINTS_COCO_VAL, tasks, tmp_path),
    ):
        evaluator.reset()
        for record in DatasetCatalog.get(KEYPOINTS_COCO_VAL):
            empty = Instances((record["height"], record["width"]))
            empty.pred_boxes = Boxes(torch.zeros((0, 4)))
            empty.scores, empty.pred_classes = torch.zeros(0), torch.zeros(0, dtype=torch.long)
            evaluator.process([{"image_id": record["image_id"]}], [{"instances": empty}])
        found.append(evaluator.evaluate())
    assert set(found[1]) == set(tasks) and np.isnan(found[1]["keypoints"]["AP"])
    assert same(*found)


def test_keypoint_count_mismatch_is_one_line_error(tmp_path):
    evaluator = faster_evaluator(
        KEYPOINTS_COCO_VAL, ("keypoints",), tmp_path, kpt_oks_sigmas=(0.1,) * 5
    )
    with pytest.raises(TransferError, match="give one OKS sigma per keypoint") as raised:
        evaluate(evaluator, KEYPOINTS_COCO_VAL)
    assert "\n" not in str(raised.value)


def test_class_outside_the_dataset_is_one_line_error(tmp_path):
    evaluator = faster_evaluator(KEYPOINTS_COCO_VAL, ("bbox",), tmp_path)
    evaluator.reset()
    record = DatasetCatalog.get(KEYPOINTS_COCO_VAL)[0]
    outputs = noisy_predictions(record, np.random.default_rng(0))
    outputs["instances"].pred_classes[:] = 3  # the dataset has one class (0)
    evaluator.process([{"image_id": record["image_id"]}], [outputs])
    with pytest.raises(TransferError, match="MODEL.ROI_HEADS.NUM_CLASSES must match"):
        evaluator.evaluate()


def keypoint_set(rng, num_images=6, keypoints=17):
    """Truths with every keypoint, 11, 3 or none labelled (integer pixels, as COCO's); 40 float
    detections per image (past keypoint evaluation's 20: the cut by score matters). Sums of 8
    or more terms are where numpy's order can differ in the last bit."""
    images, truths, detections = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": 200, "height": 150})
        for labelled in (keypoints, 11, 3, 0):
            x, y = rng.integers(0, 100, 2)
            points = np.stack(
                [x + rng.integers(0, 60, keypoints), y + rng.integers(0, 60, keypoints),
                 np.where(np.arange(keypoints) < labelled, 2, 0)], 1
            )  # fmt: skip
            truths.append(
                {"id": len(truths) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                 "bbox": [float(x), float(y), 60.0, 60.0], "area": float(rng.uniform(900, 3600)),
                 "keypoints": points.ravel().tolist(), "num_keypoints": labelled}
            )  # fmt: skip
            for _ in range(10):
                moved = points[:, :2] + rng.normal(0, rng.uniform(1, 30), (keypoints, 2))
                found = np.concatenate([moved, np.ones((keypoints, 1))], 1).ravel().tolist()
                detections.append(
                    {"image_id": image_id, "category_id": 1, "keypoints": found,
                     "score": float(rng.random())}
                )  # fmt: skip
    category = {"id": 1, "name": "thing", "keypoints": [f"k{i}" for i in range(keypoints)]}
    return {"images": images, "annotations": truths, "categories": [category]}, detections


def test_keypoint_similarity_is_pycocotools_bit_for_bit():
    dataset, detections = keypoint_set(np.random.default_rng(0))
    sigmas = np.linspace(0.025, 0.107, 17)  # a dataset's own (user_datasets), not COCO's
    with contextlib.redirect_stdout(io.StringIO()):
        truths = pycocotools_coco.COCO()
        truths.dataset = copy.deepcopy(dataset)
        truths.createIndex()
        reference = pycocotools_eval.COCOeval(
            truths, truths.loadRes(copy.deepcopy(detections)), "keypoints"
        )
        reference.params.kpt_oks_sigmas = sigmas
        reference.evaluate()
    ground_truth = faster_coco_eval.COCO(dataset)
    ours = evaluation.FasterCOCOeval(
        ground_truth, ground_truth.loadRes(detections), "keypoints", kpt_oks_sigmas=sigmas
    )
    ours.evaluate()

    assert len(reference.ious) == 6 and all(len(oks) == 20 for oks in reference.ious.values())
    for pair, oks in reference.ious.items():
        assert np.array_equal(ours.ious[pair], oks), pair  # not one bit apart


def test_predictions_for_an_image_outside_the_dataset_are_one_line_error(tmp_path):
    evaluator = faster_evaluator(KEYPOINTS_COCO_VAL, ("bbox",), tmp_path)
    evaluator.reset()
    record = DatasetCatalog.get(KEYPOINTS_COCO_VAL)[0]
    evaluator.process([{"image_id": 999}], [noisy_predictions(record, np.random.default_rng(0))])
    with pytest.raises(TransferError, match="predictions for image id 999, which the dataset"):
        evaluator.evaluate()


def test_benchmark_small_run_agrees_and_prints_speedups_last(tmp_path, capsys):
    from benchmarks import coco_eval as script

    assert script.main(["--small", "--json", str(tmp_path / "coco.json")]) == 0

    rows = json.loads((tmp_path / "coco.json").read_text())["rows"]
    assert [row["task"] for row in rows] == ["bbox", "segm", "keypoints"]
    assert all(row["max_abs_stat_diff"] <= 1e-6 and 0.05 < row["AP"] < 0.95 for row in rows)
    assert all(row["reference_s"] > 0 and row["ours_s"] > 0 for row in rows)
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("speedup keypoints:")


def test_benchmark_refuses_an_unknown_task(capsys):
    from benchmarks import coco_eval as script

    assert script.main(["--small", "--tasks", "bbox,masks"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unknown task 'masks'" in err and err.count("\n") == 1
