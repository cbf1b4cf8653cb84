"""Time COCO evaluation per task: pycocotools vs faster-coco-eval (what transfer runs use).

    python -m benchmarks.coco_eval [--small] [--images N] [--detections D] [--json OUT]

A generated COCO-val-sized set (5,000 640x480 images, ~7 ground-truth people each with a box, a
polygon mask and 17 keypoints; ~100 detections per image: jittered copies of the ground truth
and random false positives, RLE masks, keypoints). Each task runs the way Detectron2's
COCOEvaluator runs it (loadRes on pycocotools' COCO, then evaluate/accumulate/summarize), both
evaluators alternating, and their stats must agree to 1e-6. Speedups are printed last.
"""

import argparse
import contextlib
import copy
import io
import sys
import time

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from benchmarks.timing import finish_run, machine_facts
from pretrain.errors import PretrainError, one_line_errors
from transfer.evaluation import FASTER_TASKS, coco_eval_for

WIDTH, HEIGHT, KEYPOINTS = 640, 480, 17
TASKS = ("bbox", "segm", "keypoints")
TOLERANCE = 1e-6


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


def generate(num_images, detections_per_image, seed=0):
    """``(ground truth dataset dict, {task: detection results})``."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], {task: [] for task in TASKS}
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": WIDTH, "height": HEIGHT})
        truths = [random_box(rng) for _ in range(rng.integers(3, 12))]
        truth_keypoints = []
        for x, y, w, h in truths:
            box, polygon, keypoints = person(rng, x, y, w, h)
            truth_keypoints.append(np.array(keypoints))
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                 "bbox": box, "area": w * h, "iscrowd": 0, "segmentation": [polygon],
                 "keypoints": keypoints, "num_keypoints": KEYPOINTS}
            )  # fmt: skip
        for index in range(detections_per_image):
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
            rle["counts"] = rle["counts"].decode("ascii")
            common = {"image_id": image_id, "category_id": 1, "score": float(rng.random())}
            results["bbox"].append(common | {"bbox": box})
            results["segm"].append(common | {"segmentation": rle})
            results["keypoints"].append(common | {"keypoints": keypoints, "bbox": box})
    category = {"id": 1, "name": "person", "keypoints": [f"k{i}" for i in range(KEYPOINTS)]}
    dataset = {"images": images, "annotations": annotations, "categories": [category]}
    return dataset, results


def evaluate(ground_truth, results, task, make_eval):
    """Seconds and stats of one evaluation, loadRes included (Detectron2 does it every time)."""
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        detections = ground_truth.loadRes(copy.deepcopy(results))
        coco_eval = make_eval(ground_truth, detections, task)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return time.perf_counter() - started, np.array(coco_eval.stats)


def measure(dataset, results, repeats):
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = dataset
        ground_truth.createIndex()
    rows = []
    for task in TASKS:
        times = {"pycocotools": [], "faster-coco-eval": []}
        for _ in range(repeats):  # alternating, so load changes hit both alike
            reference_s, reference = evaluate(ground_truth, results[task], task, COCOeval)
            faster_s, faster = evaluate(ground_truth, results[task], task, coco_eval_for)
            times["pycocotools"].append(reference_s)
            times["faster-coco-eval"].append(faster_s)
        difference = float(np.abs(reference - faster).max())
        if not difference <= TOLERANCE:
            raise PretrainError(
                f"{task}: faster-coco-eval's stats differ from pycocotools' by {difference:.3g} "
                f"(> {TOLERANCE:g}): remove {task} from transfer.evaluation.FASTER_TASKS"
            )
        rows.append(
            {"task": task, "pycocotools_s": min(times["pycocotools"]),
             "faster_s": min(times["faster-coco-eval"]), "max_abs_stat_diff": difference,
             "AP": float(reference[0]), "used_by_transfer": task in FASTER_TASKS}
        )  # fmt: skip
    return rows


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="50 images x 20 detections (smoke)")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100, help="per image")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.small:
        args.images, args.detections = 50, 20
    args.preset = "small" if args.small else "full"
    return args


@one_line_errors
def main(argv=None):
    args = parse_args(argv)
    facts = machine_facts()
    started = time.perf_counter()
    dataset, results = generate(args.images, args.detections)
    count = len(results["bbox"])
    print(
        f"generated {args.images} images, {len(dataset['annotations'])} ground truths, "
        f"{count} detections per task in {time.perf_counter() - started:.1f} s"
    )
    rows = measure(dataset, results, args.repeats)
    print("task       pycocotools  faster-coco-eval  max |stat diff|  AP")
    for row in rows:
        print(
            f"{row['task']:<10} {row['pycocotools_s']:>10.2f} s {row['faster_s']:>15.2f} s "
            f"{row['max_abs_stat_diff']:>16.1e}  {row['AP']:.3f}"
        )
    settings = {"images": args.images, "detections": count}
    finish_run("coco_eval", args, settings, facts, rows)
    for row in rows:
        print(f"speedup {row['task']}: {row['pycocotools_s'] / row['faster_s']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
