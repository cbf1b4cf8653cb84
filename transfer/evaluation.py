"""COCO evaluation of transfer runs: Detectron2's ``COCOEvaluator`` interface, faster-coco-eval
from the predictions to the stats.

Detectron2's own path, per task: a deep copy of every result (segm), pycocotools' ``loadRes`` and
index in Python, then COCOeval (its fast ``COCOeval_opt`` needs the compiled ``detectron2._C``,
which the pip-only install lacks, so pycocotools' Python COCOeval). Here each task gets new
result dicts holding only what its COCOeval reads, built in one pass as ``loadRes`` would build
them, indexed by faster-coco-eval's COCO and evaluated by its C++ COCOeval over the same
ground-truth dicts, with the keypoint similarity vectorised and the garbage collector paused.
The stats are pycocotools' (to 1e-6 on bbox, segm and keypoints, the keypoint similarities bit
for bit: ``tests/test_transfer_evaluation.py``); the speed is in ``benchmarks/coco_eval.py``.
Everything else is Detectron2's: ``process``, the predictions file, the results file, the
metric names and the per-category table.
"""

import copy
import gc
import json
import os
from contextlib import contextmanager

import numpy as np
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.file_io import PathManager
from faster_coco_eval import COCO, COCOeval_faster
from faster_coco_eval.core import mask as mask_api

from transfer.errors import TransferError

RESULTS_FILE = "coco_instances_results.json"  # Detectron2's name, so its tools find the file

TASKS = ("bbox", "segm", "keypoints")


@contextmanager
def collection_paused():
    """Python's cyclic garbage collector off for the duration.

    Evaluation allocates a few dicts per detection (500k per task on COCO val) and frees none of
    them while it runs; every collection the allocations trigger walks all of them again.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_detections(ground_truth, results, task):
    """One task's results as faster-coco-eval's COCO of detections: what its ``loadRes`` makes
    of Detectron2's results (ids 1..n in order, ``iscrowd`` 0; a box gives the area; a mask alone
    gives the area), in new dicts holding only what the task's COCOeval reads, in one pass, the
    masks' areas in one call (``loadRes`` makes one per mask, and a second for the mask's
    bounding box, which no segm evaluation reads). As in Detectron2, segm is evaluated without
    the predicted boxes, so that its area ranges (small/medium/large) are the masks'; bbox and
    keypoints take the area of the box.
    """
    unknown = {result["image_id"] for result in results} - set(ground_truth.getImgIds())
    if unknown:
        raise TransferError(
            f"predictions for image id {min(unknown)}, which the dataset does not have: evaluate "
            "a model's predictions on the dataset the evaluator was built for"
        )
    if task == "segm":
        masks = [result["segmentation"] for result in results]
        annotations = [
            {"image_id": result["image_id"], "category_id": result["category_id"],
             "score": result["score"], "segmentation": mask, "area": area}
            for result, mask, area in zip(results, masks, mask_api.area(masks))
        ]  # fmt: skip
    else:
        annotations = [
            {"image_id": result["image_id"], "category_id": result["category_id"],
             "score": result["score"], "bbox": result["bbox"],
             "area": result["bbox"][2] * result["bbox"][3]}
            for result in results
        ]  # fmt: skip
    if task == "keypoints":
        for annotation, result in zip(annotations, results):
            annotation["keypoints"] = result["keypoints"]
    for number, annotation in enumerate(annotations, 1):
        annotation["id"], annotation["iscrowd"] = number, 0
    detections = COCO()
    detections.dataset = {
        "info": copy.deepcopy(ground_truth.dataset.get("info", {})),
        "images": list(ground_truth.dataset["images"]),
        "categories": copy.deepcopy(ground_truth.dataset["categories"]),
        "annotations": annotations,
    }
    detections.createIndex()
    return detections


class FasterCOCOeval(COCOeval_faster):
    """faster-coco-eval's C++ COCOeval with the keypoint similarity vectorised: its own
    ``computeOks`` sums each detection-truth pair in a Python loop, most of a keypoint
    evaluation's time."""

    def computeOks(self, imgId, catId):  # the COCOeval interface names it
        return keypoint_similarity(self, imgId, catId)


