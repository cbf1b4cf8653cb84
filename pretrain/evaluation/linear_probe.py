"""Linear evaluation of a frozen encoder.

The protocol: put every encoder in eval mode (batch-norm uses its running statistics, which
must not move), embed the train and test splits once, then fit a linear classifier on the
cached pooled features. Two solvers:

- `lbfgs` (default): full-batch L-BFGS on the multinomial logistic loss with an L2 penalty
  chosen on a held-out 10% of the *train* split (never on the test split), then refit on all of
  train. Deterministic and fast for small feature sets (60k x 128 in seconds).
- `sgd`: mini-batch SGD with momentum and a cosine learning-rate schedule, for feature sets
  too large to fit full-batch in memory.

Features are standardised with train statistics before either solver, so one penalty grid
suits encoders whose feature scales differ by orders of magnitude.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms

from pretrain import data
from pretrain.atomic_write import write_json_atomic
from pretrain.backbones import build_backbone
from pretrain.checkpoint import load_checkpoint
from pretrain.config import Config, parse_override, set_dotted, to_config, validate
from pretrain.errors import PretrainError
from pretrain.evaluation import knn


class EvalError(PretrainError):
    """Evaluation cannot proceed (bad checkpoint, empty split, encoder changed under us)."""


@dataclass
class LinearEvalSettings:
    solver: str = "lbfgs"
    weight_decays: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    validation_fraction: float = 0.1
    lbfgs_max_iter: int = 200
    sgd_epochs: int = 30
    sgd_lr: float = 0.1
    sgd_batch_size: int = 256
    sgd_momentum: float = 0.9
    seed: int = 0
    topk: Sequence[int] = field(default=(1, 5))


@dataclass
class LinearProbe:
    """A linear classifier over standardised features: logits = W (x - mean) / std + b."""

    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    linear: nn.Linear
    weight_decay: float

    @torch.no_grad()
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features - self.feature_mean) / self.feature_std)


# ---------------------------------------------------------------- frozen encoders


def snapshot_state(modules: Iterable[nn.Module]) -> list[dict[str, torch.Tensor]]:
    """Detached copies of every parameter and buffer (BN running stats and counters included)."""
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def assert_unchanged(modules: Sequence[nn.Module], snapshot: list[dict[str, torch.Tensor]]) -> None:
    """Raise EvalError naming the first tensors that differ bitwise from the snapshot."""
    changed = [
        name
        for module, before in zip(modules, snapshot, strict=True)
        for name, tensor in module.state_dict().items()
        if not torch.equal(tensor, before[name])
    ]
    if changed:
        raise EvalError(
            f"the frozen encoder changed during evaluation ({', '.join(changed[:3])}"
            f"{', ...' if len(changed) > 3 else ''}): batch-norm must run in eval mode"
        )


def extract_frozen_features(
    embed: Callable[[torch.Tensor], torch.Tensor],
    encoders: Sequence[nn.Module],
    batches: Iterable,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached features of `batches` ((images, labels, ...) tuples) with `encoders` frozen.

    `embed` maps an image batch to pooled features using `encoders` (one encoder for most
    methods; CMC concatenates its L and ab encoders). The encoders are switched to eval mode
    for the pass, restored afterwards, and verified bitwise unchanged.
    """
    was_training = [m.training for m in encoders]
    snapshot = snapshot_state(encoders)
    for module in encoders:
        module.eval()
    try:
        features, labels = knn.extract_features(embed, batches, device)
    finally:
        for module, mode in zip(encoders, was_training):
            module.train(mode)
    assert_unchanged(encoders, snapshot)
    if len(labels) == 0:
        raise EvalError("the split is empty: no images to embed; check the dataset and limits")
    return features.flatten(1), labels


# ---------------------------------------------------------------- linear classifier


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> dict:
    """Fraction of rows whose label is among the k highest logits, for each k (capped at C)."""
    max_k = min(max(ks), logits.shape[1])
    top = logits.topk(max_k, dim=1).indices
    hits = top == labels[:, None]
    return {f"top{k}": hits[:, : min(k, max_k)].any(dim=1).float().mean().item() for k in ks}


