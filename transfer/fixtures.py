"""Tiny datasets for tests and the CPU demo, all under the project cache (``RINGNCE_CACHE``).

- labelme COCO: 3 real PASCAL VOC photos with 12 polygon instances from the labelme 6.3.1 source
  distribution. It is GPL-3.0, so ``tools/setup_env.sh`` fetches it through pip at set-up time and
  this module only locates it.
- labelme VOC: the same photos and boxes written in Pascal VOC's layout, for the VOC path.
- keypoints COCO: generated people-like figures with the 17 COCO keypoints (no registry package
  ships real person keypoints). Generation is deterministic and cached.

Generated fixtures are built in a temporary sibling folder and renamed into place, so an
interrupted run never leaves a half-written fixture behind.
"""

import json
import os
import random
import shutil
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from transfer.config import TransferError

REPO_ROOT = Path(__file__).resolve().parents[1]
SETUP_HINT = "run `make test` (or `bash tools/setup_env.sh`) to fetch it"
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
# 1-based keypoint index pairs, as COCO's "skeleton" field
COCO_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip
# A standing figure facing the camera, in units of its height (x from the centre line, y down
# from the top of the head). The person's left side is on the image's right.
FIGURE_KEYPOINTS = {
    "nose": (0.0, 0.08), "left_eye": (0.025, 0.065), "right_eye": (-0.025, 0.065),
    "left_ear": (0.05, 0.075), "right_ear": (-0.05, 0.075),
    "left_shoulder": (0.12, 0.2), "right_shoulder": (-0.12, 0.2),
    "left_elbow": (0.17, 0.36), "right_elbow": (-0.17, 0.36),
    "left_wrist": (0.19, 0.5), "right_wrist": (-0.19, 0.5),
    "left_hip": (0.08, 0.52), "right_hip": (-0.08, 0.52),
    "left_knee": (0.09, 0.74), "right_knee": (-0.09, 0.74),
    "left_ankle": (0.1, 0.96), "right_ankle": (-0.1, 0.96),
}  # fmt: skip
POSE_JITTER = {"elbow": 0.06, "wrist": 0.1, "knee": 0.04, "ankle": 0.06}
LIMBS = (
    ("shoulder", "elbow"), ("elbow", "wrist"), ("hip", "knee"), ("knee", "ankle"),
)  # fmt: skip


def cache_dir():
    return Path(os.environ.get("RINGNCE_CACHE", REPO_ROOT / ".cache"))


def fixtures_dir():
    return cache_dir() / "fixtures"


def labelme_source_dir():
    """labelme's own COCO export as set-up fetched it (``annotations.json`` + ``JPEGImages/``)."""
    folder = fixtures_dir() / "labelme_coco"
    if not (folder / "annotations.json").is_file() or not (folder / "JPEGImages").is_dir():
        raise TransferError(f"labelme COCO fixture not found in {folder}: {SETUP_HINT}")
    return folder


def labelme_coco_path():
    return fixtures_dir() / "labelme_coco_ids_from_1"


def write_labelme_coco(source, target):
    """labelme numbers its annotations from 0, and COCOeval stores a match as the matched
    annotation's id with 0 meaning "unmatched": detections of annotation 0 would count as false
    positives (a perfect detector scores AP 25 instead of 100 on two boxes). Renumber from 1."""
    coco = json.loads((source / "annotations.json").read_text())
    for number, annotation in enumerate(coco["annotations"], 1):
        annotation["id"] = number
    (target / "annotations.json").write_text(json.dumps(coco))
    shutil.copytree(source / "JPEGImages", target / "JPEGImages")


def labelme_coco_dir():
    """The labelme COCO fixture folder, annotation ids from 1; built on first use."""
    source = labelme_source_dir()
    return build_atomically(labelme_coco_path(), lambda tmp: write_labelme_coco(source, tmp))


def build_atomically(folder, write):
    """Run ``write(tmp)`` and rename ``tmp`` to ``folder``; a concurrent winner is kept."""
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write(tmp)
        os.replace(tmp, folder)
    except OSError:
        if not folder.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# --- Pascal VOC layout of the labelme photos -------------------------------------------------


def voc_annotation_xml(image, annotations, category_names):
    """One VOC ``Annotations/*.xml`` document; VOC pixel indices are 1-based and inclusive."""
    root = ElementTree.Element("annotation")
    ElementTree.SubElement(root, "filename").text = Path(image["file_name"]).name
    size = ElementTree.SubElement(root, "size")
    for tag, value in (("width", image["width"]), ("height", image["height"]), ("depth", 3)):
        ElementTree.SubElement(size, tag).text = str(value)
    for annotation in annotations:
        x, y, w, h = annotation["bbox"]
        obj = ElementTree.SubElement(root, "object")
        ElementTree.SubElement(obj, "name").text = category_names[annotation["category_id"]]
        # Detectron2's VOC evaluator reads pose and truncated too
        ElementTree.SubElement(obj, "pose").text = "Unspecified"
        ElementTree.SubElement(obj, "truncated").text = "0"
        ElementTree.SubElement(obj, "difficult").text = "0"
        box = ElementTree.SubElement(obj, "bndbox")
        corners = (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + w), ("ymax", y + h))
        for tag, value in corners:
            ElementTree.SubElement(box, tag).text = str(int(round(value)))
    return ElementTree.tostring(root, encoding="unicode")


