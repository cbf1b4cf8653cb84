"""The training loader: workers kept across epochs without changing what they make, and a
prefetch depth that fits in shared memory."""

import torch

from pretrain.data import load_source
from pretrain.distributed import DistInfo
from pretrain.loading import prefetch_factor
from pretrain.trainer import as_config, build_datasets, train_loader

GIB = 2**30


def test_prefetch_fits_the_budget_between_one_and_four_batches_per_worker():
    imagenet_batch = 256 * 2 * 3 * 224 * 224 * 4  # two float32 views: 308 MB
    assert prefetch_factor(imagenet_batch, 14, budget=8 * GIB) == 1  # not 4: 17 GB
    assert prefetch_factor(imagenet_batch, 2, budget=2 * GIB) == 3
    assert prefetch_factor(4096, 2, budget=2 * GIB) == 4  # small batches: the usual depth


def epochs_of_views(cfg, dataset, workers, epochs=(0, 1)):
    cfg = as_config({**cfg, "data": {**cfg["data"], "num_workers": workers}})
    loader = train_loader(dataset, 8, epochs[0], cfg, DistInfo())
    assert loader.persistent_workers == (workers > 0)
    passes = []
    for epoch in epochs:
        loader.sampler.set_epoch(epoch)
        passes.append([(views, indices) for views, _, indices in loader])
    return passes


def test_views_depend_on_seed_epoch_and_image_not_on_the_workers(tiny_config):
    """Two persistent workers through two epochs make what the training process makes alone:
    a run resumed at an epoch boundary (fresh workers) replays an uninterrupted one."""
    cfg = as_config(tiny_config)
    train, _, _ = build_datasets(cfg, cfg.method, load_source(cfg.data))
    alone = epochs_of_views(tiny_config, train, workers=0)
    kept = epochs_of_views(tiny_config, train, workers=2)
    resumed = epochs_of_views(tiny_config, train, workers=2, epochs=(1,))
    for passes, others in ((alone, kept), (alone[1:], resumed)):
        for batches, other_batches in zip(passes, others, strict=True):
            for (views_a, indices_a), (views_b, indices_b) in zip(batches, other_batches):
                assert torch.equal(indices_a, indices_b)
                assert all(torch.equal(a, b) for a, b in zip(views_a, views_b))
    assert not torch.equal(alone[0][0][1], alone[1][0][1])  # each epoch its own order
