"""Datasets (Fashion-MNIST, CIFAR-10/100, STL-10, image folders, synthetic) and augmentations.

Every source is local: a missing file is a one-line error naming the expected path, never a
download. Images are served as RGB (grayscale repeated to 3 channels); ``channels`` records
what the source really holds, so CMC can refuse grayscale data.
"""

import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import Dataset
from torchvision import datasets as tv_datasets
from torchvision import transforms as T

from pretrain.errors import PretrainError

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"


def fashion_mnist_root():
    """The Debian package's folder: installed system-wide, else unpacked (``dpkg -x``, no root)
    into the project cache by tools/setup_env.sh."""
    cache = Path(os.environ.get("RINGNCE_CACHE", Path(__file__).resolve().parents[1] / ".cache"))
    unpacked = cache / "debian" / "dataset-fashion-mnist" / FASHION_MNIST_ROOT.lstrip("/")
    system = Path(FASHION_MNIST_ROOT)
    first_file = "train-images-idx3-ubyte.gz"  # a folder alone may be an emptied package's
    if not (system / first_file).is_file() and (unpacked / first_file).is_file():
        return unpacked
    return system


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Source:
    """Train and test images of one dataset, with its normalisation statistics."""

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    channels: int  # 1 for grayscale sources (served as RGB), 3 for colour
    image_size: int
    mean: tuple
    std: tuple
    monitor_train: Dataset = None  # labelled kNN bank when ``train`` holds unlabelled images


class ArrayImages(Dataset):
    """uint8 images (N, H, W) or (N, H, W, 3) with labels, served as RGB PIL images."""

    def __init__(self, images, labels, transform=None):
        if len(images) != len(labels):
            raise PretrainError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = Image.fromarray(self.images[index]).convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index], index


class FolderImages(Dataset):
    """torchvision ``ImageFolder`` samples with the same ``(image, label, index)`` items."""

    def __init__(self, folder, transform=None, indices=None):
        self.folder = folder
        self.indices = np.arange(len(folder)) if indices is None else np.asarray(indices)
        targets = torch.as_tensor(folder.targets, dtype=torch.long)
        self.labels = targets[torch.as_tensor(self.indices, dtype=torch.long)]
        self.transform = transform

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        path, label = self.folder.samples[self.indices[index]]
        with Image.open(path) as image:
            image = image.convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, label, index


def require_file(path, what, fix):
    path = Path(path)
    if not path.is_file():
        raise PretrainError(f"{what} not found: expected {path}; {fix}")
    return path


def read_idx(path, header_bytes):
    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=header_bytes)


def load_fashion_mnist(root):
    root = Path(root) if root else fashion_mnist_root()
    fix = (
        "install it with 'apt-get install dataset-fashion-mnist' (without root: "
        "bash tools/setup_env.sh unpacks it into .cache) or set data.root"
    )
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(
            require_file(root / f"{prefix}-images-idx3-ubyte.gz", "Fashion-MNIST", fix), 16
        )
        labels = read_idx(
            require_file(root / f"{prefix}-labels-idx1-ubyte.gz", "Fashion-MNIST", fix), 8
        )
        splits[split] = ArrayImages(images.reshape(-1, 28, 28), labels.astype(np.int64))
    return Source(
        "fashion_mnist", splits["train"], splits["test"], 10, 1, 28, (0.2860,) * 3, (0.3530,) * 3
    )


def read_cifar_pickle(path):
    with open(path, "rb") as handle:
        batch = pickle.load(handle, encoding="latin1")
    images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = batch.get("labels", batch.get("fine_labels"))
    return np.ascontiguousarray(images), np.asarray(labels, dtype=np.int64)


def load_cifar(root, num_classes):
    if root is None:
        raise PretrainError(
            f"cifar{num_classes} needs data.root: the folder holding the "
            "extracted python-version archive"
        )
    folder = Path(root) / ("cifar-10-batches-py" if num_classes == 10 else "cifar-100-python")
    fix = f"extract cifar-{num_classes}-python.tar.gz into {root} (no download is attempted)"
    names = ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"])
    if num_classes == 100:
        names = (["train"], ["test"])
    splits = []
    for files in names:
        parts = [
            read_cifar_pickle(require_file(folder / f, f"CIFAR-{num_classes}", fix)) for f in files
        ]
        splits.append(
            ArrayImages(
                np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            )
        )
    stats = {
        10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        100: ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    }[num_classes]
    return Source(f"cifar{num_classes}", splits[0], splits[1], num_classes, 3, 32, *stats)


