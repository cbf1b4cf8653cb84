"""Embed a dataset once per (weights, transform, image listing) and reuse it everywhere.

Every protocol and seed of a sweep reads the same cached features: the cache key hashes the
network's weights, the eval transform (input size, pixel statistics) and the folder listing,
so any change to one of them embeds again. Concurrent array tasks wait on a lock file while one
of them embeds; the file is written atomically.
"""

import fcntl
import hashlib
import json
import time
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from pretrain.atomic_write import atomic_write
from pretrain.data import eval_transform
from pretrain.evaluation.linear_probe import extract_frozen_features
from transfer.classification.errors import ClassificationError

# bump when extraction itself changes (pooling, resize policy), to invalidate old caches
EXTRACTION_VERSION = 1
BATCH_SIZE = 256


class DecodedImages(Dataset):
    """The folder's images, decoded as RGB and transformed; a bad file is a one-line error."""

    def __init__(self, folder, transform):
        self.folder = folder
        self.transform = transform

    def __len__(self):
        return len(self.folder.paths)

    def __getitem__(self, index):
        path = self.folder.paths[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
            raise ClassificationError(
                f"image {path} cannot be decoded ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else 'no message'}); replace or "
                "delete it"
            ) from None
        return self.transform(rgb), int(self.folder.labels[index])


def transform_description(encoder):
    return {
        "eval_transform": "resize + center crop, to tensor, normalize (pretrain.data)",
        "image_size": encoder.image_size,
        "pixel_mean": list(encoder.pixel_mean),
        "pixel_std": list(encoder.pixel_std),
        "extraction_version": EXTRACTION_VERSION,
    }


def cache_key(encoder, folder):
    text = json.dumps(
        [encoder.fingerprint, transform_description(encoder), folder.fingerprint()], sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def embed(encoder, folder, device):
    transform = eval_transform("moco", encoder.image_size, encoder.pixel_mean, encoder.pixel_std)
    loader = DataLoader(DecodedImages(folder, transform), batch_size=BATCH_SIZE, shuffle=False)
    network = encoder.network.to(device)
    features, labels = extract_frozen_features(network, [network], loader, device)
    return features, labels


def _read_cache(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def cached_features(encoder, folder, cache_dir, device="cpu", log=print):
    """``(features [N, D] float32, labels [N], cache record)`` in ``folder.paths`` order."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(encoder, folder)
    path = cache_dir / f"{key}.pt"
    with open(cache_dir / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one task embeds, the others wait and read
        hit = path.is_file()
        if not hit:
            started = time.perf_counter()
            features, labels = embed(encoder, folder, device)
            record = {
                "features": features,
                "labels": labels,
                "seconds": time.perf_counter() - started,
            }
            atomic_write(path, lambda handle: torch.save(record, handle), binary=True)
        record = _read_cache(path)
    how = "cache hit" if hit else f"embedded in {record['seconds']:.1f} s"
    log(f"features of {folder.root} ({len(folder.paths)} images): {how} ({path})")
    info = {"key": key, "file": str(path), "cache_hit": hit, "embed_seconds": record["seconds"]}
    info["dim"] = int(record["features"].shape[1])
    return record["features"], record["labels"], info
