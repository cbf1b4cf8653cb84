"""The pretraining loop: ``train(cfg) -> dict`` (see docs/design.md, "Pretraining run").

Determinism: every epoch reseeds torch/numpy/random from ``(seed, epoch, rank)`` and builds its
data order from the same seed, so a run resumed at an epoch boundary replays exactly what an
uninterrupted run does (same weights on CPU). RNG states are still saved for inspection.
"""

import json
import os
import random
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from pretrain import checkpoint as ckpt
from pretrain.backbones import backbone_state_dict
from pretrain.config import Config, ConfigError, load_config, save_config, to_config, validate
from pretrain.data import (
    MultiView,
    augmentation,
    collate_views,
    eval_transform,
    load_source,
    subset_indices,
    with_transform,
)
from pretrain.defaults import DEFAULTS
from pretrain.distributed import (
    all_reduce_mean,
    barrier,
    broadcast_buffers_,
    init_distributed,
    replicated_state_digest,
)
from pretrain.errors import PretrainError
from pretrain.knn import extract_features, knn_accuracy
from pretrain.methods import build_method, method_class
from pretrain.monitor import FalseNegativeMonitor
from pretrain.samplers import NegativeSampler
from pretrain.schedules import lr_factor

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.json"


def load_pretrain_config(path, overrides=()):
    """A YAML pretraining config checked against ``DEFAULTS`` (unknown keys are errors)."""
    return load_config(path, overrides, schema=DEFAULTS)


def as_config(cfg):
    """Accept a loaded Config or a plain (partial) dict, validated against the schema."""
    if isinstance(cfg, Config) and set(cfg) == set(DEFAULTS):
        return cfg
    return to_config(validate(dict(cfg), DEFAULTS, DEFAULTS))


# ---- reproducibility ---------------------------------------------------------------------------


def epoch_seed(seed, epoch, rank):
    return (seed * 1_000_003 + epoch * 1_009 + rank) % (2**31)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]],
        "python": random.getstate(),
    }


# ---- data ----------------------------------------------------------------------------------


def build_datasets(cfg, method_name, source):
    """``(train, monitor_train, monitor_test)`` datasets with their transforms."""
    cls = method_class(method_name)
    size = cfg.data.image_size or source.image_size
    train_aug = augmentation(method_name, size, source.mean, source.std, cfg.data.crop_min_scale)
    keep = subset_indices(len(source.train), cfg.data.train_subset, cfg.seed)
    train = with_transform(source.train, MultiView(train_aug, cls.num_views), keep)
    test_aug = eval_transform(method_name, size, source.mean, source.std)
    bank = source.monitor_train or source.train
    monitor_train = with_transform(
        bank, test_aug, subset_indices(len(bank), cfg.knn.train_subset, cfg.seed)
    )
    monitor_test = with_transform(
        source.test, test_aug, subset_indices(len(source.test), cfg.knn.test_subset, cfg.seed)
    )
    return train, monitor_train, monitor_test