def read_stl_images(path):
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, 3, 96, 96)
    return np.ascontiguousarray(raw.transpose(0, 3, 2, 1))  # stored column-major per channel


def load_stl10(root, use_unlabeled=True):
    if root is None:
        raise PretrainError("stl10 needs data.root: the folder holding stl10_binary/")
    folder = Path(root) / "stl10_binary"
    fix = f"extract stl10_binary.tar.gz into {root} (no download is attempted)"

    def split(name):
        images = read_stl_images(require_file(folder / f"{name}_X.bin", "STL-10", fix))
        labels = (
            np.fromfile(
                require_file(folder / f"{name}_y.bin", "STL-10", fix), dtype=np.uint8
            ).astype(np.int64)
            - 1
        )  # files count from 1
        return images, labels

    train_images, train_labels = split("train")
    test_images, test_labels = split("test")
    pretrain = ArrayImages(train_images, train_labels)
    if use_unlabeled:
        unlabeled = read_stl_images(require_file(folder / "unlabeled_X.bin", "STL-10", fix))
        pretrain = ArrayImages(
            np.concatenate([unlabeled, train_images]),
            np.concatenate([np.full(len(unlabeled), -1), train_labels]),
        )
    return Source(
        "stl10",
        pretrain,
        ArrayImages(test_images, test_labels),
        10,
        3,
        96,
        (0.4467, 0.4398, 0.4066),
        (0.2603, 0.2566, 0.2713),
        monitor_train=ArrayImages(train_images, train_labels),
    )


def load_image_folder(root):
    if root is None:
        raise PretrainError(
            "imagefolder needs data.root: a folder with train/<class>/ and "
            "val/<class>/ sub-folders of images"
        )
    splits = []
    for split in ("train", "val"):
        folder = Path(root) / split
        if not folder.is_dir():
            raise PretrainError(
                f"image folder split not found: expected {folder} with one "
                "sub-folder of images per class"
            )
        try:
            splits.append(FolderImages(tv_datasets.ImageFolder(str(folder))))
        except (FileNotFoundError, RuntimeError) as error:
            raise PretrainError(f"no images under {folder}: {error}".splitlines()[0]) from None
    return Source(
        "imagefolder",
        splits[0],
        splits[1],
        len(splits[0].folder.classes),
        3,
        224,
        IMAGENET_MEAN,
        IMAGENET_STD,
    )


