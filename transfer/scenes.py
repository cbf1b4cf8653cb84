"""Fashion-MNIST scenes: a held-out detection / segmentation / keypoint benchmark built offline.

Each 128 x 128 grey scene holds 2-5 real Fashion-MNIST items at random scales (24-64 px) and
positions on clutter: a smooth background, dim fragments of other items of the same split and
pixel noise, so no intensity threshold separates items from background. Items are pasted in
order, later ones on top; an earlier item keeps only its visible pixels (its mask, box and
keypoints describe what is seen), and a placement is refused when it would hide more than 40% of
an earlier item. Train scenes draw items only from Fashion-MNIST's train split; validation and
test scenes only from its test split (validation its first 5,000 images, test the last 5,000).

Per instance (COCO json, ids from 1): the class (the 10 Fashion-MNIST classes, ids 1-10), the
box and the RLE mask of the visible pixels, and 4 keypoints, the extreme points of that mask as
ExtremeNet (Zhou et al., CVPR 2019) defines them: top-most, left-most, bottom-most, right-most
pixel, the median where several share the extreme row or column. A horizontal flip swaps
left and right. Their OKS sigma is 0.08 each (COCO's shoulders use 0.079): an extreme point on a
flat edge is ambiguous along that edge by a few pixels.

A set is built on first use into the project cache (seconds) and is bit-identical for a seed
(one random generator per scene, seeded by (seed, scene index)). ``manifest.json`` holds the
sha256 of every file; a set whose files do not match it is rebuilt, never used.
"""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from pretrain.data import fashion_mnist_root, read_idx
from transfer.config import TransferError, notice
from transfer.fixtures import build_atomically, fixtures_dir

CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
    "ankle boot",
)  # fmt: skip
KEYPOINT_NAMES = ("top", "left_extreme", "bottom", "right_extreme")
KEYPOINT_FLIP_MAP = (("left_extreme", "right_extreme"),)
OKS_SIGMAS = (0.08, 0.08, 0.08, 0.08)
VERSION = 1
SIZE = 128
ITEMS_PER_SCENE = (2, 5)
ITEM_SIZE = (24, 64)
FRAGMENTS_PER_SCENE = (3, 7)
FRAGMENT_CROP = (6, 14)  # px of the 28 px item
FRAGMENT_SIZE = (16, 40)
MAX_HIDDEN = 0.4  # an earlier item may lose at most this share of its pixels to later ones
MIN_VISIBLE_PIXELS = 40
PLACEMENT_TRIES = 20
ITEM_THRESHOLD = 24  # an item's own pixels: Fashion-MNIST's background is 0
NOISE_STD = 6.0
# split -> (Fashion-MNIST file prefix, item index range)
SPLITS = {
    "train": ("train", (0, 60000)),
    "val": ("t10k", (0, 5000)),
    "test": ("t10k", (5000, 10000)),
}
FETCH_HINT = (
    "install it with 'apt-get install dataset-fashion-mnist' (without root: "
    "bash tools/fetch_fashion_mnist.sh unpacks it into .cache)"
)
MANIFEST = "manifest.json"


def load_items(split, root=None):
    """uint8 (N, 28, 28) images and int labels of the Fashion-MNIST items ``split`` draws from."""
    prefix, (start, stop) = SPLITS[split]
    root = Path(root) if root else fashion_mnist_root()
    arrays = []
    for kind, header in (("images-idx3", 16), ("labels-idx1", 8)):
        path = root / f"{prefix}-{kind}-ubyte.gz"
        if not path.is_file():
            raise TransferError(f"Fashion-MNIST not found (expected {path}): {FETCH_HINT}")
        arrays.append(read_idx(path, header))
    images, labels = arrays[0].reshape(-1, 28, 28), arrays[1].astype(np.int64)
    return images[start:stop], labels[start:stop]


def resized(image, side):
    return np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR), dtype=np.float32)


def background(rng):
    """A smooth random field around a random grey level: no single level is 'background'."""
    coarse = rng.uniform(-20.0, 20.0, size=(4, 4)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse, mode="F").resize((SIZE, SIZE), Image.BILINEAR))
    return field + rng.uniform(15.0, 70.0)


def add_fragments(rng, canvas, images):
    """Dim crops of other items under the scene's items: clutter as bright as dark item parts."""
    for _ in range(rng.integers(FRAGMENTS_PER_SCENE[0], FRAGMENTS_PER_SCENE[1] + 1)):
        image = images[rng.integers(len(images))]
        # at most half an item each way: a fragment never reads as a whole, unlabelled item
        height, width = rng.integers(FRAGMENT_CROP[0], FRAGMENT_CROP[1] + 1, size=2)
        top, left = rng.integers(0, 29 - np.array([height, width]))
        crop = np.ascontiguousarray(image[top : top + height, left : left + width])
        side = int(rng.integers(FRAGMENT_SIZE[0], FRAGMENT_SIZE[1] + 1))
        pixels = resized(crop, side) * rng.uniform(0.25, 0.55)
        y, x = rng.integers(0, SIZE - side, size=2)
        region = canvas[y : y + side, x : x + side]
        np.maximum(region, pixels, out=region)


def place_item(rng, visible, side):
    """A top-left corner for a ``side`` px item that hides at most MAX_HIDDEN of each earlier
    item, or None after PLACEMENT_TRIES refusals."""
    for _ in range(PLACEMENT_TRIES):
        y, x = (int(v) for v in rng.integers(0, SIZE - side + 1, size=2))
        footprint = np.zeros((SIZE, SIZE), dtype=bool)
        footprint[y : y + side, x : x + side] = True
        if all((mask & ~footprint).sum() >= (1 - MAX_HIDDEN) * full for mask, full in visible):
            return y, x
    return None


