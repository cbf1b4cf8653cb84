"""Time COCO evaluation end to end per task: Detectron2 + pycocotools vs transfer's evaluator.

    python -m benchmarks.coco_eval [--small] [--images N] [--detections D] [--repeats R]
        [--json OUT]

A generated COCO-val-sized set (5,000 640x480 images, ~7 ground-truth people each with a box, a
polygon mask and 17 keypoints; ~100 detections per image: jittered copies of the ground truth
and random false positives) held the way Detectron2's ``COCOEvaluator`` holds a model's
predictions after ``process``: per image, COCO-format results with contiguous class ids (boxes
for bbox; boxes and RLE masks for segm, as Mask R-CNN gives; boxes and keypoints for keypoints).
Each task is timed from there to the stats dict, ``evaluate()``: results conversion, loadRes,
evaluate, accumulate, summarize, as a transfer run pays it. ``reference`` is Detectron2's
``COCOEvaluator(use_fast_impl=False)`` (pycocotools, what the pip-only install had before);
``ours`` is ``transfer.evaluation.FasterCOCOEvaluator``. Repetitions alternate which goes first;
their raw COCOeval stats must agree to 1e-6 before anything is reported. Speedups print last.
"""

import argparse
import contextlib
import io
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_util

import transfer  # noqa: F401  (registers the _C fallback before Detectron2 is imported)
from benchmarks.timing import finish_run, machine_facts, median
from pretrain.errors import PretrainError, one_line_errors
from transfer.evaluation import FasterCOCOEvaluator

from detectron2.data import MetadataCatalog  # isort: skip  (after transfer: _C fallback)
from detectron2.evaluation import COCOEvaluator  # isort: skip

WIDTH, HEIGHT, KEYPOINTS = 640, 480, 17
TASKS = ("bbox", "segm", "keypoints")
TOLERANCE = 1e-6
DATASET_NAME = "ringnce_coco_eval_benchmark"
PERSON = 1  # the dataset's category id; the model predicts the contiguous class 0
# what a model of each task predicts (Mask R-CNN: boxes and masks; Keypoint R-CNN: boxes and points)
TASK_FIELDS = {
    "bbox": ("bbox",),
    "segm": ("bbox", "segmentation"),
    "keypoints": ("bbox", "keypoints"),
}


def person(rng, x, y, w, h):
    """A box, an octagon polygon inside it and 17 keypoints in it."""
    angles = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    polygon = np.stack([x + w / 2 * (1 + np.cos(angles)), y + h / 2 * (1 + np.sin(angles))], 1)
    points = np.stack([x + w * rng.random(KEYPOINTS), y + h * rng.random(KEYPOINTS)], 1)
    keypoints = np.concatenate([points, np.full((KEYPOINTS, 1), 2.0)], 1)
    return [float(v) for v in (x, y, w, h)], polygon.ravel().tolist(), keypoints.ravel().tolist()


def random_box(rng):
    w, h = rng.uniform(20, 200), rng.uniform(40, 300)
    return rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h), w, h


def image_detections(rng, truths, truth_keypoints, count):
    """``count`` results of one image, every field (box, RLE mask, keypoints) filled."""
    detections = []
    for index in range(count):
        near = index < 2 * len(truths)  # near a ground truth: the AP is neither 0 nor 100
        if near:
            x, y, w, h = np.array(truths[index % len(truths)]) + rng.normal(0, 6, 4)
        else:
            x, y, w, h = random_box(rng)
        box, polygon, keypoints = person(rng, x, y, max(w, 2), max(h, 2))
        if near:
            moved = truth_keypoints[index % len(truths)] + rng.normal(0, 4, 3 * KEYPOINTS)
            keypoints = moved.tolist()
        rle = mask_util.merge(mask_util.frPyObjects([polygon], HEIGHT, WIDTH))
        rle["counts"] = rle["counts"].decode("ascii")  # as Detectron2's instances_to_coco_json
        detections.append(
            {"category_id": 0, "score": float(rng.random()), "bbox": box, "segmentation": rle,
             "keypoints": keypoints}
        )  # fmt: skip
    return detections


def generate(num_images, detections_per_image, seed=0):
    """``(ground-truth dataset dict, [(image id, [results with every field])])``."""
    rng = np.random.default_rng(seed)
    images, annotations, predictions = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": WIDTH, "height": HEIGHT})
        truths = [random_box(rng) for _ in range(rng.integers(3, 12))]
        truth_keypoints = []
        for x, y, w, h in truths:
            box, polygon, keypoints = person(rng, x, y, w, h)
            truth_keypoints.append(np.array(keypoints))
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": PERSON,
                 "bbox": box, "area": w * h, "iscrowd": 0, "segmentation": [polygon],
                 "keypoints": keypoints, "num_keypoints": KEYPOINTS}
            )  # fmt: skip
        detections = image_detections(rng, truths, truth_keypoints, detections_per_image)
        predictions.append((image_id, detections))
    category = {"id": PERSON, "name": "person", "keypoints": [f"k{i}" for i in range(KEYPOINTS)]}
    dataset = {"images": images, "annotations": annotations, "categories": [category]}
    return dataset, predictions


