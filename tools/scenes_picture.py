"""Draw test scenes of the Fashion-MNIST scenes benchmark with their ground truth, for the README:
``python tools/scenes_picture.py [OUT.png]`` (default docs/fmnist_scenes.png).

Top row: the scenes as a model sees them. Bottom row: each instance's visible mask tinted, its
box, its class and its four extreme-point keypoints (top, left, bottom, right).
"""

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from pretrain.atomic_write import atomic_write
from pretrain.errors import one_line_errors
from transfer.datasets import FMNIST_SCENES_TEST, scene_set_dir
from transfer.scenes import CLASSES, SIZE

SCENES, SCALE = 5, 2
COLOURS = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
)  # fmt: skip


def annotated(image, annotations):
    """The scene enlarged SCALE times with masks, boxes, classes and keypoints drawn on it."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    for annotation in annotations:
        mask = mask_utils.decode(annotation["segmentation"]).astype(bool)
        colour = np.asarray(COLOURS[annotation["category_id"] - 1], dtype=np.float32)
        pixels[mask] = 0.5 * pixels[mask] + 0.5 * colour
    big = Image.fromarray(pixels.astype(np.uint8)).resize(
        (image.width * SCALE, image.height * SCALE), Image.NEAREST
    )
    draw = ImageDraw.Draw(big)
    for annotation in annotations:
        colour = COLOURS[annotation["category_id"] - 1]
        x, y, w, h = (SCALE * v for v in annotation["bbox"])
        draw.rectangle((x, y, x + w, y + h), outline=colour, width=2)
        draw.text((x + 2, y + 1), CLASSES[annotation["category_id"] - 1], fill=(255, 255, 255))
        points = annotation["keypoints"]
        for px, py in zip(points[0::3], points[1::3]):
            cx, cy = SCALE * (px + 0.5), SCALE * (py + 0.5)
            draw.ellipse((cx - 4, cy - 4, cx + 4, cy + 4), fill=(255, 255, 255), outline=(0, 0, 0))
    return big


@one_line_errors
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "docs/fmnist_scenes.png")
    folder = scene_set_dir(FMNIST_SCENES_TEST)
    coco = json.loads((folder / "annotations.json").read_text())
    size = SIZE * SCALE
    sheet = Image.new("RGB", (SCENES * (size + 4), 2 * (size + 4)), (255, 255, 255))
    for column, record in enumerate(coco["images"][:SCENES]):
        annotations = [a for a in coco["annotations"] if a["image_id"] == record["id"]]
        with Image.open(folder / record["file_name"]) as image:
            plain = image.convert("RGB").resize((size, size), Image.NEAREST)
            sheet.paste(plain, (column * (size + 4), 0))
            sheet.paste(annotated(image, annotations), (column * (size + 4), size + 4))
    atomic_write(out, lambda handle: sheet.save(handle, format="png"), binary=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
