"""Image-folder datasets: ``ROOT/<class>/<image>``, or ``ROOT/{train,val,test}/<class>/<image>``.

``scan`` lists the images (nothing is decoded here) and checks the layout: every class folder
holds images, and split folders hold the same classes. The listing's fingerprint (relative
paths, sizes, modification times) is part of the feature-cache key, so an edited folder is
embedded again.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transfer.classification.errors import ClassificationError

SPLITS = ("train", "val", "test")
# what torchvision's ImageFolder reads; other files (README, .DS_Store) are not images
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
NO_SPLIT = -1


@dataclass(frozen=True)
class ImageFolder:
    """Every image of a dataset: its file, class index and split folder (``NO_SPLIT`` when the
    dataset has no split folders and a split rule decides)."""

    root: Path
    classes: tuple
    paths: tuple
    labels: np.ndarray
    folder_splits: np.ndarray

    @property
    def has_split_folders(self):
        return bool((self.folder_splits != NO_SPLIT).any())

    def counts(self, members=None):
        """Images per class name (over ``members``, a boolean mask, or all images)."""
        labels = self.labels if members is None else self.labels[members]
        return {name: int((labels == index).sum()) for index, name in enumerate(self.classes)}

    def fingerprint(self):
        digest = hashlib.sha256(str(self.root).encode())
        for path in self.paths:
            stat = path.stat()
            digest.update(
                f"{path.relative_to(self.root)}|{stat.st_size}|{stat.st_mtime_ns}".encode()
            )
        return digest.hexdigest()


def class_images(folder):
    """``{class name: sorted image paths}`` of the class sub-folders of ``folder``."""
    classes = sorted(child for child in folder.iterdir() if child.is_dir())
    if not classes:
        raise ClassificationError(
            f"{folder} holds no class sub-folders: lay the images out as {folder}/<class>/<image> "
            f"or {folder}/{{train,val,test}}/<class>/<image>"
        )
    images = {}
    for class_folder in classes:
        files = sorted(
            path
            for path in class_folder.iterdir()
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise ClassificationError(
                f"class folder {class_folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); add "
                "images or remove the folder"
            )
        images[class_folder.name] = files
    return images


def check_same_classes(root, by_split):
    reference = set(by_split["train"])
    for split, images in by_split.items():
        missing, extra = sorted(reference - set(images)), sorted(set(images) - reference)
        if missing or extra:
            raise ClassificationError(
                f"the splits of {root} have mismatched classes: {split} lacks {missing or 'none'} "
                f"and has {extra or 'none'} that train has not; give every split the same class "
                "folders"
            )


def split_folders(root):
    present = [split for split in SPLITS if (root / split).is_dir()]
    if present and not {"train", "test"} <= set(present):
        raise ClassificationError(
            f"{root} has split folder(s) {present} but needs train/ and test/ (val/ is optional: "
            "without it validation images are drawn from train)"
        )
    return present


def scan(root):
    """List and check the dataset at ``root``; raise ClassificationError on a bad layout."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise ClassificationError(
            f"dataset folder {root} does not exist: expected {root}/<class>/<image> or "
            f"{root}/{{train,val,test}}/<class>/<image>"
        )
    present = split_folders(root)
    by_split = {split: class_images(root / split) for split in present} or {
        None: class_images(root)
    }
    if present:
        check_same_classes(root, by_split)
    classes = tuple(sorted(next(iter(by_split.values()))))
    paths, labels, splits = [], [], []
    for split, images in by_split.items():
        for label, name in enumerate(classes):
            paths += images[name]
            labels += [label] * len(images[name])
            splits += [SPLITS.index(split) if split else NO_SPLIT] * len(images[name])
    return ImageFolder(root, classes, tuple(paths), np.array(labels), np.array(splits))
