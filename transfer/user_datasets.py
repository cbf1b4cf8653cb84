"""Users' own COCO-format datasets: ``NAME=ANNOTATIONS.json:IMAGE_DIR``, checked, then registered.

``transfer/train_net.py --dataset NAME=ANNOTATIONS.json:IMAGE_DIR`` (repeatable) and a sweep file's
``datasets`` register each one under NAME with Detectron2's COCO loader, so DATASETS.TRAIN/TEST can
name it. Before any model is built: the files exist, the json is COCO (images, annotations,
categories), every image it names is in IMAGE_DIR, and (``check_against_config``) its categories
match MODEL.ROI_HEADS.NUM_CLASSES and, for keypoints, ROI_KEYPOINT_HEAD.NUM_KEYPOINTS. Keypoint
metadata comes from the categories: names from ``keypoints``, the flip map from left_/right_
name pairs (COCO's convention), OKS sigmas from a ``keypoint_oks_sigmas`` list where the json has
one, else COCO's when the names are COCO's 17.
"""

import json
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from transfer.config import TransferError
from transfer.fixtures import COCO_KEYPOINT_NAMES

# COCO's per-keypoint OKS sigmas (cocoapi's cocoeval.py), in COCO_KEYPOINT_NAMES order.
COCO_OKS_SIGMAS = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
    0.087, 0.087, 0.089, 0.089,
)  # fmt: skip
COCO_KEYS = ("images", "annotations", "categories")


def parse_spec(spec):
    """``NAME=ANNOTATIONS.json:IMAGE_DIR`` -> (name, json path, image folder)."""
    name, equals, paths = str(spec).partition("=")
    annotations, colon, images = paths.rpartition(":")
    if not equals or not colon or not name or not annotations or not images:
        raise TransferError(
            f"--dataset {spec!r} is not NAME=ANNOTATIONS.json:IMAGE_DIR "
            "(e.g. --dataset parts_train=data/train.json:data/images)"
        )
    return name, Path(annotations), Path(images)


def read_coco_json(name, annotations):
    if not annotations.is_file():
        raise TransferError(f"dataset {name}: annotation file {annotations} not found")
    try:
        data = json.loads(annotations.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TransferError(
            f"dataset {name}: {annotations} is not valid JSON ({str(error).splitlines()[0]}): "
            "give a COCO-format annotation file"
        ) from error
    missing = [
        k for k in COCO_KEYS if not isinstance(data, dict) or not isinstance(data.get(k), list)
    ]
    if missing:
        raise TransferError(
            f"dataset {name}: {annotations} is not COCO format (no list {', '.join(missing)}): "
            "a COCO json has images, annotations and categories lists"
        )
    if not data["categories"]:
        raise TransferError(f"dataset {name}: {annotations} lists no categories")
    check_annotation_ids(name, annotations, data["annotations"])
    return data


def check_annotation_ids(name, annotations, entries):
    """Unique positive integer ids, or COCO's AP is silently wrong: COCOeval keeps one entry per
    id, and records a match as the matched annotation's id with 0 meaning "unmatched", so the
    detections of an annotation with id 0 count as false positives."""
    ids = [entry.get("id") for entry in entries]
    bad = [i for i in ids if type(i) is not int or i < 1]
    repeated = len(ids) - len(set(map(str, ids)))
    if bad or repeated:
        problem = f"annotation id {bad[0]!r}" if bad else f"{repeated} repeated annotation ids"
        raise TransferError(
            f"dataset {name}: {annotations} has {problem}; COCO evaluation needs unique "
            "annotation ids from 1 (renumber them 1..N), or its AP is wrong"
        )


def check_images(name, data, annotations, image_dir):
    if not image_dir.is_dir():
        raise TransferError(f"dataset {name}: image folder {image_dir} not found")
    absent = [
        str(image.get("file_name"))
        for image in data["images"]
        if not (image_dir / str(image.get("file_name"))).is_file()
    ]
    if absent:
        raise TransferError(
            f"dataset {name}: {len(absent)} of {len(data['images'])} images named in "
            f"{annotations} are not in {image_dir} (e.g. {absent[0]}): give the folder that "
            "file_name is relative to"
        )


def flip_map(names):
    return [
        (n, "right_" + n[5:]) for n in names if n.startswith("left_") and "right_" + n[5:] in names
    ]


def keypoint_metadata(name, categories):
    """Detectron2 keypoint metadata from the categories' ``keypoints`` (empty without them)."""
    with_keypoints = [c for c in categories if c.get("keypoints")]
    if not with_keypoints:
        return {}
    names = list(with_keypoints[0]["keypoints"])
    sigmas = with_keypoints[0].get("keypoint_oks_sigmas")
    if sigmas is None and tuple(names) == COCO_KEYPOINT_NAMES:
        sigmas = COCO_OKS_SIGMAS
    if sigmas is None or len(sigmas) != len(names):
        raise TransferError(
            f"dataset {name}: its {len(names)} keypoints need OKS sigmas for evaluation: add "
            f"'keypoint_oks_sigmas' ({len(names)} numbers) to the category in the json"
        )
    return {
        "keypoint_names": names,
        "keypoint_flip_map": flip_map(names),
        "keypoint_oks_sigmas": [float(s) for s in sigmas],
    }


def register_user_dataset(spec):
    """Check one ``NAME=ANNOTATIONS.json:IMAGE_DIR`` and register it; returns NAME."""
    name, annotations, image_dir = parse_spec(spec)
    data = read_coco_json(name, annotations)
    check_images(name, data, annotations, image_dir)
    metadata = keypoint_metadata(name, data["categories"])
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, metadata, str(annotations), str(image_dir))
    MetadataCatalog.get(name).set(num_categories=len(data["categories"]))
    return name


def register_user_datasets(specs):
    return [register_user_dataset(spec) for spec in specs or ()]


def check_against_config(cfg):
    """The config's class and keypoint counts and mask format must fit every dataset it names
    that states them (users' datasets, the Fashion-MNIST scenes)."""
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        if name not in DatasetCatalog.list():
            continue
        metadata = MetadataCatalog.get(name)
        classes = metadata.get("num_categories")
        if classes is not None and classes != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise TransferError(
                f"dataset {name} has {classes} categories but MODEL.ROI_HEADS.NUM_CLASSES is "
                f"{cfg.MODEL.ROI_HEADS.NUM_CLASSES}: pass MODEL.ROI_HEADS.NUM_CLASSES {classes}"
            )
        keypoints = len(metadata.get("keypoint_names", []))
        if classes is not None and cfg.MODEL.KEYPOINT_ON:
            wanted = cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS
            if keypoints != wanted:
                raise TransferError(
                    f"dataset {name} has {keypoints} keypoints but "
                    f"MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS is {wanted}: pass "
                    f"MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS {keypoints}"
                )
        check_mask_format(cfg, name, metadata.get("mask_format"))


def check_mask_format(cfg, name, mask_format):
    """RLE masks read as polygons fail deep inside the data loader: say it before the run."""
    if mask_format and cfg.MODEL.MASK_ON and cfg.INPUT.MASK_FORMAT != mask_format:
        raise TransferError(
            f"dataset {name} has {mask_format} (RLE) masks but INPUT.MASK_FORMAT is "
            f"{cfg.INPUT.MASK_FORMAT}: pass INPUT.MASK_FORMAT {mask_format}"
        )