def write_labelme_voc(source, target):
    coco = json.loads((source / "annotations.json").read_text())
    # labelme spells two VOC classes "potted plant" and "tv/monitor"
    category_names = {
        category["id"]: category["name"].replace(" ", "").replace("/", "")
        for category in coco["categories"]
    }
    (target / "Annotations").mkdir()
    (target / "JPEGImages").mkdir()
    (target / "ImageSets" / "Main").mkdir(parents=True)
    image_ids = []
    for image in coco["images"]:
        stem = Path(image["file_name"]).stem
        annotations = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        xml = voc_annotation_xml(image, annotations, category_names)
        (target / "Annotations" / f"{stem}.xml").write_text(xml)
        shutil.copyfile(source / image["file_name"], target / "JPEGImages" / f"{stem}.jpg")
        image_ids.append(stem)
    # the fixture is a smoke test: it trains and evaluates on the same three photos
    for split in ("trainval", "test"):
        (target / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(image_ids) + "\n")


def labelme_voc_path():
    return fixtures_dir() / "labelme_voc_v2"


def labelme_voc_dir():
    """The labelme photos in Pascal VOC layout (VOC2007-style folder), built on first use."""
    source = labelme_coco_dir()
    return build_atomically(labelme_voc_path(), lambda tmp: write_labelme_voc(source, tmp))


# --- generated COCO keypoints -----------------------------------------------------------------


def figure_keypoints(rng, centre_x, top_y, height):
    """Pixel positions of the 17 keypoints of one figure, limbs randomly posed."""
    points = {}
    for name in COCO_KEYPOINT_NAMES:
        x, y = FIGURE_KEYPOINTS[name]
        joint = name.split("_")[-1]
        jitter = POSE_JITTER.get(joint, 0.0)
        x += rng.uniform(-jitter, jitter)
        y += rng.uniform(-jitter, jitter) / 2
        points[name] = (centre_x + x * height, top_y + y * height)
    return points


def draw_figure(draw, points, height, fill):
    """Head, torso and limbs; the same calls draw the figure's colour and its mask."""
    nose_x, nose_y = points["nose"]
    head = 0.075 * height
    draw.ellipse((nose_x - head, nose_y - 1.2 * head, nose_x + head, nose_y + head), fill=fill)
    torso = [points[n] for n in ("left_shoulder", "right_shoulder", "right_hip", "left_hip")]
    draw.polygon(torso, fill=fill)
    width = max(2, int(0.05 * height))
    draw.line([points["nose"], points["left_shoulder"]], fill=fill, width=width)
    draw.line([points["nose"], points["right_shoulder"]], fill=fill, width=width)
    for side in ("left", "right"):
        for start, end in LIMBS:
            draw.line([points[f"{side}_{start}"], points[f"{side}_{end}"]], fill=fill, width=width)


def keypoint_annotation(points, mask, annotation_id, image_id):
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    keypoints = []
    for name in COCO_KEYPOINT_NAMES:
        keypoints += [round(points[name][0], 2), round(points[name][1], 2), 2]
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": 1,
        "bbox": [int(x0), int(y0), int(x1 - x0), int(y1 - y0)],
        # COCO's OKS scale is the object's segmentation area: the figure's pixel count
        "area": int(mask.sum()),
        "iscrowd": 0,
        "keypoints": keypoints,
        "num_keypoints": len(COCO_KEYPOINT_NAMES),
    }


def textured_background(rng, size):
    noise = np.asarray([[rng.random() for _ in range(size)] for _ in range(size)])
    base = np.asarray([rng.randrange(40, 200) for _ in range(3)], dtype=float)
    pixels = base[None, None, :] + 40 * (noise[:, :, None] - 0.5)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def draw_keypoint_image(rng, size, image_id, first_annotation_id):
    image = textured_background(rng, size)
    draw = ImageDraw.Draw(image)
    annotations = []
    num_figures = rng.choice((1, 2))
    for index in range(num_figures):
        height = rng.uniform(0.45, 0.85) * size
        margin = 0.25 * height
        slot = size / num_figures
        centre_x = rng.uniform(slot * index + margin, slot * (index + 1) - margin)
        centre_x = min(max(centre_x, margin), size - margin)
        top_y = rng.uniform(0.02 * size, size - 1.02 * height)
        points = figure_keypoints(rng, centre_x, top_y, height)
        mask_image = Image.new("L", (size, size), 0)
        draw_figure(ImageDraw.Draw(mask_image), points, height, 1)
        colour = tuple(rng.randrange(0, 256) for _ in range(3))
        draw_figure(draw, points, height, colour)
        mask = np.asarray(mask_image, dtype=bool)
        annotations.append(keypoint_annotation(points, mask, first_annotation_id + index, image_id))
    return image, annotations


def write_keypoints_coco(target, num_images, size, seed):
    rng = random.Random(seed)
    (target / "images").mkdir()
    images, annotations = [], []
    for image_id in range(num_images):
        # pycocotools treats id 0 as "no match": COCO ids start at 1
        image, image_annotations = draw_keypoint_image(
            rng, size, image_id + 1, len(annotations) + 1
        )
        file_name = f"images/{image_id:04d}.png"
        image.save(target / file_name)
        images.append({"id": image_id + 1, "file_name": file_name, "width": size, "height": size})
        annotations += image_annotations
    category = {
        "id": 1,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(COCO_KEYPOINT_NAMES),
        "skeleton": [list(pair) for pair in COCO_SKELETON],
    }
    coco = {"images": images, "annotations": annotations, "categories": [category]}
    (target / "annotations.json").write_text(json.dumps(coco))


def keypoints_coco_path(num_images, size, seed):
    return fixtures_dir() / f"keypoints_coco_v2_n{num_images}_s{size}_seed{seed}"


def keypoints_coco_dir(num_images=8, size=128, seed=0):
    """Generated COCO person-keypoints fixture (``annotations.json`` + ``images/``)."""
    return build_atomically(
        keypoints_coco_path(num_images, size, seed),
        lambda tmp: write_keypoints_coco(tmp, num_images, size, seed),
    )