def task_predictions(predictions, task):
    """What ``COCOEvaluator.process`` holds for a model of this task: new dicts each call
    (Detectron2's evaluator maps the class ids of its results in place)."""
    fields = ("image_id", "category_id", "score", *TASK_FIELDS[task])
    return [
        {"image_id": image_id,
         "instances": [{"image_id": image_id} | {f: r[f] for f in fields[1:]} for r in results]}
        for image_id, results in predictions
    ]  # fmt: skip


def register(dataset, folder):
    """The set as a Detectron2 dataset with a COCO json (both evaluators read its metadata)."""
    path = Path(folder) / "ground_truth.json"
    path.write_text(json.dumps(dataset))
    if DATASET_NAME in MetadataCatalog.list():
        MetadataCatalog.remove(DATASET_NAME)
    MetadataCatalog.get(DATASET_NAME).set(
        json_file=str(path), thing_classes=["person"], thing_dataset_id_to_contiguous_id={PERSON: 0}
    )


def evaluators(task):
    """``{name: evaluator}``, built as a transfer run builds them (before inference)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return {
            "reference": COCOEvaluator(DATASET_NAME, tasks=(task,), use_fast_impl=False),
            "ours": FasterCOCOEvaluator(DATASET_NAME, tasks=(task,)),
        }


def timed_evaluation(evaluator, predictions, task):
    """Seconds of ``evaluate()`` from the held predictions, and the task's raw COCOeval stats."""
    stats = []
    derive = evaluator._derive_coco_results

    def recording(coco_eval, iou_type, class_names=None):  # the stats before Detectron2's x100
        stats.append(np.array(coco_eval.stats[: 6 if iou_type != "keypoints" else 5]))
        return derive(coco_eval, iou_type, class_names=class_names)

    evaluator._derive_coco_results = recording
    evaluator.reset()
    evaluator._predictions = predictions
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
    return time.perf_counter() - started, stats[0]


def measure_task(predictions, task, repeats):
    built = evaluators(task)
    names = list(built)
    times, stats = {name: [] for name in names}, {}
    for repetition in range(repeats):
        for name in names if repetition % 2 == 0 else names[::-1]:  # who goes first alternates
            held = task_predictions(predictions, task)
            seconds, stats[name] = timed_evaluation(built[name], held, task)
            times[name].append(seconds)
            del held
    difference = float(np.abs(stats["reference"] - stats["ours"]).max())
    if not difference <= TOLERANCE:
        raise PretrainError(
            f"{task}: transfer.evaluation's stats differ from pycocotools' by {difference:.3g} "
            f"(> {TOLERANCE:g}): fix FasterCOCOEvaluator before trusting its AP"
        )
    reference_s, ours_s = median(times["reference"]), median(times["ours"])
    return {"task": task, "reference_s": reference_s, "ours_s": ours_s,
            "speedup": reference_s / ours_s, "reference_runs_s": times["reference"],
            "ours_runs_s": times["ours"], "max_abs_stat_diff": difference,
            "AP": float(stats["reference"][0])}  # fmt: skip


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="50 images x 20 detections (smoke)")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100, help="per image")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma list of tasks")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.small:
        args.images, args.detections = 50, 20
    args.tasks = args.tasks.split(",")
    unknown = [task for task in args.tasks if task not in TASKS]
    if unknown:
        raise PretrainError(
            f"unknown task '{unknown[0]}' in --tasks; choose from {', '.join(TASKS)}"
        )
    for name in ("images", "detections", "repeats"):
        if getattr(args, name) < 1:
            raise PretrainError(f"--{name} must be >= 1")
    args.preset = "small" if args.small else "full"
    return args


@one_line_errors
def main(argv=None):
    args = parse_args(argv)
    facts = machine_facts()
    started = time.perf_counter()
    dataset, predictions = generate(args.images, args.detections)
    count = sum(len(results) for _, results in predictions)
    print(
        f"generated {args.images} images, {len(dataset['annotations'])} ground truths, "
        f"{count} detections per task in {time.perf_counter() - started:.1f} s"
    )
    logging.getLogger("detectron2").setLevel(logging.WARNING)  # its per-task tables
    with tempfile.TemporaryDirectory() as folder:
        register(dataset, folder)
        rows = [measure_task(predictions, task, args.repeats) for task in args.tasks]
    print("task       Detectron2 + pycocotools  transfer.evaluation  max |stat diff|  AP")
    for row in rows:
        print(
            f"{row['task']:<10} {row['reference_s']:>22.2f} s {row['ours_s']:>18.2f} s "
            f"{row['max_abs_stat_diff']:>16.1e}  {row['AP']:.3f}"
        )
    settings = {"images": args.images, "detections": count, "repeats": args.repeats}
    finish_run("coco_eval", args, settings, facts, rows)
    for row in rows:
        print(f"speedup {row['task']}: {row['speedup']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
