"""The Fashion-MNIST scenes benchmark: deterministic, split-clean, self-checking data whose ground
truth scores AP 100 with the evaluator the transfer runs use, and one-line errors for bad input."""

import gzip
import hashlib
import json

import numpy as np
import pytest

from transfer import scenes
from transfer.config import TransferError, build_config
from transfer.datasets import FMNIST_SCENES_VAL, register_project_datasets, scene_set_dir
from transfer.engine import Trainer
from transfer.evaluation import FasterCOCOEvaluator
from transfer.user_datasets import check_against_config

from detectron2.data import DatasetCatalog  # isort: skip  (after transfer: _C fallback)
from ground_truth import ground_truth_as_predictions  # isort: skip

MASK_CONFIG = "configs/transfer/fmnist_scenes_mask_rcnn_R18_FPN.yaml"
KEYPOINT_CONFIG = "configs/transfer/fmnist_scenes_keypoint_rcnn_R18_FPN.yaml"


def write_idx(path, array, header_bytes):
    with gzip.open(path, "wb") as handle:
        handle.write(bytes(header_bytes) + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.fixture
def fake_fashion_mnist(tmp_path):
    """Fashion-MNIST files whose labels tell the splits apart: train items are all class 3, the
    test split's first half (validation) class 5, its second half (test) class 7."""
    root = tmp_path / "fmnist"
    root.mkdir()
    rng = np.random.default_rng(0)
    item = np.zeros((28, 28), dtype=np.uint8)
    item[4:24, 6:22] = 200
    for prefix, count, labels in (
        ("train", 50, np.full(50, 3)),
        ("t10k", 10000, np.repeat([5, 7], 5000)),
    ):
        images = np.repeat(item[None], count, axis=0) + rng.integers(0, 40, (count, 28, 28))
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", np.minimum(images, 255), 16)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels, 8)
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RINGNCE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def folder_digest(folder):
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_a_scene_set_is_bit_identical_for_a_seed(cache, fake_fashion_mnist, monkeypatch):
    first = folder_digest(scenes.scenes_dir("train", 12, 4, fake_fashion_mnist))
    monkeypatch.setenv("RINGNCE_CACHE", str(cache.parent / "other_cache"))
    assert folder_digest(scenes.scenes_dir("train", 12, 4, fake_fashion_mnist)) == first
    assert folder_digest(scenes.scenes_dir("train", 12, 5, fake_fashion_mnist)) != first


def categories_of(folder):
    coco = json.loads((folder / "annotations.json").read_text())
    return {annotation["category_id"] for annotation in coco["annotations"]}


def test_train_scenes_use_train_items_and_val_test_disjoint_halves_of_test(
    cache, fake_fashion_mnist
):
    assert categories_of(scenes.scenes_dir("train", 10, 0, fake_fashion_mnist)) == {4}
    assert categories_of(scenes.scenes_dir("val", 10, 0, fake_fashion_mnist)) == {6}
    assert categories_of(scenes.scenes_dir("test", 10, 0, fake_fashion_mnist)) == {8}


def test_missing_fashion_mnist_names_the_fetch_route(cache, tmp_path):
    with pytest.raises(TransferError, match="fetch_fashion_mnist.sh") as error:
        scenes.scenes_dir("test", 4, 0, tmp_path / "nowhere")
    assert "\n" not in str(error.value)


def test_a_corrupted_scene_set_is_detected_and_rebuilt(cache, fake_fashion_mnist, capsys):
    folder = scenes.scenes_dir("val", 6, 0, fake_fashion_mnist)
    clean = folder_digest(folder)
    image = folder / "images" / "00002.png"
    image.write_bytes(image.read_bytes()[:100])
    assert not scenes.is_intact(folder)
    assert folder_digest(scenes.scenes_dir("val", 6, 0, fake_fashion_mnist)) == clean
    assert "rebuilding" in capsys.readouterr().out


def test_extreme_points_are_the_middle_pixels_of_the_extreme_rows_and_columns():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2, 3:8] = True  # top row y 2: x 3..7, median 5; left column x 3: only y 2
    mask[2:9, 4] = True  # bottom row y 8: only x 4
    mask[5:7, 9] = True  # right column x 9: y 5 and 6, median 5.5
    assert scenes.extreme_points(mask) == [5, 2, 2, 3, 2, 2, 4, 8, 2, 9, 5.5, 2]