def keypoint_similarity(coco_eval, image_id, category_id):
    """(detections x truths) object keypoint similarity of one image and category, bit for bit
    pycocotools' ``computeOks`` (the COCO keypoint OKS), vectorised over detections and truths.

    ``OKS = sum_i exp(-d_i^2 / (2 s^2 k_i^2)) / n`` over a truth's ``n`` labelled keypoints
    (``v_i > 0``), with ``s^2`` its area and ``k_i = 2 sigma_i``; a truth with none labelled
    measures each keypoint's distance to its box grown by the box's size on every side, over all
    keypoints. Elementwise arithmetic in pycocotools' order; each sum over one C-contiguous row,
    which numpy reduces as it reduces pycocotools' 1-D rows (summing across a strided or
    Fortran-ordered array can differ in the last bit, and a last bit can move a match).
    """
    params = coco_eval.params
    truths = coco_eval.gt_dataset.get(image_id, category_id)
    detections = coco_eval.dt_dataset.get(image_id, category_id)
    order = np.argsort([-d["score"] for d in detections], kind="mergesort")[: params.maxDets[-1]]
    if len(truths) == 0 or len(order) == 0:
        return []
    found = np.array([detections[i]["keypoints"] for i in order], dtype=float)
    found = found.reshape(len(order), 1, -1, 3)  # detections x 1 x keypoints
    labelled = np.array([t["keypoints"] for t in truths], dtype=float).reshape(len(truths), -1, 3)
    boxes = np.array([t["bbox"] for t in truths], dtype=float)[:, :, None]  # truths x 4 x 1
    visible = labelled[:, :, 2] > 0
    seen = visible.any(axis=1)  # truths with a labelled keypoint compare points
    dx = np.where(
        seen[:, None],
        found[..., 0] - labelled[:, :, 0],
        np.maximum(0, boxes[:, 0] - boxes[:, 2] - found[..., 0])
        + np.maximum(0, found[..., 0] - (boxes[:, 0] + boxes[:, 2] * 2)),
    )
    dy = np.where(
        seen[:, None],
        found[..., 1] - labelled[:, :, 1],
        np.maximum(0, boxes[:, 1] - boxes[:, 3] - found[..., 1])
        + np.maximum(0, found[..., 1] - (boxes[:, 1] + boxes[:, 3] * 2)),
    )
    if coco_eval.use_area:
        areas = np.array([t["area"] for t in truths], dtype=float)
    else:  # CrowdPose-style truths without an area: faster-coco-eval's stand-in
        areas = boxes[:, 3, 0] * boxes[:, 2, 0] * 0.53
    variances = (params.kpt_oks_sigmas * 2) ** 2
    similarity = np.exp(-((dx**2 + dy**2) / variances / (areas[:, None] + np.spacing(1)) / 2))
    counted = np.where(seen[:, None], visible, True)
    oks = np.empty((len(order), len(truths)))
    for index, keypoints in enumerate(counted):
        rows = np.ascontiguousarray(similarity[:, index, keypoints])
        oks[:, index] = rows.sum(axis=1) / rows.shape[1]
    return oks


class FasterCOCOEvaluator(COCOEvaluator):
    """Detectron2's COCOEvaluator, evaluating with faster-coco-eval's COCO and COCOeval."""

    def __init__(self, dataset_name, tasks=None, output_dir=None, **kwargs):
        super().__init__(dataset_name, tasks=tasks, output_dir=output_dir, **kwargs)
        self._faster_ground_truth = None

    def ground_truth(self):
        """faster-coco-eval's index over Detectron2's ground-truth dicts (shared, not copied)."""
        if self._faster_ground_truth is None:
            self._faster_ground_truth = COCO(self._coco_api.dataset)
        return self._faster_ground_truth

    def _eval_predictions(self, predictions, img_ids=None):
        with collection_paused():
            results = self.dataset_results(predictions)
            tasks = self._tasks or self._tasks_from_predictions(results)
            if self._output_dir:
                with PathManager.open(os.path.join(self._output_dir, RESULTS_FILE), "w") as f:
                    f.write(json.dumps(results))
            if not self._do_evaluation:
                return
            for task in sorted(tasks):
                if task not in TASKS:
                    raise TransferError(
                        f"unknown COCO task '{task}'; choose from {', '.join(TASKS)}"
                    )
                coco_eval = self.evaluate_task(results, task, img_ids) if results else None
                self._results[task] = self._derive_coco_results(
                    coco_eval, task, class_names=self._metadata.get("thing_classes")
                )

    def dataset_results(self, predictions):
        """Every image's results in one list, with the dataset's own category ids (new dicts:
        evaluating twice must not map the ids twice)."""
        results = [result for prediction in predictions for result in prediction["instances"]]
        to_dataset = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if not to_dataset:
            return results
        dataset_ids = {contiguous: dataset for dataset, contiguous in to_dataset.items()}
        try:
            return [
                {**result, "category_id": dataset_ids[result["category_id"]]} for result in results
            ]
        except KeyError as error:
            raise TransferError(
                f"a prediction has class {error.args[0]}, but the dataset's classes are 0 to "
                f"{len(dataset_ids) - 1}: MODEL.ROI_HEADS.NUM_CLASSES must match the test dataset"
            ) from None

    def evaluate_task(self, results, task, img_ids):
        """faster-coco-eval's COCOeval of one task, summarised (its ``stats`` are pycocotools')."""
        ground_truth = self.ground_truth()
        detections = load_detections(ground_truth, results, task)
        coco_eval = FasterCOCOeval(ground_truth, detections, task)
        params = coco_eval.params
        # pycocotools' categories: every one in the dataset (faster-coco-eval's keypoint default
        # keeps only those with annotations, which changes the per-category table's columns)
        params.catIds = sorted(ground_truth.getCatIds())
        if img_ids is not None:
            params.imgIds = img_ids
        if task == "keypoints":
            self.set_keypoint_sigmas(params, results, ground_truth)
        else:
            params.maxDets = self._max_dets_per_image
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        return coco_eval

    def set_keypoint_sigmas(self, params, results, ground_truth):
        if self._kpt_oks_sigmas:
            params.kpt_oks_sigmas = np.array(self._kpt_oks_sigmas)
        predicted = len(results[0]["keypoints"]) // 3
        annotated = len(next(iter(ground_truth.anns.values()))["keypoints"]) // 3
        sigmas = len(params.kpt_oks_sigmas)
        if not predicted == annotated == sigmas:
            raise TransferError(
                f"predictions have {predicted} keypoints, the ground truth {annotated} and "
                f"TEST.KEYPOINT_OKS_SIGMAS {sigmas}: give one OKS sigma per keypoint of the dataset"
            )
