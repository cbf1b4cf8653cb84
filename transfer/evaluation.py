"""COCO evaluation of transfer runs: Detectron2's ``COCOEvaluator`` interface, faster-coco-eval
from the predictions to the stats.

Detectron2's own path, per task: a deep copy of every result (segm), pycocotools' ``loadRes`` and
index in Python, then COCOeval (its fast ``COCOeval_opt`` needs the compiled ``detectron2._C``,
which the pip-only install lacks, so pycocotools' Python COCOeval). Here each task gets fresh,
shallow result dicts holding only what its COCOeval reads, loaded by faster-coco-eval's
``COCO.loadRes`` and evaluated by its C++ COCOeval over the same ground-truth dicts. The stats are
pycocotools' to 1e-6 on bbox, segm and keypoints (``tests/test_transfer_evaluation.py``); the
speed is in ``benchmarks/coco_eval.py``. Everything else is Detectron2's: ``process``, the
predictions file, the results file, the metric names and the per-category table.
"""

import gc
import json
import os
from contextlib import contextmanager

import numpy as np
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.file_io import PathManager
from faster_coco_eval import COCO, COCOeval_faster

from transfer.errors import TransferError

RESULTS_FILE = "coco_instances_results.json"  # Detectron2's name, so its tools find the file

# What each task's COCOeval reads from a result beyond image, category and score. segm drops the
# box so that loadRes takes the area (small/medium/large) from the mask, as Detectron2 does;
# keypoints keep it: loadRes then takes their area from the box, as it does for Detectron2.
TASK_FIELDS = {"bbox": ("bbox",), "segm": ("segmentation",), "keypoints": ("bbox", "keypoints")}


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


def task_results(results, task):
    """Fresh result dicts for one task (loadRes adds its keys to these, never to ``results``)."""
    fields = [field for field in TASK_FIELDS[task] if field in results[0]]
    return [
        {
            "image_id": result["image_id"],
            "category_id": result["category_id"],
            "score": result["score"],
            **{field: result[field] for field in fields},
        }
        for result in results
    ]


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
                if task not in TASK_FIELDS:
                    raise TransferError(
                        f"unknown COCO task '{task}'; choose from {', '.join(TASK_FIELDS)}"
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
        detections = ground_truth.loadRes(task_results(results, task))
        coco_eval = COCOeval_faster(ground_truth, detections, task)
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
