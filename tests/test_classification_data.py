"""Classification datasets: folder layouts, split rules, suites, offline domains, the feature
cache, and the bad-input errors (one line each)."""

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.backbones import backbone_state_dict, build_backbone
from transfer.classification import domains, encoders
from transfer.classification.datasets import resolve_datasets
from transfer.classification.errors import ClassificationError
from transfer.classification.features import cached_features
from transfer.classification.image_folder import scan
from transfer.classification.run import check_task
from transfer.classification.splits import TEST, TRAIN, VAL, assign_splits


def write_images(folder, classes, per_class, size=12, seed=0):
    """``per_class`` small RGB images per class, each class a different mean colour."""
    generator = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for number in range(per_class):
            pixels = generator.normal(60 * index + 40, 20, size=(size, size, 3))
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            image.save(folder / name / f"{number}.png")
    return folder


def tiny_checkpoint(path, seed=0, image_size=16, width=0.125):
    torch.manual_seed(seed)
    network = build_backbone("resnet18", width=width, stem="imagenet")
    meta = {
        "method": "moco",
        "sampler": "uniform",
        "arch": "resnet18",
        "width": width,
        "stem": "imagenet",
        "in_channels": 3,
        "pixel_mean": [0.5] * 3,
        "pixel_std": [0.25] * 3,
        "input_format": "RGB",
        "image_size": image_size,
        "dataset": "synthetic",
        "default_encoder": "query",
    }
    state = backbone_state_dict(network)
    checkpoint = {
        "format": "ring-nce-pretrain",
        "version": 1,
        "meta": meta,
        "encoders": {"query": state, "key": state},
        "model": {},
        "epoch": 1,
        "global_step": 1,
    }
    torch.save(checkpoint, path)
    return path


def test_class_folders_and_split_folders_are_listed(tmp_path):
    flat = scan(write_images(tmp_path / "flat", ["b", "a"], 3))
    assert flat.classes == ("a", "b") and len(flat.paths) == 6 and not flat.has_split_folders
    for split in ("train", "val", "test"):
        write_images(tmp_path / "split" / split, ["a", "b"], 2)
    split = scan(tmp_path / "split")
    assert split.has_split_folders and sorted(set(split.folder_splits)) == [TRAIN, VAL, TEST]


@pytest.mark.parametrize(
    "layout, message",
    [
        ("empty_class", r"class folder .*/flat/b holds no images"),
        ("no_classes", "holds no class sub-folders"),
        ("mismatched", r"mismatched classes: test lacks \['b'\] and has \['c'\]"),
        ("no_test", r"has split folder\(s\) \['train'\] but needs train/ and test/"),
        ("missing", "does not exist: expected"),
    ],
)
def test_bad_layouts_are_one_line_errors(tmp_path, layout, message):
    root = tmp_path / ("flat" if layout in ("empty_class", "no_classes", "missing") else "split")
    if layout == "empty_class":
        write_images(root, ["a"], 2)
        (root / "b").mkdir()
        (root / "b" / "notes.txt").write_text("not an image")
    if layout == "no_classes":
        root.mkdir()
    if layout == "mismatched":
        write_images(root / "train", ["a", "b"], 2)
        write_images(root / "test", ["a", "c"], 2)
    if layout == "no_test":
        write_images(root / "train", ["a"], 2)
    with pytest.raises(ClassificationError, match=message) as error:
        scan(root)
    assert "\n" not in str(error.value)


def test_split_rule_is_per_class_seeded_and_complete(tmp_path):
    folder = scan(write_images(tmp_path / "d", ["a", "b"], 10))
    rule = {"train": 0.5, "val": 0.2, "test": 0.3}
    splits = assign_splits(folder, rule, 0.2, seed=0)
    for label in (0, 1):
        mine = splits[folder.labels == label]
        assert [(mine == s).sum() for s in (TRAIN, VAL, TEST)] == [5, 2, 3]
    assert np.array_equal(assign_splits(folder, rule, 0.2, seed=0), splits)
    assert not np.array_equal(assign_splits(folder, rule, 0.2, seed=1), splits)
    with pytest.raises(ClassificationError, match="has 10 images: too few for the split rule"):
        assign_splits(folder, {"train": 0.9, "val": 0.04, "test": 0.06}, 0.2, seed=0)
    with pytest.raises(ClassificationError, match="no train/val/test folders"):
        assign_splits(folder, None, 0.2, seed=0)