def paste_items(rng, canvas, images, labels):
    """Paste 2-5 items; returns ``[(label, visible mask)]`` in pasting order."""
    pasted = []  # [label, visible mask, full pixel count]
    for _ in range(rng.integers(ITEMS_PER_SCENE[0], ITEMS_PER_SCENE[1] + 1)):
        index = rng.integers(len(images))
        side = int(rng.integers(ITEM_SIZE[0], ITEM_SIZE[1] + 1))
        corner = place_item(rng, [(mask, full) for _, mask, full in pasted], side)
        if corner is None:
            continue
        pixels = resized(images[index], side)
        mask = np.zeros((SIZE, SIZE), dtype=bool)
        mask[corner[0] : corner[0] + side, corner[1] : corner[1] + side] = pixels > ITEM_THRESHOLD
        placed = np.zeros((SIZE, SIZE), dtype=np.float32)
        placed[corner[0] : corner[0] + side, corner[1] : corner[1] + side] = pixels
        canvas[mask] = placed[mask] * rng.uniform(0.75, 1.0)
        for earlier in pasted:
            earlier[1] &= ~mask
        pasted.append([int(labels[index]), mask, int(mask.sum())])
    return [(label, mask) for label, mask, _ in pasted if mask.sum() >= MIN_VISIBLE_PIXELS]


def extreme_points(mask):
    """ExtremeNet's top, left, bottom, right points of a mask as COCO (x, y, v) pixel indices;
    where several pixels share the extreme row (column), the median of their columns (rows), so
    that a horizontal flip maps the points exactly onto the flipped mask's (left <-> right)."""
    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    points = (
        (np.median(xs[ys == top]), top),
        (left, np.median(ys[xs == left])),
        (np.median(xs[ys == bottom]), bottom),
        (right, np.median(ys[xs == right])),
    )
    return [value for x, y in points for value in (float(x), float(y), 2)]


def instance_annotation(label, mask, annotation_id, image_id):
    ys, xs = np.nonzero(mask)
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": label + 1,
        "bbox": [
            int(xs.min()),
            int(ys.min()),
            int(xs.max() - xs.min() + 1),
            int(ys.max() - ys.min() + 1),
        ],
        "area": int(mask.sum()),
        "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
        "iscrowd": 0,
        "keypoints": extreme_points(mask),
        "num_keypoints": len(KEYPOINT_NAMES),
    }


def draw_scene(rng, images, labels):
    """One uint8 scene and its ``[(label, visible mask)]``."""
    canvas = background(rng)
    add_fragments(rng, canvas, images)
    instances = paste_items(rng, canvas, images, labels)
    canvas += rng.normal(0.0, NOISE_STD, size=canvas.shape).astype(np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), instances


def categories():
    return [
        {
            "id": number,
            "name": name,
            "supercategory": "fashion",
            "keypoints": list(KEYPOINT_NAMES),
            "skeleton": [[1, 2], [2, 3], [3, 4], [4, 1]],
            "keypoint_oks_sigmas": list(OKS_SIGMAS),
        }
        for number, name in enumerate(CLASSES, 1)
    ]


def write_scenes(target, split, count, seed, root=None):
    images, labels = load_items(split, root)
    (target / "images").mkdir()
    records, annotations = [], []
    for index in range(count):
        scene, instances = draw_scene(np.random.default_rng([seed, index]), images, labels)
        file_name = f"images/{index:05d}.png"
        Image.fromarray(scene).save(target / file_name, optimize=False)
        records.append({"id": index + 1, "file_name": file_name, "width": SIZE, "height": SIZE})
        for label, mask in instances:
            annotations.append(instance_annotation(label, mask, len(annotations) + 1, index + 1))
    coco = {"images": records, "annotations": annotations, "categories": categories()}
    (target / "annotations.json").write_text(json.dumps(coco))
    manifest = {str(path.relative_to(target)): file_sha256(path) for path in data_files(target)}
    (target / MANIFEST).write_text(json.dumps(manifest, indent=0, sort_keys=True))


def data_files(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def file_sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_intact(folder):
    """Every file the manifest lists has its recorded hash, and no file is missing or extra."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    on_disk = {str(p.relative_to(folder)) for p in data_files(folder)}
    if not isinstance(manifest, dict) or set(manifest) != on_disk:
        return False
    return all(file_sha256(folder / name) == digest for name, digest in manifest.items())


def scenes_path(split, count, seed):
    return fixtures_dir() / f"fmnist_scenes_v{VERSION}_{split}_n{count}_seed{seed}"


def scenes_dir(split, count, seed, root=None):
    """The scene set's folder (``annotations.json`` + ``images/``): built on first use, rebuilt
    if its files no longer match their manifest."""
    if split not in SPLITS:
        raise TransferError(f"scene split {split!r} is not one of {', '.join(SPLITS)}")
    folder = scenes_path(split, count, seed)
    if folder.is_dir() and not is_intact(folder):
        notice(f"{folder} does not match its manifest (corrupted or partly deleted): rebuilding")
        shutil.rmtree(folder, ignore_errors=True)
    return build_atomically(folder, lambda tmp: write_scenes(tmp, split, count, seed, root))
