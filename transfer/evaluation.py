"""COCO evaluation of transfer runs: Detectron2's ``COCOEvaluator``, its AP computed by
faster-coco-eval where that is faster and equal to pycocotools.

Detectron2's own fast evaluator (``COCOeval_opt``) needs the compiled ``detectron2._C``, which the
pip-only install lacks, so it used to evaluate with pycocotools. faster-coco-eval is a C++
re-implementation of the same COCOeval with the same API (``params``, ``eval["precision"]``,
``stats``); ``benchmarks/coco_eval.py`` measures it faster on every task and
``tests/test_transfer_evaluation.py`` checks its AP against pycocotools' to 1e-6 on bbox, segm and
keypoints. With a compiled Detectron2 the evaluator is the same.
"""

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation import coco_evaluation as detectron2_coco
from faster_coco_eval import COCO as FasterCOCO
from faster_coco_eval import COCOeval_faster
from pycocotools.cocoeval import COCOeval

# The tasks faster-coco-eval computes: measured faster with equal AP (docs/benchmarks.md).
FASTER_TASKS = ("bbox", "segm", "keypoints")


def coco_eval_for(coco_gt, coco_dt, iou_type):
    """The COCOeval Detectron2 runs for one task: faster-coco-eval's, or pycocotools' elsewhere."""
    if iou_type not in FASTER_TASKS:
        return COCOeval(coco_gt, coco_dt, iou_type)
    # Detectron2 built pycocotools COCO objects; faster-coco-eval's keypoint path reads index
    # maps only its own COCO class has, so re-index the same dicts (no copy) in that class.
    return COCOeval_faster(as_faster(coco_gt), as_faster(coco_dt), iou_type)


def as_faster(coco):
    return coco if isinstance(coco, FasterCOCO) else FasterCOCO(coco.dataset)


class FasterCOCOEvaluator(COCOEvaluator):
    """Detectron2's COCOEvaluator on its fast path, with faster-coco-eval as the fast COCOeval."""

    def __init__(self, dataset_name, tasks=None, output_dir=None, **kwargs):
        super().__init__(
            dataset_name, tasks=tasks, output_dir=output_dir, use_fast_impl=True, **kwargs
        )

    def _eval_predictions(self, predictions, img_ids=None):
        # Detectron2 looks COCOeval_opt up in its module at call time; swap it for this call only
        compiled = detectron2_coco.COCOeval_opt
        detectron2_coco.COCOeval_opt = coco_eval_for
        try:
            super()._eval_predictions(predictions, img_ids=img_ids)
        finally:
            detectron2_coco.COCOeval_opt = compiled