def standardisation(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = features.mean(dim=0)
    # Constant features (dead channels are common in narrow nets) would divide by zero.
    std = features.std(dim=0).clamp_min(1e-6)
    return mean, std


def fit_lbfgs(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int
) -> nn.Linear:
    """Full-batch multinomial logistic regression with an L2 penalty on the weights."""
    linear = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(
        linear.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(x), y) + 0.5 * weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return linear


def fit_sgd(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    settings: LinearEvalSettings,
) -> nn.Linear:
    """Mini-batch SGD with momentum; the learning rate follows a cosine from `sgd_lr` to 0."""
    generator = torch.Generator().manual_seed(settings.seed)
    linear = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.SGD(
        linear.parameters(),
        lr=settings.sgd_lr,
        momentum=settings.sgd_momentum,
        weight_decay=weight_decay,
    )
    steps_per_epoch = math.ceil(len(x) / settings.sgd_batch_size)
    total_steps = settings.sgd_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    for _ in range(settings.sgd_epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), settings.sgd_batch_size):
            batch = order[start : start + settings.sgd_batch_size]
            optimizer.zero_grad()
            F.cross_entropy(linear(x[batch]), y[batch]).backward()
            optimizer.step()
            scheduler.step()
    return linear


def fit_classifier(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, settings
) -> nn.Linear:
    if settings.solver == "lbfgs":
        return fit_lbfgs(x, y, num_classes, weight_decay, settings.lbfgs_max_iter)
    if settings.solver == "sgd":
        return fit_sgd(x, y, num_classes, weight_decay, settings)
    raise EvalError(f"unknown linear solver {settings.solver!r}: use 'lbfgs' or 'sgd'")


def holdout_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(n * fraction)))
    return order[n_val:], order[:n_val]


def select_weight_decay(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, settings: LinearEvalSettings
) -> tuple[float, dict[float, float]]:
    """Pick the penalty with the best top-1 on a held-out part of train (ties: the smaller)."""
    if len(settings.weight_decays) == 1:
        return float(settings.weight_decays[0]), {}
    fit_idx, val_idx = holdout_split(len(x), settings.validation_fraction, settings.seed)
    mean, std = standardisation(x[fit_idx])
    x_fit, x_val = (x[fit_idx] - mean) / std, (x[val_idx] - mean) / std
    scores = {}
    for wd in sorted(settings.weight_decays):
        linear = fit_classifier(x_fit, y[fit_idx], num_classes, wd, settings)
        with torch.no_grad():
            scores[wd] = topk_accuracy(linear(x_val), y[val_idx], (1,))["top1"]
    best = max(scores.values())
    return min(wd for wd, score in scores.items() if score == best), scores


def train_linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    num_classes: int,
    settings: LinearEvalSettings | None = None,
) -> tuple[LinearProbe, dict[float, float]]:
    """Fit the probe on cached train features; returns it and the validation score per penalty."""
    settings = settings or LinearEvalSettings()
    if len(train_x) < 2:
        raise EvalError(f"the train split has {len(train_x)} image(s): a linear probe needs more")
    torch.manual_seed(settings.seed)
    weight_decay, validation = select_weight_decay(train_x, train_y, num_classes, settings)
    mean, std = standardisation(train_x)
    linear = fit_classifier((train_x - mean) / std, train_y, num_classes, weight_decay, settings)
    return LinearProbe(mean, std, linear, weight_decay), validation


def linear_probe_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    settings: LinearEvalSettings | None = None,
) -> dict:
    """Train on train features, report top-k on test plus the chosen penalty."""
    settings = settings or LinearEvalSettings()
    if len(test_x) == 0:
        raise EvalError("the test split is empty: nothing to evaluate the probe on")
    probe, validation = train_linear_probe(train_x, train_y, num_classes, settings)
    result = topk_accuracy(probe.logits(test_x), test_y, settings.topk)
    result["weight_decay"] = probe.weight_decay
    result["validation_top1"] = {str(k): v for k, v in validation.items()}
    return result


# ---------------------------------------------------------------- features of a split


