"""Users' own COCO datasets (--dataset NAME=ANNOTATIONS.json:IMAGE_DIR): a transfer run on the
real labelme photos registered this way, keypoint metadata from the json, and one-line errors
for every bad input before any model is built."""

import json
import shutil
from pathlib import Path

import pytest

from transfer import fixtures
from transfer.config import TransferError
from transfer.engine import run
from transfer.user_datasets import COCO_OKS_SIGMAS, keypoint_metadata

from detectron2.data import MetadataCatalog  # isort: skip  (after transfer: _C fallback)

REPO = Path(__file__).resolve().parents[1]
TINY_MASK = REPO / "configs" / "transfer" / "tiny_mask_rcnn_R50_FPN.yaml"
# one small iteration from random init: the test checks the data path, not the model
SMALL = [
    "MODEL.WEIGHTS", "", "SOLVER.MAX_ITER", "1", "SOLVER.IMS_PER_BATCH", "1",
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "32", "INPUT.MIN_SIZE_TRAIN", "(96,)",
    "INPUT.MIN_SIZE_TEST", "96",
]  # fmt: skip


def own(name, folder):
    """The labelme photos as a user would name them: their own json and image folder."""
    return f"{name}={folder / 'annotations.json'}:{folder}"


def opts(tmp_path, name, *more):
    datasets = ["DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{name}',)"]
    return [*SMALL, *datasets, "OUTPUT_DIR", str(tmp_path / "run"), *more]


@pytest.fixture
def labelme_copy(tmp_path):
    """A copy of the labelme fixture (3 real VOC photos) to break in places."""
    return Path(shutil.copytree(fixtures.labelme_coco_dir(), tmp_path / "photos"))


@pytest.mark.slow
def test_transfer_to_own_dataset_registered_by_name(tmp_path, labelme_copy):
    results = run(
        str(TINY_MASK), opts(tmp_path, "my_photos"), datasets=[own("my_photos", labelme_copy)]
    )
    assert set(results) == {"bbox", "segm"}
    assert all(value is None or 0 <= value <= 100 for value in results["bbox"].values())
    assert MetadataCatalog.get("my_photos").json_file == str(labelme_copy / "annotations.json")


def break_json(folder, change):
    path = folder / "annotations.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


def _drop_images(data):
    return {k: v for k, v in data.items() if k != "images"}


def _set_first_ids(data, ids):
    for annotation, new_id in zip(data["annotations"], ids):
        annotation["id"] = new_id
    return data


def _missing_photo(folder):
    (folder / "JPEGImages" / "2011_000003.jpg").unlink()


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("bad spec", r"is not NAME=ANNOTATIONS.json:IMAGE_DIR"),
        ("missing json", r"dataset mine: annotation file .*nope.json not found"),
        ("not json", r"dataset mine: .* is not valid JSON"),
        ("not coco", r"dataset mine: .* is not COCO format \(no list images\)"),
        ("missing image", r"dataset mine: 1 of 3 images .* are not in .*2011_000003.jpg"),
        ("missing folder", r"dataset mine: image folder .*nowhere not found"),
        ("wrong classes", r"dataset mine has 21 categories but MODEL.ROI_HEADS.NUM_CLASSES is 5"),
        ("id zero", r"dataset mine: .* has annotation id 0; .* unique annotation ids from 1"),
        ("repeated ids", r"dataset mine: .* has 1 repeated annotation ids; .*renumber them"),
    ],
)
def test_bad_own_dataset_is_one_line_before_any_model(tmp_path, labelme_copy, kind, match):
    spec, more = own("mine", labelme_copy), []
    if kind == "bad spec":
        spec = str(labelme_copy / "annotations.json")
    elif kind == "missing json":
        spec = f"mine={labelme_copy / 'nope.json'}:{labelme_copy}"
    elif kind == "not json":
        (labelme_copy / "annotations.json").write_text("images: none\n")
    elif kind == "not coco":
        break_json(labelme_copy, _drop_images)
    elif kind == "missing image":
        _missing_photo(labelme_copy)
    elif kind == "missing folder":
        spec = f"mine={labelme_copy / 'annotations.json'}:{tmp_path / 'nowhere'}"
    elif kind == "id zero":
        break_json(labelme_copy, lambda data: _set_first_ids(data, [0]))
    elif kind == "repeated ids":
        break_json(labelme_copy, lambda data: _set_first_ids(data, [100, 100]))
    elif kind == "wrong classes":
        more = ["MODEL.ROI_HEADS.NUM_CLASSES", "5"]
    with pytest.raises(TransferError, match=match) as raised:
        run(str(TINY_MASK), opts(tmp_path, "mine", *more), datasets=[spec])
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "run" / "config.yaml").exists()  # no run was set up


def test_keypoint_metadata_comes_from_the_categories():
    folder = fixtures.keypoints_coco_dir(num_images=4, size=128, seed=1)
    categories = json.loads((folder / "annotations.json").read_text())["categories"]
    metadata = keypoint_metadata("people", categories)
    assert metadata["keypoint_names"] == list(fixtures.COCO_KEYPOINT_NAMES)
    assert ("left_eye", "right_eye") in metadata["keypoint_flip_map"]
    assert len(metadata["keypoint_flip_map"]) == 8
    assert metadata["keypoint_oks_sigmas"] == list(COCO_OKS_SIGMAS)

    own_points = [{"id": 1, "name": "part", "keypoints": ["tip", "left_a", "right_a"]}]
    with pytest.raises(TransferError, match="add 'keypoint_oks_sigmas' \\(3 numbers\\)"):
        keypoint_metadata("parts", own_points)
    own_points[0]["keypoint_oks_sigmas"] = [0.1, 0.2, 0.2]
    metadata = keypoint_metadata("parts", own_points)
    assert metadata["keypoint_flip_map"] == [("left_a", "right_a")]
    assert metadata["keypoint_oks_sigmas"] == [0.1, 0.2, 0.2]


def test_sweep_files_name_own_datasets_for_every_run(tmp_path, monkeypatch):
    import yaml

    from launcher.errors import LauncherError
    from launcher.sweep import load_sweep

    (tmp_path / "ring.pth").write_bytes(b"not read by the planner")
    (tmp_path / "mask.yaml").write_text("_BASE_: whatever.yaml\n")
    sweep = {
        "checkpoints": {"ring": str(tmp_path / "ring.pth")},
        "tasks": {"mask": {"config": str(tmp_path / "mask.yaml")}},
        "datasets": ["parts=data/parts.json:data/images"],
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    monkeypatch.chdir(tmp_path)
    # relative paths are resolved where the sweep is submitted: jobs run elsewhere
    expected = f"parts={tmp_path / 'data/parts.json'}:{tmp_path / 'data/images'}"
    assert load_sweep(tmp_path / "sweep.yaml")["datasets"] == [expected]

    sweep["datasets"] = ["parts.json"]
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    with pytest.raises(LauncherError, match="is not NAME=ANNOTATIONS.json:IMAGE_DIR"):
        load_sweep(tmp_path / "sweep.yaml")