def test_a_horizontal_flip_swaps_exactly_the_mapped_keypoints():
    rng = np.random.default_rng(3)
    mask = rng.random((20, 20)) > 0.6
    points = np.array(scenes.extreme_points(mask)).reshape(4, 3)
    flipped = np.array(scenes.extreme_points(mask[:, ::-1])).reshape(4, 3)
    index = {name: i for i, name in enumerate(scenes.KEYPOINT_NAMES)}
    swap = {a: b for pair in scenes.KEYPOINT_FLIP_MAP for a, b in (pair, pair[::-1])}
    for name, i in index.items():
        j = index[swap.get(name, name)]
        assert (flipped[i, 0], flipped[i, 1]) == (19 - points[j, 0], points[j, 1]), name


def test_visible_masks_of_a_scene_never_overlap():
    images = np.full((20, 28, 28), 200, dtype=np.uint8)
    for index in range(30):
        _, instances = scenes.draw_scene(np.random.default_rng(index), images, np.arange(20) % 10)
        total = sum(mask.astype(int) for _, mask in instances)
        assert len(instances) >= 1 and total.max() <= 1


def test_ground_truth_scores_100_on_boxes_masks_and_keypoints(tmp_path):
    register_project_datasets()
    scene_set_dir(FMNIST_SCENES_VAL)
    evaluator = FasterCOCOEvaluator(
        FMNIST_SCENES_VAL,
        tasks=("bbox", "segm", "keypoints"),
        output_dir=str(tmp_path),
        kpt_oks_sigmas=scenes.OKS_SIGMAS,
    )
    evaluator.reset()
    for record in DatasetCatalog.get(FMNIST_SCENES_VAL):
        evaluator.process([{"image_id": record["image_id"]}], [ground_truth_as_predictions(record)])
    results = evaluator.evaluate()
    for task in ("bbox", "segm", "keypoints"):
        assert results[task]["AP"] == pytest.approx(100.0), task


@pytest.mark.parametrize(
    "config, key, value, fix",
    [
        (MASK_CONFIG, "MODEL.ROI_HEADS.NUM_CLASSES", 80, "NUM_CLASSES 10"),
        (KEYPOINT_CONFIG, "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS", 17, "NUM_KEYPOINTS 4"),
        (MASK_CONFIG, "INPUT.MASK_FORMAT", "polygon", "MASK_FORMAT bitmask"),
    ],
)
def test_a_config_that_does_not_fit_the_scenes_is_a_one_line_error(
    tmp_path, config, key, value, fix
):
    register_project_datasets()
    opts = ["MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path)]
    check_against_config(build_config(config, opts))  # the committed values fit
    with pytest.raises(TransferError, match=fix) as error:
        check_against_config(build_config(config, [*opts, key, value]))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "name, trains_backbone",
    [
        ("fmnist_scenes_mask_rcnn_R18_FPN", True),
        ("fmnist_scenes_mask_rcnn_R18_FPN_frozen", False),
        ("fmnist_scenes_keypoint_rcnn_R18_FPN", True),
        ("fmnist_scenes_keypoint_rcnn_R18_FPN_frozen", False),
    ],
)
def test_scene_configs_build_the_narrow_resnet18_fine_tuned_or_frozen(
    tmp_path, name, trains_backbone
):
    register_project_datasets()
    opts = ["MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path)]
    cfg = build_config(f"configs/transfer/{name}.yaml", opts)
    check_against_config(cfg)
    model = Trainer.build_model(cfg)
    bottom_up = model.backbone.bottom_up
    assert bottom_up.stem.conv1.out_channels == 16 and len(bottom_up.res4) == 2
    assert all(p.requires_grad == trains_backbone for p in bottom_up.parameters())
    assert all(p.requires_grad for p in model.backbone.fpn_lateral2.parameters())
