import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.config import to_config
from pretrain.data import (
    MultiView,
    augmentation,
    collate_views,
    fashion_mnist_root,
    load_fashion_mnist,
    load_image_folder,
    load_source,
    load_stl10,
    load_synthetic,
    rgb_to_lab,
    with_transform,
)
from pretrain.defaults import DEFAULTS
from pretrain.errors import PretrainError


def write_idx(path, array, header_bytes):
    with gzip.open(path, "wb") as handle:
        handle.write(b"\0" * header_bytes + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_files_are_read_as_rgb(tmp_path):
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images, 16)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.array([7, 0, 9]), 8)
    source = load_fashion_mnist(tmp_path)
    image, label, index = source.train[2]
    assert (len(source.train), source.channels, label.item(), index) == (3, 1, 9, 2)
    assert image.mode == "RGB" and np.array_equal(np.asarray(image)[..., 1], images[2])


def test_missing_sources_name_the_expected_path(tmp_path):
    with pytest.raises(PretrainError, match="stl10_binary/train_X.bin"):
        load_stl10(tmp_path)
    with pytest.raises(PretrainError, match="expected .*/train with one sub-folder"):
        load_image_folder(tmp_path)
    cfg = to_config(DEFAULTS)["data"]
    cfg.name = "mnist"
    with pytest.raises(PretrainError, match="unknown data.name 'mnist'"):
        load_source(cfg)


def test_image_folder_and_subset_reindex(tmp_path):
    for split in ("train", "val"):
        for label, colour in enumerate(("red", "blue")):
            folder = tmp_path / split / f"class_{label}"
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 30), colour).save(folder / f"{i}.png")
    source = load_image_folder(tmp_path)
    subset = with_transform(source.train, None, np.array([1, 4]))
    assert len(subset) == 2 and [subset[i][2] for i in range(2)] == [0, 1]
    assert subset.labels.tolist() == [0, 1]
    assert subset[1][0].getpixel((0, 0)) == (0, 0, 255)


def test_lab_of_known_colours():
    white, red = torch.ones(3, 1, 1), torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    torch.testing.assert_close(
        rgb_to_lab(white).flatten(), torch.tensor([100.0, 0.0, 0.0]), atol=1e-3, rtol=0
    )
    torch.testing.assert_close(
        rgb_to_lab(red).flatten(), torch.tensor([53.24, 80.09, 67.20]), atol=0.02, rtol=0
    )


@pytest.mark.parametrize("method, channels", [("moco", 3), ("cmc", 3), ("ir", 3)])
def test_two_view_batches(method, channels):
    source = load_synthetic(size=16, channels=3, train_count=8)
    views = 2 if method == "moco" else 1
    train = with_transform(
        source.train, MultiView(augmentation(method, 16, source.mean, source.std), views)
    )
    batch, labels, indices = collate_views([train[i] for i in range(4)])
    assert len(batch) == views and batch[0].shape == (4, channels, 16, 16)
    assert indices.tolist() == [0, 1, 2, 3] and labels.shape == (4,)
    assert not torch.equal(batch[0][0], batch[-1][1])


def test_real_fashion_mnist_when_installed():
    if not (fashion_mnist_root() / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    source = load_fashion_mnist(None)
    assert (len(source.train), len(source.test), source.num_classes) == (60000, 10000, 10)
    assert sorted(set(source.test.labels.tolist())) == list(range(10))
