"""Datasets of transfer runs: Detectron2's COCO/VOC names, our fixtures, and input checks.

COCO 2017 and Pascal VOC use Detectron2's registered names (``coco_2017_train``,
``voc_2007_trainval``, ...) in its standard layout under ``$DETECTRON2_DATASETS``. Detectron2
v0.6's VOC loader uses ``np.str``, which numpy 2 removed, so the VOC names are re-registered with
the loader below. ``prepare_datasets(cfg)`` checks every dataset a config names before anything
is built, so a missing file costs seconds, not a model build.
"""

import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from detectron2.structures import BoxMode

from pretrain.errors import nearest_name
from transfer import fixtures, scenes
from transfer.config import TransferError

LABELME_COCO = "ringnce_labelme_coco"
KEYPOINTS_COCO_TRAIN = "ringnce_keypoints_coco_train"
KEYPOINTS_COCO_VAL = "ringnce_keypoints_coco_val"
LABELME_VOC_TRAINVAL = "ringnce_labelme_voc_trainval"
LABELME_VOC_TEST = "ringnce_labelme_voc_test"
KEYPOINT_FIXTURES = {
    KEYPOINTS_COCO_TRAIN: {"num_images": 8, "size": 128, "seed": 0},
    KEYPOINTS_COCO_VAL: {"num_images": 4, "size": 128, "seed": 1},
}
# the Fashion-MNIST scenes benchmark (transfer/scenes.py): train scenes from Fashion-MNIST's train
# items, val and test scenes from disjoint halves of its test items
FMNIST_SCENES_TRAIN = "fmnist_scenes_train"
FMNIST_SCENES_VAL = "fmnist_scenes_val"
FMNIST_SCENES_TEST = "fmnist_scenes_test"
SCENE_SETS = {
    FMNIST_SCENES_TRAIN: {"split": "train", "count": 2000, "seed": 0},
    FMNIST_SCENES_VAL: {"split": "val", "count": 300, "seed": 1},
    FMNIST_SCENES_TEST: {"split": "test", "count": 300, "seed": 2},
}
DATASETS_HINT = (
    "put the dataset in Detectron2's standard layout under $DETECTRON2_DATASETS (now {root}), "
    "see detectron2/datasets/README.md"
)


def datasets_root():
    return os.environ.get("DETECTRON2_DATASETS", "datasets")


# --- Pascal VOC ---------------------------------------------------------------------------------


