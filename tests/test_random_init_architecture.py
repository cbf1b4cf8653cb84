"""A random-init baseline builds the network of the sweep's checkpoints (any width or depth), not
the task config's ResNet-50: ``RINGNCE.ARCHITECTURE_FROM`` and the sweep's ``random`` rows."""

import json

import pytest
import yaml

from launcher.errors import LauncherError
from launcher.sweep import Run, load_sweep, pending_conversions, planned_runs, run_opts
from transfer.config import TransferError, build_config
from transfer.engine import Trainer

CONFIG = "configs/transfer/coco_mask_rcnn_R50_FPN_1x.yaml"
# the converter's d2_config for a width-0.25 ResNet-18 pretrained on Fashion-MNIST
NARROW_R18 = {
    "INPUT.FORMAT": "RGB",
    "MODEL.PIXEL_MEAN": [72.93, 72.93, 72.93],
    "MODEL.PIXEL_STD": [90.015, 90.015, 90.015],
    "MODEL.RESNETS.DEPTH": 18,
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 16,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 16,
    "MODEL.RESNETS.NUM_GROUPS": 1,
}


@pytest.fixture
def narrow_json(tmp_path):
    path = tmp_path / "narrow.json"
    path.write_text(json.dumps({"d2_config": NARROW_R18}))
    return path


def random_init(tmp_path, *opts):
    return build_config(CONFIG, ["MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path), *opts])


def test_random_init_builds_the_network_architecture_from_names(tmp_path, narrow_json):
    cfg = random_init(tmp_path, "RINGNCE.ARCHITECTURE_FROM", str(narrow_json.with_suffix(".pkl")))
    assert cfg.MODEL.PIXEL_MEAN == NARROW_R18["MODEL.PIXEL_MEAN"]
    bottom_up = Trainer.build_model(cfg).backbone.bottom_up
    assert bottom_up.stem.conv1.out_channels == 16
    assert bottom_up.res5[-1].conv2.out_channels == 128
    assert len(bottom_up.res4) == 2  # ResNet-18's two blocks, not ResNet-50's six
    assert random_init(tmp_path).MODEL.RESNETS.DEPTH == 50  # without it: the config's own


def test_architecture_from_without_converter_json_or_beside_weights_is_refused(
    tmp_path, narrow_json
):
    with pytest.raises(TransferError, match="tools/convert_to_d2.py"):
        random_init(tmp_path, "RINGNCE.ARCHITECTURE_FROM", str(tmp_path / "absent.pkl"))
    weights = tmp_path / "w.pkl"
    weights.write_bytes(b"")
    opts = ["MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(tmp_path)]
    with pytest.raises(TransferError, match="for random init"):
        build_config(CONFIG, [*opts, "RINGNCE.ARCHITECTURE_FROM", str(narrow_json)])


def sweep(tmp_path, checkpoints):
    for name in ("a.pth", "b.pth"):
        (tmp_path / name).write_bytes(b"")
    path = tmp_path / "sweep.yaml"
    content = {"checkpoints": checkpoints, "tasks": {"mask": {"config": CONFIG}}, "seeds": [0]}
    path.write_text(yaml.safe_dump({**content, "output_dir": str(tmp_path / "out")}))
    return load_sweep(path)


def architecture_opt(spec, checkpoint, tmp_path):
    opts = run_opts(spec, Run(checkpoint, "mask", 0), tmp_path / "out")
    return dict(zip(opts[::2], opts[1::2])).get("RINGNCE.ARCHITECTURE_FROM")


def test_a_random_row_takes_the_network_of_the_sweeps_first_or_named_checkpoint(tmp_path):
    files = {"a": str(tmp_path / "a.pth"), "b": str(tmp_path / "b.pth")}
    spec = sweep(tmp_path, {"random": "random", **files, "rb": {"path": "random", "like": "b"}})
    weights = tmp_path / "out" / "weights"
    assert architecture_opt(spec, "random", tmp_path) == str(weights / "a.pkl")
    assert architecture_opt(spec, "rb", tmp_path) == str(weights / "b.pkl")
    assert architecture_opt(spec, "a", tmp_path) is None
    only_random = [run for run in planned_runs(spec) if run.checkpoint == "rb"]
    assert [out for _, out in pending_conversions(spec, weights.parent, only_random)] == [
        str(weights / "b.pkl")
    ]
    alone = sweep(tmp_path, {"random": "random"})
    assert architecture_opt(alone, "random", tmp_path) is None  # the task config's network


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"path": "random", "like": "nope"}, "not a checkpoint with a file"),
        ({"path": "random", "like": "other"}, "not a checkpoint with a file"),
        ("LIKE_ON_FILE", "'like' is for a 'random' entry only"),
    ],
)
def test_a_bad_like_is_a_one_line_error(tmp_path, entry, message):
    if entry == "LIKE_ON_FILE":
        entry = {"path": str(tmp_path / "a.pth"), "like": "a"}
    with pytest.raises(LauncherError, match=message) as error:
        sweep(tmp_path, {"x": entry, "other": "random", "a": str(tmp_path / "a.pth")})
    assert "\n" not in str(error.value)