def evaluate_features(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    settings: LinearEvalSettings,
    knn_ks: Sequence[int] = (20, 200),
    knn_temperature: float = 0.07,
) -> dict:
    """Linear probe and weighted kNN on the same cached features (flat metric names)."""
    (train_x, train_y), (test_x, test_y) = train, test
    linear = linear_probe_accuracy(train_x, train_y, test_x, test_y, num_classes, settings)
    metrics = {f"linear_{k}": v for k, v in linear.items()}
    for k in knn_ks:
        metrics[f"knn{k}_top1"] = knn.knn_accuracy(
            train_x, train_y, test_x, test_y, num_classes, k=k, temperature=knn_temperature
        )
    return metrics


# ---------------------------------------------------------------- checkpoints

# `key=value` options of tools/linear_eval.py (validated: a typo names the nearest key).
EVAL_DEFAULTS = {
    "encoder": None,  # None: the checkpoint's default (CMC: L and ab concatenated)
    "solver": "lbfgs",
    "weight_decays": [1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
    "validation_fraction": 0.1,
    "lbfgs_max_iter": 200,
    "sgd_epochs": 30,
    "sgd_lr": 0.1,
    "sgd_batch_size": 256,
    "sgd_momentum": 0.9,
    "knn_k": [20, 200],
    "knn_temperature": 0.07,
    "train_limit": None,  # a fixed random subset of the train split (None: all of it)
    "test_limit": None,
    "batch_size": 512,
    "num_workers": 0,
    "device": "cpu",
    "seed": 0,
    "data_root": None,  # where the dataset lives, if not where pretraining found it
    "output": None,  # default: eval.json beside the checkpoint
}


def eval_options(overrides: Sequence[str] = ()) -> Config:
    """EVAL_DEFAULTS with `key=value` overrides applied and checked."""
    values: dict = {}
    for text in overrides:
        keys, value = parse_override(text)
        set_dotted(values, keys, value)
    return to_config(validate(values, EVAL_DEFAULTS, EVAL_DEFAULTS))


def probe_settings(options: Config) -> LinearEvalSettings:
    return LinearEvalSettings(
        solver=options.solver,
        weight_decays=tuple(float(w) for w in options.weight_decays),
        validation_fraction=options.validation_fraction,
        lbfgs_max_iter=options.lbfgs_max_iter,
        sgd_epochs=options.sgd_epochs,
        sgd_lr=options.sgd_lr,
        sgd_batch_size=options.sgd_batch_size,
        sgd_momentum=options.sgd_momentum,
        seed=options.seed,
    )


def encoder_names(checkpoint: dict, requested: str | None) -> list[str]:
    """Which encoders embed an image: the requested one, CMC's pair, or the default."""
    available = list(checkpoint["encoders"])
    if requested is not None:
        if requested not in available:
            raise EvalError(
                f"encoder '{requested}' is not in the checkpoint; choose one of {available}"
            )
        return [requested]
    if {"l", "ab"} <= set(available):
        return ["l", "ab"]
    default = checkpoint["meta"].get("default_encoder")
    if default not in available:
        raise EvalError(
            f"checkpoint names default encoder {default!r} but holds {available}; pass encoder=NAME"
        )
    return [default]


def rebuild_encoder(meta: dict, name: str, state: dict) -> nn.Module:
    """The backbone described by `meta`, with `state` loaded strictly (a mismatch is an error)."""
    conv1 = state.get("conv1.weight")
    if conv1 is None or conv1.dim() != 4:
        raise EvalError(
            f"encoder '{name}' has no conv1.weight: not a torchvision-named ResNet state dict"
        )
    backbone = build_backbone(meta["arch"], meta["width"], meta["stem"], int(conv1.shape[1]))
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0][:160]
        raise EvalError(
            f"encoder '{name}' does not match meta (arch={meta['arch']}, width={meta['width']}, "
            f"stem={meta['stem']}): {first}"
        ) from None
    return backbone


def make_embed(names: Sequence[str], encoders: Sequence[nn.Module]):
    """Image batch -> pooled features; CMC's L encoder sees channel 0, ab channels 1-2."""
    if list(names) == ["l", "ab"]:
        l_encoder, ab_encoder = encoders
        return lambda x: torch.cat([l_encoder(x[:, :1]), ab_encoder(x[:, 1:])], dim=1)
    (encoder,) = encoders
    if names[0] in ("l", "ab"):
        channels = slice(0, 1) if names[0] == "l" else slice(1, 3)
        return lambda x: encoder(x[:, channels])
    return encoder