def test_validation_is_held_out_of_train_when_there_is_no_val_folder(tmp_path):
    write_images(tmp_path / "d" / "train", ["a", "b"], 10)
    write_images(tmp_path / "d" / "test", ["a", "b"], 3)
    folder = scan(tmp_path / "d")
    splits = assign_splits(folder, None, 0.2, seed=0)
    assert (splits == VAL).sum() == 4 and (splits == TEST).sum() == 6
    assert np.all(splits[folder.folder_splits == TEST] == TEST)


def test_a_suite_is_one_dataset_per_domain_and_a_missing_domain_names_its_path(tmp_path):
    write_images(tmp_path / "md" / "omniglot", ["a", "b"], 3)
    write_images(tmp_path / "md" / "dtd", ["a", "b"], 3)
    suite = {"name": "Meta-Dataset", "root": str(tmp_path / "md"), "domains": ["omniglot", "dtd"]}
    datasets = resolve_datasets(suite)
    assert list(datasets) == ["omniglot", "dtd"]
    assert datasets["dtd"]["root"] == str(tmp_path / "md" / "dtd")
    assert datasets["dtd"]["name"] == "Meta-Dataset/dtd"
    suite["domains"].append("fungi")
    with pytest.raises(ClassificationError) as error:
        resolve_datasets(suite)
    assert str(error.value).startswith(
        f"Meta-Dataset domain 'fungi' not found: expected {tmp_path / 'md' / 'fungi'}"
    )


def test_the_meta_dataset_recipe_lists_its_nine_domains(tmp_path):
    recipe = "configs/classification/meta_dataset.yaml"
    with pytest.raises(ClassificationError, match="domain 'omniglot' not found: expected"):
        resolve_datasets({"config": recipe, "root": str(tmp_path)})
    for domain in ("omniglot", "aircraft", "cu_birds", "dtd", "quickdraw", "fungi"):
        write_images(tmp_path / domain, ["a", "b"], 2)
    for domain in ("vgg_flower", "traffic_sign", "mscoco"):
        write_images(tmp_path / domain, ["a", "b"], 2)
    assert len(resolve_datasets({"config": recipe, "root": str(tmp_path)})) == 9


def test_unknown_dataset_keys_and_domains_name_the_nearest(tmp_path):
    with pytest.raises(ClassificationError, match="unknown key 'rot'.*did you mean 'root'"):
        resolve_datasets({"rot": str(tmp_path)})
    with pytest.raises(
        ClassificationError, match="no offline domain 'glyph'; did you mean 'glyphs'"
    ):
        resolve_datasets({"builtin": "glyph"})


def test_fewshot_needs_shots_plus_queries_images_in_every_class(tmp_path):
    write_images(tmp_path / "d", ["a", "b", "c"], 4)
    write_images(tmp_path / "d", ["b"], 2, seed=1)  # overwrites two of b's four: still 4
    (tmp_path / "d" / "c" / "3.png").unlink()
    task = {
        "dataset": resolve_datasets(str(tmp_path / "d"))[None],
        "protocol": {"name": "fewshot", "ways": 2, "shots": 1, "queries": 3, "split": "all"},
    }
    with pytest.raises(ClassificationError, match="class 'c' of d .*has 3 images, fewer than"):
        check_task(task)