def voc_image_ids(dirname, split):
    text = (Path(dirname) / "ImageSets" / "Main" / f"{split}.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def voc_record(dirname, image_id, class_names):
    root = ElementTree.parse(Path(dirname) / "Annotations" / f"{image_id}.xml").getroot()
    annotations = []
    for obj in root.findall("object"):
        box = obj.find("bndbox")
        x1, y1, x2, y2 = (float(box.find(tag).text) for tag in ("xmin", "ymin", "xmax", "ymax"))
        annotations.append(
            {
                "category_id": class_names.index(obj.find("name").text.strip()),
                # VOC pixel indices start at 1; Detectron2's boxes at 0
                "bbox": [x1 - 1.0, y1 - 1.0, x2, y2],
                "bbox_mode": BoxMode.XYXY_ABS,
            }
        )
    size = root.find("size")
    return {
        "file_name": str(Path(dirname) / "JPEGImages" / f"{image_id}.jpg"),
        "image_id": image_id,
        "height": int(size.find("height").text),
        "width": int(size.find("width").text),
        "annotations": annotations,
    }


def load_voc_instances(dirname, split, class_names):
    """Detectron2 dataset dicts of a VOC split; difficult objects kept, as Detectron2 does."""
    class_names = list(class_names)
    return [
        voc_record(dirname, image_id, class_names) for image_id in voc_image_ids(dirname, split)
    ]


def register_voc(name, dirname, split, year):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    else:
        MetadataCatalog.get(name).set(
            thing_classes=list(fixtures.VOC_CLASSES),
            dirname=str(dirname),
            year=year,
            split=split,
            evaluator_type="pascal_voc",
        )
    metadata = MetadataCatalog.get(name)
    DatasetCatalog.register(
        name, lambda: load_voc_instances(metadata.dirname, metadata.split, metadata.thing_classes)
    )


def builtin_voc_names():
    return [name for name in DatasetCatalog.list() if name.startswith("voc_20")]


# --- registration ---------------------------------------------------------------------------


def register_project_datasets():
    """Register the fixtures and numpy-2-safe VOC loaders; safe to call more than once."""
    if LABELME_COCO in DatasetCatalog.list():
        return
    for name in builtin_voc_names():
        metadata = MetadataCatalog.get(name)
        register_voc(name, metadata.dirname, metadata.split, metadata.year)
    labelme = fixtures.labelme_coco_path()
    register_coco_instances(LABELME_COCO, {}, str(labelme / "annotations.json"), str(labelme))
    for name, params in KEYPOINT_FIXTURES.items():
        folder = fixtures.keypoints_coco_path(**params)
        register_coco_instances(
            name,
            _get_builtin_metadata("coco_person"),
            str(folder / "annotations.json"),
            str(folder),
        )
    register_voc(LABELME_VOC_TRAINVAL, fixtures.labelme_voc_path(), "trainval", 2007)
    register_voc(LABELME_VOC_TEST, fixtures.labelme_voc_path(), "test", 2007)
    for name, params in SCENE_SETS.items():
        register_scene_set(name, scenes.scenes_path(**params))


def register_scene_set(name, folder):
    """A scene set under its name, with the metadata the config check and the evaluator read."""
    metadata = {
        "thing_classes": list(scenes.CLASSES),
        "keypoint_names": list(scenes.KEYPOINT_NAMES),
        "keypoint_flip_map": [list(pair) for pair in scenes.KEYPOINT_FLIP_MAP],
        "keypoint_oks_sigmas": list(scenes.OKS_SIGMAS),
        "num_categories": len(scenes.CLASSES),
        "mask_format": "bitmask",  # RLE masks
    }
    register_coco_instances(name, metadata, str(folder / "annotations.json"), str(folder))


def scene_set_dir(name):
    """The folder of a registered scene set, built (or rebuilt if corrupted) on first use."""
    return scenes.scenes_dir(**SCENE_SETS[name])


def build_fixture(name):
    """Locate or generate the fixture behind ``name``; no-op for other datasets."""
    if name == LABELME_COCO:
        fixtures.labelme_coco_dir()
    elif name in KEYPOINT_FIXTURES:
        fixtures.keypoints_coco_dir(**KEYPOINT_FIXTURES[name])
    elif name in (LABELME_VOC_TRAINVAL, LABELME_VOC_TEST):
        fixtures.labelme_voc_dir()
    elif name in SCENE_SETS:
        scene_set_dir(name)


# --- checks -------------------------------------------------------------------------------------


def required_paths(name):
    """The files and folders a registered dataset reads, from its metadata."""
    metadata = MetadataCatalog.get(name)
    if hasattr(metadata, "json_file"):
        return [Path(metadata.json_file), Path(metadata.image_root)]
    if hasattr(metadata, "dirname"):
        dirname = Path(metadata.dirname)
        return [
            dirname / "ImageSets" / "Main" / f"{metadata.split}.txt",
            dirname / "Annotations",
            dirname / "JPEGImages",
        ]
    return []


def check_registered(name):
    registered = DatasetCatalog.list()
    if name not in registered:
        nearest = nearest_name(name, registered)
        hint = f"did you mean {nearest}?" if nearest else "register it before the run"
        raise TransferError(f"unknown dataset {name!r} in DATASETS: {hint}")


def check_files(name):
    for path in required_paths(name):
        if not path.exists():
            hint = DATASETS_HINT.format(root=datasets_root())
            raise TransferError(f"dataset {name}: {path} not found: {hint}")


def refuse_empty(name):
    """Wrap the loader so an empty dataset fails with its name instead of an assertion."""
    load = DatasetCatalog[name]
    if getattr(load, "refuses_empty", False):
        return

    def load_nonempty():
        records = load()
        if not records:
            raise TransferError(
                f"dataset {name} has no images: check its annotation file {required_paths(name)}"
            )
        return records

    load_nonempty.refuses_empty = True
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, load_nonempty)


def config_dataset_names(cfg):
    return list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)


def prepare_datasets(cfg):
    """Register, build fixtures and check every dataset ``cfg`` names; ``TransferError`` if bad."""
    register_project_datasets()
    if not cfg.DATASETS.TRAIN:
        raise TransferError("DATASETS.TRAIN is empty: name at least one registered dataset")
    for name in config_dataset_names(cfg):
        check_registered(name)
        build_fixture(name)
        check_files(name)
        refuse_empty(name)