def synthetic_images(count, num_classes, size, channels, seed):
    """Class-structured random images: a per-class smooth pattern plus per-image noise.

    Each class has its own low-frequency template, so a kNN monitor can tell whether an
    encoder learned anything; everything derives from ``seed``.
    """
    generator = np.random.default_rng(seed)
    coarse = generator.uniform(0, 255, size=(num_classes, 4, 4, channels))
    templates = np.kron(coarse, np.ones((1, -(-size // 4), -(-size // 4), 1)))[:, :size, :size]
    labels = np.arange(count) % num_classes
    noise = generator.normal(0, 40, size=(count, size, size, channels))
    images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
    return (images[..., 0] if channels == 1 else images), labels


def load_synthetic(size, channels, train_count=256, test_count=64, num_classes=4, seed=0):
    train = ArrayImages(*synthetic_images(train_count, num_classes, size, channels, seed))
    test = ArrayImages(*synthetic_images(test_count, num_classes, size, channels, seed + 1))
    return Source("synthetic", train, test, num_classes, channels, size, (0.5,) * 3, (0.25,) * 3)


DATASETS = ("fashion_mnist", "cifar10", "cifar100", "stl10", "imagefolder", "synthetic")


def load_source(data_cfg):
    """The ``Source`` named by ``data.name`` (with ``data.root`` and the synthetic options)."""
    name, root = data_cfg.name, data_cfg.root
    if name == "fashion_mnist":
        return load_fashion_mnist(root)
    if name in ("cifar10", "cifar100"):
        return load_cifar(root, int(name[5:]))
    if name == "stl10":
        return load_stl10(root, data_cfg.stl_unlabeled)
    if name == "imagefolder":
        return load_image_folder(root)
    if name == "synthetic":
        synthetic = data_cfg.synthetic
        return load_synthetic(
            synthetic.image_size,
            synthetic.channels,
            synthetic.train_count,
            synthetic.test_count,
            synthetic.num_classes,
            synthetic.seed,
        )
    raise PretrainError(f"unknown data.name '{name}'; choose one of {', '.join(DATASETS)}")


# ---- colour space for CMC -------------------------------------------------------------------


def rgb_to_lab(rgb):
    """CIE Lab (D65) of an sRGB tensor (3, H, W) in [0, 1]: L in [0, 100], a/b about +-110."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    to_xyz = torch.tensor(
        [
            [0.412453, 0.357580, 0.180423],
            [0.212671, 0.715160, 0.072169],
            [0.019334, 0.119193, 0.950227],
        ],
        dtype=rgb.dtype,
    )
    xyz = torch.einsum("ij,jhw->ihw", to_xyz, linear)
    xyz = xyz / torch.tensor([0.950456, 1.0, 1.088754], dtype=rgb.dtype).view(3, 1, 1)
    delta = 6 / 29
    f = torch.where(xyz > delta**3, xyz.clamp_min(1e-12) ** (1 / 3), xyz / (3 * delta**2) + 4 / 29)
    lightness = 116 * f[1] - 16
    return torch.stack([lightness, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


class ToNormalizedLab:
    """PIL RGB -> Lab tensor scaled to about unit range: channel 0 = L, channels 1-2 = ab."""

    def __call__(self, image):
        lab = rgb_to_lab(T.functional.to_tensor(image))
        return torch.cat([(lab[:1] - 50.0) / 50.0, lab[1:] / 110.0])


# ---- augmentations ---------------------------------------------------------------------------


class RandomGaussianBlur:
    """MoCo v2's blur: PIL's Gaussian filter with sigma uniform in ``sigma``.

    PIL's own filter costs about a sixth of torchvision's ``GaussianBlur`` on a 224 px PIL
    image, and the blur dominates the augmentation's cost, hence the loader's rate.
    """

    def __init__(self, sigma=(0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, image):
        low, high = self.sigma
        radius = low + (high - low) * torch.rand(()).item()
        return image.filter(ImageFilter.GaussianBlur(radius=radius))


class MultiView:
    """Applies a transform ``count`` times: the views of one image."""

    def __init__(self, transform, count):
        self.transform = transform
        self.count = count

    def __call__(self, image):
        return [self.transform(image) for _ in range(self.count)]


def eval_resize(image_size):
    """Test-time resizing: resize + center crop at ImageNet scale, nothing for small images."""
    if image_size >= 128:
        return [T.Resize(int(round(image_size * 256 / 224))), T.CenterCrop(image_size)]
    return [T.Resize(image_size), T.CenterCrop(image_size)]


def augmentation(method, image_size, mean, std, crop_min_scale=0.2):
    """The training augmentation of ``method``: MoCo v2's (moco, simclr, supervised), IR's, CMC."""
    crop = T.RandomResizedCrop(image_size, scale=(crop_min_scale, 1.0))
    if method == "cmc":  # colour is the signal CMC predicts across views: no jitter
        return T.Compose([crop, T.RandomHorizontalFlip(), ToNormalizedLab()])
    steps = [crop]
    if method == "ir":
        steps += [T.RandomGrayscale(p=0.2), T.ColorJitter(0.4, 0.4, 0.4, 0.4)]
    else:
        steps += [
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
        ]
        if image_size >= 64:  # MoCo v2 blur; at 28-32 px it erases the image
            steps.append(T.RandomApply([RandomGaussianBlur((0.1, 2.0))], p=0.5))
    steps += [T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def eval_transform(method, image_size, mean, std):
    if method == "cmc":
        return T.Compose([*eval_resize(image_size), ToNormalizedLab()])
    return T.Compose([*eval_resize(image_size), T.ToTensor(), T.Normalize(mean, std)])


def collate_views(batch):
    """``[(views, label, index)]`` -> ``(list of view batches, labels, indices)``."""
    views, labels, indices = zip(*batch)
    stacked = [torch.stack(view) for view in zip(*views)]
    return stacked, torch.as_tensor(labels), torch.as_tensor(indices)


def subset_indices(length, limit, seed):
    """A fixed random subset of ``limit`` indices (all of them when ``limit`` is null)."""
    if limit is None or limit >= length:
        return np.arange(length)
    return np.sort(np.random.default_rng(seed).permutation(length)[:limit])


def with_transform(dataset, transform, indices=None):
    """A copy of an ArrayImages/FolderImages with its own transform, optionally subset.

    Items keep indices 0..len-1 of the copy, which is what a memory bank is indexed by.
    """
    if isinstance(dataset, ArrayImages):
        images, labels = dataset.images, dataset.labels.numpy()
        if indices is not None:
            images, labels = images[indices], labels[indices]
        return ArrayImages(images, labels, transform)
    chosen = dataset.indices if indices is None else dataset.indices[indices]
    return FolderImages(dataset.folder, transform, chosen)
