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

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.errors import PretrainError


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


@torch.no_grad()
def extract_features(
    embed: Callable[[torch.Tensor], torch.Tensor],
    encoders: Sequence[nn.Module],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `embed` over (images, labels) batches with `encoders` frozen; return cached features.

    `embed` maps an image batch to pooled features using `encoders` (one encoder for most
    methods; CMC concatenates its L and ab encoders). The encoders are switched to eval mode
    for the pass, restored afterwards, and verified bitwise unchanged.
    """
    was_training = [m.training for m in encoders]
    snapshot = snapshot_state(encoders)
    for module in encoders:
        module.eval()
    features, labels = [], []
    try:
        for images, targets in batches:
            features.append(embed(images.to(device)).float().cpu())
            labels.append(targets.cpu())
    finally:
        for module, mode in zip(encoders, was_training):
            module.train(mode)
    assert_unchanged(encoders, snapshot)
    if not features:
        raise EvalError("the split is empty: no images to embed; check the dataset path/split")
    return torch.cat(features).flatten(1), torch.cat(labels).long()


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