def test_glyph_build_is_deterministic_and_omniglot_shaped(tmp_path, monkeypatch):
    monkeypatch.setattr(domains, "ALPHABETS", {"greek": [0x0391, 0x03A9]})
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        domains.write_glyphs(tmp_path / name)
    first = sorted((tmp_path / "one").rglob("*.png"))
    assert [p.parent.name for p in first[:: domains.GLYPH_INSTANCES]] == [
        "greek_0391",
        "greek_03A9",
    ]
    assert len(first) == 2 * domains.GLYPH_INSTANCES
    for path in first:
        assert (
            path.read_bytes()
            == (tmp_path / "two" / path.relative_to(tmp_path / "one")).read_bytes()
        )
    with Image.open(first[0]) as image:
        assert image.size == (28, 28) and image.mode == "L"


def test_digits_are_scikit_learns_handwriting(tmp_path, monkeypatch):
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    assert digits.images.shape == (1797, 8, 8)
    digits.images, digits.target = digits.images[:40], digits.target[:40]  # writes in a blink
    monkeypatch.setattr(datasets, "load_digits", lambda: digits)
    domains.write_digits(tmp_path)
    folder = scan(tmp_path)
    assert folder.classes == tuple(str(d) for d in range(10)) and len(folder.paths) == 40
    with Image.open(folder.paths[0]) as image:
        expected = np.rint(digits.images[0] * 255 / 16).astype(np.uint8)
        assert np.array_equal(np.asarray(image), expected)


def test_features_are_cached_by_weights_transform_and_listing(tmp_path):
    root = write_images(tmp_path / "d", ["a", "b"], 3)
    folder = scan(root)
    entry = {"path": str(tiny_checkpoint(tmp_path / "c.pth")), "encoder": None}
    encoder = encoders.from_checkpoint(entry)
    log = []
    features, labels, first = cached_features(encoder, folder, tmp_path / "cache", log=log.append)
    assert features.shape == (6, 64) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    again = cached_features(encoder, folder, tmp_path / "cache", log=log.append)[2]
    assert not first["cache_hit"] and again["cache_hit"] and again["key"] == first["key"]
    other_weights = encoders.from_checkpoint(
        {"path": str(tiny_checkpoint(tmp_path / "d.pth", seed=1)), "encoder": None}
    )
    encoder.image_size = 20
    write_images(root, ["b"], 4, seed=3)  # a fourth image of b
    keys = {
        cached_features(other_weights, folder, tmp_path / "cache", log=log.append)[2]["key"],
        cached_features(encoder, folder, tmp_path / "cache", log=log.append)[2]["key"],
        cached_features(other_weights, scan(root), tmp_path / "cache", log=log.append)[2]["key"],
    }
    assert len(keys | {first["key"]}) == 4


def test_an_undecodable_image_is_named(tmp_path):
    root = write_images(tmp_path / "d", ["a", "b"], 2)
    (root / "b" / "9.png").write_bytes(b"\x89PNG truncated")
    encoder = encoders.from_checkpoint(
        {"path": str(tiny_checkpoint(tmp_path / "c.pth")), "encoder": None}
    )
    with pytest.raises(ClassificationError, match=r"image .*/b/9.png cannot be decoded") as error:
        cached_features(encoder, scan(root), tmp_path / "cache", log=lambda _: None)
    assert "\n" not in str(error.value) and not list((tmp_path / "cache").glob("*.pt"))


def test_random_init_and_pixels_copy_the_reference_pipeline(tmp_path):
    entry = {"path": str(tiny_checkpoint(tmp_path / "c.pth", image_size=20)), "encoder": None}
    reference = encoders.reference_of(entry)
    assert (reference.arch, reference.width, reference.image_size) == ("resnet18", 0.125, 20)
    first, second = encoders.random_init(reference, 0), encoders.random_init(reference, 1)
    assert first.fingerprint != second.fingerprint
    assert first.fingerprint == encoders.random_init(reference, 0).fingerprint
    pixels = encoders.raw_pixels(reference)
    assert pixels.network(torch.zeros(2, 3, 20, 20)).shape == (2, 3 * 16 * 16)
    with pytest.raises(ClassificationError, match="this sweep has none: add one"):
        encoders.reference_of(None)
