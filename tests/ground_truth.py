"""A dataset record's ground truth as a model's prediction: an evaluator fed these must score
AP 100, which checks a dataset's annotations and our evaluation together."""

import numpy as np
import torch
from pycocotools import mask as mask_utils

import transfer  # noqa: F401  (registers the _C fallback before Detectron2 is imported)

from detectron2.structures import BitMasks, BoxMode, Boxes, Instances  # isort: skip


def ground_truth_as_predictions(record):
    """Boxes and classes always; masks when the segmentation is RLE; keypoints when present."""
    annotations = record["annotations"]
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
    instances = Instances((record["height"], record["width"]))
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    instances.scores = torch.ones(len(annotations))
    instances.pred_classes = torch.tensor([a["category_id"] for a in annotations])
    if isinstance(annotations[0].get("segmentation"), dict):
        masks = [mask_utils.decode(a["segmentation"]) for a in annotations]
        instances.pred_masks = BitMasks(torch.tensor(np.stack(masks), dtype=torch.bool)).tensor
    if "keypoints" in annotations[0]:
        keypoints = torch.tensor([a["keypoints"] for a in annotations], dtype=torch.float32)
        instances.pred_keypoints = keypoints.view(len(annotations), -1, 3)
    return {"instances": instances}
