"""The pretraining loop: ``train(cfg) -> dict`` (see docs/design.md, "Pretraining run").

Determinism: every epoch reseeds torch/numpy/random from ``(seed, epoch, rank)`` and builds its
data order from the same seed, so a run resumed at an epoch boundary replays exactly what an
uninterrupted run does (same weights on CPU). RNG states are still saved for inspection.
"""

import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from pretrain import checkpoint as ckpt
from pretrain.atomic_write import remove_stale_temp_files, write_json_atomic
from pretrain.backbones import backbone_state_dict
from pretrain.config import Config, load_config, save_config, to_config, validate
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
from pretrain.evaluation.knn import extract_features, knn_accuracy
from pretrain.gpu_augment import DeviceViews, ToCanvas, canvas_size, check_augment_on
from pretrain.loading import (
    EpochItems,
    EpochSampler,
    item_bytes,
    prefetch_factor,
    shared_memory_budget,
)
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
    transform = MultiView(train_aug, cls.num_views)
    if cfg.data.augment_on == "gpu":  # the loader only decodes; DeviceViews augments
        transform = ToCanvas(canvas_size(source.name, source.image_size, size))
    train = with_transform(source.train, transform, keep)
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
    """The training loader, at ``epoch``; later epochs: ``loader.sampler.set_epoch(e)``.

    Its workers live across epochs (``pretrain.loading``: per-item seeds keep runs
    reproducible) and prefetch as many batches as half the free /dev/shm holds (at most 4).
    """
    generator = torch.Generator()
    if info.world_size > 1:
        order = DistributedSampler(
            dataset, info.world_size, info.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
        reseed = order.set_epoch
    else:
        order = RandomSampler(dataset, generator=generator)

        def reseed(epoch):
            generator.manual_seed(epoch_seed(cfg.seed, epoch, 0))

    sampler = EpochSampler(order, reseed)
    sampler.set_epoch(epoch)
    items = EpochItems(dataset, cfg.seed)
    workers = cfg.data.num_workers
    prefetch = None
    if workers > 0:
        batch_bytes = item_bytes(items[(0, epoch)][0]) * batch_per_rank
        prefetch = prefetch_factor(batch_bytes, workers, shared_memory_budget())
    return DataLoader(
        items,
        batch_size=batch_per_rank,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        collate_fn=collate_views,
        pin_memory=info.device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=prefetch,
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


# ---- one step -------------------------------------------------------------------------------


def views_on_device(views, device, memory_format):
    """A loader batch's views as device tensors (where on-device augmentation would start)."""
    return [v.to(device, non_blocking=True, memory_format=memory_format) for v in views]


def train_step(model, views, indices, sampler, optimizer, scheduler, autocast):
    """One optimisation step; returns the detached loss and the method's stats.

    No host sync: the loss stays on the device, and the caller checks it only every
    ``train.log_every_steps`` steps (a sync per step would stall the GPU's queue).
    """
    with autocast():
        loss, stats = model(views, indices, sampler)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach(), stats


def device_step(run, views, indices):
    """A loader batch onto the device, then ``train_step``: the loop's whole work per batch."""
    views = run.views_on_device(views, run.info.device, run.memory_format)
    indices = indices.to(run.info.device, non_blocking=True)  # pinned: no wait for the queue
    return train_step(
        run.model, views, indices, run.sampler, run.optimizer, run.scheduler, run.autocast
    )


def numeric_scalars(stats):
    """Every number (Python or 0-d tensor) among a method's stats; no name is special."""
    found = {}
    for name, value in stats.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            found[name] = value.detach().float().reshape(())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[name] = float(value)
    return found


class ScalarSums:
    """Running sums of the loss and of the stats' scalars, on the device until ``means``."""

    def __init__(self):
        self.sums, self.steps = {}, 0

    def add(self, scalars):
        self.steps += 1
        for name, value in scalars.items():
            self.sums[name] = self.sums.get(name, 0.0) + value

    def means(self):
        """Host floats (one read per name), then start over."""
        means = {name: float(total) / max(self.steps, 1) for name, total in self.sums.items()}
        self.sums, self.steps = {}, 0
        return means


def check_finite(loss, epoch, step, lr, output_dir):
    if not np.isfinite(loss):
        raise PretrainError(
            f"loss became {loss} at epoch {epoch + 1} by step {step + 1} (lr {lr:.3g}); lower "
            f"optim.lr or add optim.warmup_epochs; checkpoints so far are kept in {output_dir}"
        )


# ---- build --------------------------------------------------------------------------------


class Training:
    """Everything a run builds once, before its first epoch (see ``build_training``)."""

    def __init__(self, **parts):
        self.__dict__.update(parts)

    def autocast(self):
        if self.use_amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()


def tune_cudnn(device):
    """cuDNN picks its fastest convolution per shape (every step has the same shapes: the
    loader drops the last partial batch); not when deterministic algorithms are asked for,
    as the device check's resume comparison does (autotuning may pick differently per run)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not torch.are_deterministic_algorithms_enabled()


def build_optimization(cfg, method, steps_per_epoch):
    optimizer = torch.optim.SGD(
        [p for p in method.parameters() if p.requires_grad],
        lr=cfg.optim.lr,
        momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
    )
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
    return optimizer, scheduler


def build_training(cfg):
    """Config checks first, then data, method, optimizer: nothing is written here."""
    sampler = NegativeSampler.from_config(cfg.sampler, cfg.optim.epochs)
    check_augment_on(cfg.data.augment_on, cfg.method)
    info = init_distributed(cfg.device)
    seed_everything(epoch_seed(cfg.seed, 0, info.rank))
    source = load_source(cfg.data)
    train_set, monitor_train, monitor_test = build_datasets(cfg, cfg.method, source)
    batch_per_rank = check_batch(cfg, len(train_set), info.world_size)
    method_class(cfg.method).check_config(cfg, len(train_set))
    method = build_method(
        cfg, len(train_set), source.channels, source.name, train_set.labels, source.num_classes
    )
    sampler.check_pool(*method.negative_pool())
    on_gpu = info.device.type == "cuda"
    tune_cudnn(info.device)
    if info.world_size > 1 and method.sync_batchnorm and on_gpu:  # SyncBN is GPU-only
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    method.to(info.device)
    channels_last = on_gpu and cfg.train.channels_last
    if channels_last:
        method.to(memory_format=torch.channels_last)
    steps_per_epoch = len(train_set) // cfg.optim.batch_size
    optimizer, scheduler = build_optimization(cfg, method, steps_per_epoch)
    size = cfg.data.image_size or source.image_size
    device_views = None
    if cfg.data.augment_on == "gpu":
        num_views = method_class(cfg.method).num_views
        device_views = DeviceViews(
            cfg.method, size, source.mean, source.std, cfg.data.crop_min_scale, num_views
        )
    return Training(
        cfg=cfg,
        info=info,
        source=source,
        sampler=sampler,
        method=method,
        model=method,
        train_set=train_set,
        monitor_train=monitor_train,
        monitor_test=monitor_test,
        batch_per_rank=batch_per_rank,
        loader=None,
        steps_per_epoch=steps_per_epoch,
        optimizer=optimizer,
        scheduler=scheduler,
        memory_format=torch.channels_last if channels_last else torch.preserve_format,
        views_on_device=device_views or views_on_device,
        use_amp=on_gpu and cfg.train.amp,
        # labels for the false-negative monitor (a contrastive method never sees them)
        false_negatives=FalseNegativeMonitor(train_set.labels.to(info.device)),
        meta=checkpoint_meta(cfg, method, source, cfg.data.image_size or source.image_size),
    )


def wrap_distributed(run):
    if run.info.world_size > 1:
        on_gpu = run.info.device.type == "cuda"
        run.model = DistributedDataParallel(
            run.method,
            device_ids=[run.info.device.index] if on_gpu else None,
            broadcast_buffers=False,
        )
        broadcast_buffers_(run.method)  # one bank/queue for all ranks from the start


# ---- one epoch ----------------------------------------------------------------------------


def log_window(run, writer, window, epoch, step, global_step, throughput, progress):
    """Read the last window's sums (the only host sync of the loop), check the loss, log."""
    means = window.means()
    lr = run.scheduler.get_last_lr()[0]
    check_finite(means["loss"], epoch, step, lr, run.cfg.output_dir)
    progress.set_postfix(loss=f"{means['loss']:.3f}", img_s=f"{throughput:.0f}", lr=f"{lr:.3g}")
    if writer is not None:
        scalars = {**means, "lr": lr, "images_per_second": throughput, **run.sampler.stats()}
        for name, value in scalars.items():
            writer.add_scalar(f"train/{name}", value, global_step)
    return means


def run_epoch(run, epoch, global_step, writer):
    """One pass over the data; returns the epoch's mean scalars and the new global step."""
    cfg, info = run.cfg, run.info
    seed_everything(epoch_seed(cfg.seed, epoch + 1, info.rank))
    if run.loader is None:  # built once: its workers live across epochs
        run.loader = train_loader(run.train_set, run.batch_per_rank, epoch, cfg, info)
    run.loader.sampler.set_epoch(epoch)
    run.method.train()
    progress = tqdm(
        total=run.steps_per_epoch,
        desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
        disable=not (info.is_main and cfg.train.progress),
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
    )
    window, epoch_sums = ScalarSums(), {}
    images, started = 0, time.perf_counter()
    for step, (views, _, indices) in enumerate(run.loader):
        if step == 0:  # img/s from the first batch on: worker start-up is not training
            images, started = 0, time.perf_counter()
        run.sampler.set_epoch(epoch + step / run.steps_per_epoch)
        loss, stats = device_step(run, views, indices)
        negatives_seen = stats.pop("monitor")
        if step % cfg.train.log_every_steps == 0:  # a sample of steps: it costs a gather
            run.false_negatives.update(negatives_seen)
        window.add({"loss": loss, **numeric_scalars(stats)})
        global_step += 1
        images += cfg.optim.batch_size
        if global_step % cfg.train.log_every_steps == 0 or step + 1 == run.steps_per_epoch:
            steps = window.steps
            throughput = images / max(time.perf_counter() - started, 1e-9)
            means = log_window(run, writer, window, epoch, step, global_step, throughput, progress)
            for name, value in means.items():
                epoch_sums[name] = epoch_sums.get(name, 0.0) + value * steps
        progress.update(1)
    progress.close()
    epoch_means = {name: total / max(run.steps_per_epoch, 1) for name, total in epoch_sums.items()}
    epoch_means["loss"] = all_reduce_mean(epoch_means.get("loss", float("nan")))
    epoch_means["images_per_second"] = images / max(time.perf_counter() - started, 1e-9)
    return epoch_means, global_step


# ---- monitor and save ---------------------------------------------------------------------


def monitor(run, epoch_done, metrics, writer, global_step):
    """kNN top-1 when due (rank 0 embeds; the others wait at the barrier) and the epoch line."""
    cfg, info = run.cfg, run.info
    if writer is not None:
        for name in ("false_negative_share", "false_negative_weight_share"):
            if name in metrics:
                writer.add_scalar(f"monitor/{name}", metrics[name], global_step)
    monitored = due(epoch_done, cfg.knn.every_epochs, cfg.optim.epochs)
    if monitored and info.is_main:
        metrics["knn_top1"] = knn_monitor(
            run.method,
            run.monitor_train,
            run.monitor_test,
            run.source.num_classes,
            cfg,
            info.device,
            run.autocast,
        )
        if writer is not None:
            writer.add_scalar("knn/top1", metrics["knn_top1"], global_step)
    barrier()
    if info.is_main:
        knn_text = f" knn_top1 {metrics['knn_top1']:.4f}" if monitored else ""
        print(
            f"epoch {epoch_done}/{cfg.optim.epochs} loss {metrics['loss']:.4f} "
            f"{metrics['images_per_second']:.0f} img/s{knn_text}",
            file=sys.stderr,
        )


def save(run, epoch_done, global_step, metrics, stop_epoch):
    """The epoch's checkpoint when due (rank 0 writes; all wait); returns its path or None."""
    if not (
        due(epoch_done, run.cfg.checkpoint.every_epochs, run.cfg.optim.epochs)
        or epoch_done == stop_epoch
    ):
        return None
    path = None
    if run.info.is_main:
        state = training_state(
            run.meta,
            run.method,
            run.optimizer,
            run.scheduler,
            run.cfg,
            epoch_done,
            global_step,
            metrics,
        )
        path = ckpt.save_checkpoint(state, Path(run.cfg.output_dir), epoch_done)
    barrier()
    return path


def final_metrics(run, metrics, start_epoch, global_step, checkpoint_path):
    return {
        **metrics,
        "epoch": metrics.get("epoch", start_epoch),
        "global_step": global_step,
        "finished": metrics.get("epoch", start_epoch) >= run.cfg.optim.epochs,
        "checkpoint": str(checkpoint_path) if checkpoint_path else None,
        "output_dir": str(run.cfg.output_dir),
        # per rank: equal digests across ranks show the replicas (weights, bank, queue) agree
        "rank": run.info.rank,
        "replicated_digest": replicated_state_digest(run.method),
    }


# ---- the loop ------------------------------------------------------------------------------


def start_output(run, global_step):
    """The run's folder: stale temp files of a killed write removed, config written, writer."""
    output_dir = Path(run.cfg.output_dir)
    if not run.info.is_main:
        return None
    output_dir.mkdir(parents=True, exist_ok=True)
    # a killed run's half-written files; only the main rank writes in these folders
    remove_stale_temp_files(output_dir, ckpt.checkpoint_dir(output_dir))
    save_config(run.cfg, output_dir / CONFIG_NAME)
    if not run.cfg.train.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(output_dir / "tensorboard"), purge_step=global_step)


def train(cfg):
    """Pretrain as ``cfg`` says; returns the final metrics (see docs/design.md).

    ``metrics.json`` is rewritten after every epoch; its ``history`` holds each epoch's mean of
    every scalar the method reports (e.g. negatives_per_anchor) and the monitors' shares.
    """
    cfg = as_config(cfg)
    method_class(cfg.method)  # an unknown method is named before any data is read
    run = build_training(cfg)
    start_epoch, global_step, metrics = 0, 0, {}
    resume_path, checkpoint = find_resume(cfg)
    if checkpoint is not None:
        start_epoch, global_step, metrics = restore(
            checkpoint, resume_path, run.method, run.optimizer, run.scheduler
        )
        if run.info.is_main:
            print(f"resumed from {resume_path} (epoch {start_epoch})", file=sys.stderr)
    writer = start_output(run, global_step)
    wrap_distributed(run)
    stop_epoch = min(cfg.optim.epochs, cfg.train.stop_after_epoch or cfg.optim.epochs)
    checkpoint_path = resume_path
    try:
        for epoch in range(start_epoch, stop_epoch):
            epoch_means, global_step = run_epoch(run, epoch, global_step, writer)
            epoch_done = epoch + 1
            scalars = {
                **epoch_means,
                **run.false_negatives.epoch_stats(),
                **run.sampler.stats(),
            }
            history = [*metrics.get("history", []), {"epoch": epoch_done, **scalars}]
            metrics = {
                "epoch": epoch_done,
                "global_step": global_step,
                "knn_top1": metrics.get("knn_top1"),
                **scalars,
                "history": history,
            }
            monitor(run, epoch_done, metrics, writer, global_step)
            history[-1]["knn_top1"] = metrics["knn_top1"]
            checkpoint_path = save(run, epoch_done, global_step, metrics, stop_epoch) or (
                checkpoint_path
            )
            if run.info.is_main:
                write_json_atomic(
                    Path(cfg.output_dir) / METRICS_NAME,
                    final_metrics(run, metrics, start_epoch, global_step, checkpoint_path),
                )
    finally:
        if writer is not None:
            writer.close()
    result = final_metrics(run, metrics, start_epoch, global_step, checkpoint_path)
    if run.info.is_main:
        write_json_atomic(Path(cfg.output_dir) / METRICS_NAME, result)
    return result