def train_loader(dataset, batch_per_rank, epoch, cfg, info):
    generator = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, 0))
    if info.world_size > 1:
        order = DistributedSampler(
            dataset, info.world_size, info.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
        order.set_epoch(epoch)
    else:
        order = RandomSampler(dataset, generator=generator)
    workers = cfg.data.num_workers
    return DataLoader(
        dataset,
        batch_size=batch_per_rank,
        sampler=order,
        drop_last=True,
        num_workers=workers,
        collate_fn=collate_views,
        generator=generator,
        pin_memory=info.device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )


def eval_loader(dataset, cfg):
    def collate(batch):
        images, labels, _ = zip(*batch)
        return torch.stack(images), torch.as_tensor(labels)

    return DataLoader(
        dataset,
        batch_size=cfg.knn.batch_size,
        shuffle=False,
        num_workers=cfg.data.num_workers,
        collate_fn=collate,
    )


# ---- checks --------------------------------------------------------------------------------


def check_batch(cfg, dataset_size, world_size):
    batch = cfg.optim.batch_size
    if batch < 1:
        raise PretrainError(f"optim.batch_size must be >= 1, got {batch}")
    if batch % world_size:
        raise PretrainError(
            f"optim.batch_size={batch} (global) is not divisible by the "
            f"{world_size} processes; pick a multiple of {world_size}"
        )
    if dataset_size == 0:
        raise PretrainError(
            f"the training set of data.name={cfg.data.name} is empty; check "
            "data.root and data.train_subset"
        )
    if batch > dataset_size:
        raise PretrainError(
            f"optim.batch_size={batch} is larger than the dataset "
            f"({dataset_size} images); lower optim.batch_size or raise "
            "data.train_subset"
        )
    return batch // world_size


def check_negatives(cfg):
    """The candidate pool must exist: a bank draw needs images, a queue needs a size."""
    if cfg.method in ("ir", "cmc") and cfg[cfg.method].num_negatives < 1:
        raise PretrainError(f"{cfg.method}.num_negatives must be >= 1")
    if cfg.method == "moco" and cfg.moco.queue_size < 1:
        raise PretrainError("moco.queue_size must be >= 1")
    if cfg.method == "simclr" and cfg.optim.batch_size < 2:
        raise PretrainError("simclr needs optim.batch_size >= 2 for in-batch negatives")


# ---- checkpoint state ----------------------------------------------------------------------


def checkpoint_meta(cfg, method, source, image_size):
    channels = method.encoder_in_channels()
    return {
        "method": cfg.method,
        "sampler": cfg.sampler.name,
        "arch": cfg.model.arch,
        "width": cfg.model.width,
        "stem": cfg.model.stem,
        "in_channels": channels[method.default_encoder],
        "encoder_in_channels": channels,
        "pixel_mean": list(source.mean),
        "pixel_std": list(source.std),
        "input_format": "Lab" if cfg.method == "cmc" else "RGB",
        "image_size": image_size,
        "dataset": source.name,
        "default_encoder": method.default_encoder,
    }


def training_state(meta, method, optimizer, scheduler, cfg, epoch, global_step, metrics):
    """The checkpoint dict of docs/design.md (``format``/``version`` are added on save)."""
    return {
        "meta": meta,
        "encoders": {name: backbone_state_dict(b) for name, b in method.encoders().items()},
        "model": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": {},  # bf16 autocast needs no loss scaling
        "rng": rng_state(),
        "epoch": epoch,
        "global_step": global_step,
        "config": cfg.to_dict(),
        "metrics": metrics,
    }


def write_step_scalars(writer, step, loss, lr, throughput, stats, sampler_stats):
    writer.add_scalar("train/loss", loss, step)
    writer.add_scalar("train/lr", lr, step)
    writer.add_scalar("train/images_per_second", throughput, step)
    writer.add_scalar("train/negatives_per_anchor", stats["negatives_per_anchor"], step)
    for name, value in sampler_stats.items():
        writer.add_scalar(f"train/{name}", value, step)


def restore(checkpoint, path, method, optimizer, scheduler):
    try:
        method.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
    except (RuntimeError, KeyError, ValueError) as error:
        meta = checkpoint.get("meta", {})
        raise PretrainError(
            f"checkpoint {path} does not fit this config (it holds method={meta.get('method')} "
            f"arch={meta.get('arch')} width={meta.get('width')}; {str(error).splitlines()[0]}); "
            "use a new output_dir or the config it was written with"
        ) from None
    return checkpoint["epoch"], checkpoint["global_step"], checkpoint.get("metrics", {})


def find_resume(cfg):
    resume = cfg.resume
    if resume in (None, "", "none", False):
        return None, None
    if resume == "auto":
        return ckpt.latest_good_checkpoint(cfg.output_dir)
    return Path(resume), ckpt.load_checkpoint(resume)


def write_json_atomic(data, path):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
    os.replace(tmp, path)


# ---- monitor -------------------------------------------------------------------------------


def knn_monitor(method, monitor_train, monitor_test, num_classes, cfg, device, autocast):
    was_training = method.training
    method.eval()
    try:
        with autocast():
            bank, bank_labels = extract_features(
                method.features, eval_loader(monitor_train, cfg), device
            )
            query, query_labels = extract_features(
                method.features, eval_loader(monitor_test, cfg), device
            )
    finally:
        method.train(was_training)
    return knn_accuracy(
        bank, bank_labels, query, query_labels, num_classes, cfg.knn.k, cfg.knn.temperature
    )


def due(epoch_done, every, last_epoch):
    return epoch_done == last_epoch or (every > 0 and epoch_done % every == 0)


# ---- the loop ------------------------------------------------------------------------------


def train(cfg):
    """Pretrain as ``cfg`` says; returns the final metrics (see docs/design.md)."""
    cfg = as_config(cfg)
    method_class(cfg.method)
    # config errors before any data is read
    sampler = NegativeSampler.from_config(cfg.sampler, cfg.optim.epochs)
    info = init_distributed(cfg.device)
    seed_everything(epoch_seed(cfg.seed, 0, info.rank))
    source = load_source(cfg.data)
    train_set, monitor_train, monitor_test = build_datasets(cfg, cfg.method, source)
    batch_per_rank = check_batch(cfg, len(train_set), info.world_size)
    check_negatives(cfg)
    method = build_method(cfg, len(train_set), source.channels, source.name)
    sampler.check_pool(*method.negative_pool())  # before anything is written
    on_gpu = info.device.type == "cuda"
    if info.world_size > 1 and method.sync_batchnorm and on_gpu:  # SyncBN is GPU-only
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    method.to(info.device)
    # labels for the false-negative monitor only: the method and the loss never see them
    false_negatives = FalseNegativeMonitor(train_set.labels.to(info.device))
    if on_gpu and cfg.train.channels_last:
        method.to(memory_format=torch.channels_last)
    channels_last = on_gpu and cfg.train.channels_last
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    use_amp = on_gpu and cfg.train.amp

    def autocast():
        if use_amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    optimizer = torch.optim.SGD(
        [p for p in method.parameters() if p.requires_grad],
        lr=cfg.optim.lr,
        momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
    )
    steps_per_epoch = len(train_set) // cfg.optim.batch_size
    total_steps = steps_per_epoch * cfg.optim.epochs
    milestone_steps = [round(m * steps_per_epoch) for m in cfg.optim.milestones]
    warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step, total_steps, warmup_steps, cfg.optim.schedule, milestone_steps, cfg.optim.gamma
        ),
    )
    lr_factor(0, total_steps, warmup_steps, cfg.optim.schedule)  # names a bad schedule early

    output_dir = Path(cfg.output_dir)
    start_epoch, global_step, metrics = 0, 0, {}
    resume_path, checkpoint = find_resume(cfg)
    if checkpoint is not None:
        start_epoch, global_step, metrics = restore(
            checkpoint, resume_path, method, optimizer, scheduler
        )
        if info.is_main:
            print(f"resumed from {resume_path} (epoch {start_epoch})", file=sys.stderr)
    if info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, output_dir / CONFIG_NAME)
    writer = None
    if info.is_main and cfg.train.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=global_step)
    model = method
    if info.world_size > 1:
        model = DistributedDataParallel(
            method, device_ids=[info.local_rank] if on_gpu else None, broadcast_buffers=False
        )
        broadcast_buffers_(method)  # one bank/queue for all ranks from the start
    image_size = cfg.data.image_size or source.image_size
    meta = checkpoint_meta(cfg, method, source, image_size)
    last_epoch = cfg.optim.epochs
    stop_epoch = min(last_epoch, cfg.train.stop_after_epoch or last_epoch)
    checkpoint_path = resume_path

    try:
        for epoch in range(start_epoch, stop_epoch):
            seed_everything(epoch_seed(cfg.seed, epoch + 1, info.rank))
            loader = train_loader(train_set, batch_per_rank, epoch, cfg, info)
            method.train()
            progress = tqdm(
                total=steps_per_epoch,
                desc=f"epoch {epoch + 1}/{last_epoch}",
                disable=not (info.is_main and cfg.train.progress),
                file=sys.stderr,
                dynamic_ncols=True,
                leave=False,
            )
            loss_sum, images, started = 0.0, 0, time.perf_counter()
            for step, (views, _, indices) in enumerate(loader):
                sampler.set_epoch(epoch + step / steps_per_epoch)
                views = [
                    v.to(info.device, non_blocking=True, memory_format=memory_format) for v in views
                ]
                with autocast():
                    loss, stats = model(views, indices.to(info.device), sampler)
                negatives_seen = stats.pop("monitor")
                if step % cfg.train.log_every_steps == 0:  # a sample of steps: it costs a gather
                    false_negatives.update(negatives_seen)
                if not torch.isfinite(loss):
                    raise PretrainError(
                        f"loss became {loss.item()} at epoch {epoch + 1} step {step + 1} "
                        f"(lr {scheduler.get_last_lr()[0]:.3g}); lower optim.lr or add "
                        f"optim.warmup_epochs; checkpoints so far are kept in {output_dir}"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                global_step += 1
                loss_sum += loss.item()
                images += cfg.optim.batch_size
                throughput = images / max(time.perf_counter() - started, 1e-9)
                if global_step % cfg.train.log_every_steps == 0 or step + 1 == steps_per_epoch:
                    progress.set_postfix(
                        loss=f"{loss.item():.3f}",
                        img_s=f"{throughput:.0f}",
                        lr=f"{scheduler.get_last_lr()[0]:.3g}",
                    )
                    if writer is not None:
                        write_step_scalars(
                            writer,
                            global_step,
                            loss.item(),
                            scheduler.get_last_lr()[0],
                            throughput,
                            stats,
                            sampler.stats(),
                        )
                progress.update(1)
            progress.close()
            epoch_done = epoch + 1
            metrics = {
                "epoch": epoch_done,
                "global_step": global_step,
                "loss": all_reduce_mean(loss_sum / max(steps_per_epoch, 1)),
                "images_per_second": images / max(time.perf_counter() - started, 1e-9),
                "knn_top1": metrics.get("knn_top1"),
                "negatives_per_anchor": stats["negatives_per_anchor"],
                **false_negatives.epoch_stats(),
                **sampler.stats(),
            }
            if writer is not None:
                for name in ("false_negative_share", "false_negative_weight_share"):
                    if name in metrics:
                        writer.add_scalar(f"monitor/{name}", metrics[name], global_step)
            monitored = due(epoch_done, cfg.knn.every_epochs, last_epoch)
            if monitored and info.is_main:
                # rank 0 alone embeds the monitor sets; the others wait at the barrier below
                metrics["knn_top1"] = knn_monitor(
                    method,
                    monitor_train,
                    monitor_test,
                    source.num_classes,
                    cfg,
                    info.device,
                    autocast,
                )
                if writer is not None:
                    writer.add_scalar("knn/top1", metrics["knn_top1"], global_step)
            barrier()
            if info.is_main:
                knn_text = f" knn_top1 {metrics['knn_top1']:.4f}" if monitored else ""
                print(
                    f"epoch {epoch_done}/{last_epoch} loss {metrics['loss']:.4f} "
                    f"{metrics['images_per_second']:.0f} img/s{knn_text}",
                    file=sys.stderr,
                )
            if due(epoch_done, cfg.checkpoint.every_epochs, last_epoch) or epoch_done == stop_epoch:
                if info.is_main:
                    state = training_state(
                        meta, method, optimizer, scheduler, cfg, epoch_done, global_step, metrics
                    )
                    checkpoint_path = ckpt.save_checkpoint(state, output_dir, epoch_done)
                barrier()
    finally:
        if writer is not None:
            writer.close()
    result = {
        **metrics,
        "epoch": metrics.get("epoch", start_epoch),
        "global_step": global_step,
        "finished": metrics.get("epoch", start_epoch) >= last_epoch,
        "checkpoint": str(checkpoint_path) if checkpoint_path else None,
        "output_dir": str(output_dir),
        # per rank: equal digests across ranks show the replicas (weights, bank, queue) agree
        "rank": info.rank,
        "replicated_digest": replicated_state_digest(method),
    }
    if info.is_main:
        write_json_atomic(result, output_dir / METRICS_NAME)
    return result


__all__ = ["train", "load_pretrain_config", "ConfigError", "PretrainError"]