def split_loader(dataset, transform, limit, seed, options):
    indices = data.subset_indices(len(dataset), limit, seed)
    subset = data.with_transform(dataset, transform, indices)
    return torch.utils.data.DataLoader(
        subset, batch_size=options.batch_size, shuffle=False, num_workers=options.num_workers
    )


def checkpoint_source(checkpoint: dict, path: Path, data_root) -> data.Source:
    """The dataset the checkpoint was pretrained on, from its resolved config."""
    config = checkpoint.get("config")
    if not isinstance(config, dict) or "data" not in config:
        raise EvalError(
            f"{path} holds no resolved config with a 'data' section; it was not written by "
            "pretrain/run.py, so the evaluation dataset is unknown"
        )
    data_cfg = to_config(dict(config["data"]))
    if data_root is not None:
        data_cfg.root = data_root
    return data.load_source(data_cfg)


def evaluate_checkpoint(path: str | Path, overrides: Sequence[str] = (), log=print) -> dict:
    """Linear probe + kNN of a pretraining checkpoint; writes eval.json (see module doc)."""
    options = eval_options(overrides)
    path = Path(path)
    if not path.is_file():
        raise EvalError(
            f"checkpoint not found: {path}; pass a .pth written by pretrain/run.py "
            "(e.g. runs/NAME/checkpoints/last.pth)"
        )
    checkpoint = load_checkpoint(path)
    meta = checkpoint["meta"]
    names = encoder_names(checkpoint, options.encoder)
    encoders = [rebuild_encoder(meta, n, checkpoint["encoders"][n]) for n in names]
    device = torch.device(options.device)
    for encoder in encoders:
        encoder.to(device)
    source = checkpoint_source(checkpoint, path, options.data_root)
    transform = data.eval_transform(
        meta["method"], meta["image_size"], meta["pixel_mean"], meta["pixel_std"]
    )
    embed = make_embed(names, encoders)
    splits = {}
    for split, dataset, limit in (
        ("train", source.train, options.train_limit),
        ("test", source.test, options.test_limit),
    ):
        loader = split_loader(dataset, transform, limit, options.seed, options)
        splits[split] = extract_frozen_features(embed, encoders, loader, device)
        log(f"embedded {len(splits[split][1])} {split} images with {'+'.join(names)}")
    metrics = evaluate_features(
        splits["train"],
        splits["test"],
        source.num_classes,
        probe_settings(options),
        options.knn_k,
        options.knn_temperature,
    )
    result = {
        "checkpoint": str(path.resolve()),
        "epoch": checkpoint["epoch"],
        "global_step": checkpoint["global_step"],
        "meta": meta,
        "encoders": names,
        "feature_dim": int(splits["train"][0].shape[1]),
        "num_train": len(splits["train"][1]),
        "num_test": len(splits["test"][1]),
        "frozen_check": "passed: every encoder parameter and BN buffer bitwise unchanged",
        "options": options.to_dict(),
        "metrics": metrics,
    }
    out = Path(options.output) if options.output else path.parent / "eval.json"
    write_json_atomic(out, result)
    result["output"] = str(out)
    return result


def raw_pixel_floor(source: data.Source, options: Config) -> dict:
    """The same protocol on raw pixels in [0, 1]: what any encoder has to beat."""
    # Served as RGB; a grayscale source is reduced back to one channel so its floor is the
    # plain 784-pixel vector (repeating it 3 times would not change cosine or the probe).
    gray = [transforms.Grayscale(1)] if source.channels == 1 else []
    to_pixels = transforms.Compose([*gray, transforms.ToTensor()])
    splits = []
    for dataset, limit in ((source.train, options.train_limit), (source.test, options.test_limit)):
        loader = split_loader(dataset, to_pixels, limit, options.seed, options)
        features, labels = knn.extract_features(lambda x: x.flatten(1), loader)
        if len(labels) == 0:
            raise EvalError("the split is empty: no images for the raw-pixel floor")
        splits.append((features, labels))
    return evaluate_features(
        splits[0],
        splits[1],
        source.num_classes,
        probe_settings(options),
        options.knn_k,
        options.knn_temperature,
    )
