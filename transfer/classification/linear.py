"""Many-shot linear evaluation as Ericsson et al. (``linusericsson/ssl-transfer`` linear.py):
multinomial logistic regression by L-BFGS on the frozen features as they are (no
standardisation), for every C of a log grid, warm-started from the previous C in the grid's order
(their scikit-learn ``LogisticRegression(warm_start=True)``, C from large to small); the C with
the best validation score wins (the first, i.e. the larger C, on ties); the same classifier is
then refit with it on train + val and scored on test.

The objective is scikit-learn's: mean cross-entropy + ||W||^2 / (2 C n) with an unpenalised
intercept, minimised by L-BFGS with a strong-Wolfe line search for at most ``max_iter``
iterations (scikit-learn's default 100, which they ran with) or until the largest gradient entry
is below 1e-4 (scikit-learn's ``tol``). It runs in torch, so on the GPU when there is one; on
one CPU core it takes as long as scikit-learn's solver (7.1 s for the 45-point grid at the glyphs
domain's shape, benchmarks/classification.py).
"""

import numpy as np
import torch
import torch.nn.functional as F

GRADIENT_TOLERANCE = 1e-4
HISTORY = 10  # scipy's (and so scikit-learn's) default number of L-BFGS correction pairs


class LogisticRegression:
    """Multinomial logistic regression whose weights persist between fits (warm starts)."""

    def __init__(self, dim, num_classes, max_iter, device="cpu"):
        self.weight = torch.zeros(dim, num_classes, device=device, dtype=torch.float32)
        self.bias = torch.zeros(num_classes, device=device, dtype=torch.float32)
        self.max_iter = max_iter

    def objective(self, features, labels, c):
        logits = features @ self.weight + self.bias
        penalty = self.weight.pow(2).sum() / (2.0 * c * len(labels))
        return F.cross_entropy(logits, labels) + penalty

    def fit(self, features, labels, c):
        self.weight.requires_grad_(True)
        self.bias.requires_grad_(True)
        optimizer = torch.optim.LBFGS(
            [self.weight, self.bias],
            lr=1.0,
            max_iter=self.max_iter,
            tolerance_grad=GRADIENT_TOLERANCE,
            tolerance_change=1e-12,
            history_size=HISTORY,
            line_search_fn="strong_wolfe",
        )

        def closure():
            optimizer.zero_grad()
            loss = self.objective(features, labels, c)
            loss.backward()
            return loss

        optimizer.step(closure)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)
        return self

    @torch.no_grad()
    def predict(self, features):
        return (features @ self.weight + self.bias).argmax(dim=1)


def c_grid(settings):
    """C values from ``c_max`` down to ``c_min`` (Ericsson: 1 / logspace(-6, 5, 45))."""
    return np.logspace(
        np.log10(settings["c_max"]), np.log10(settings["c_min"]), settings["c_values"]
    )


def top1(predicted, labels):
    return 100.0 * float(np.mean(predicted == labels))


def mean_per_class(predicted, labels):
    """The mean over classes of each class's recall (classes absent from ``labels`` skipped)."""
    recalls = [np.mean(predicted[labels == c] == c) for c in np.unique(labels)]
    return 100.0 * float(np.mean(recalls))


SCORES = {"top1": top1, "mean_per_class": mean_per_class}


def as_tensors(split, device):
    features, labels = split
    return (
        torch.as_tensor(np.asarray(features), dtype=torch.float32, device=device),
        torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device),
    )


def select_c(classifier, train, val, settings):
    """The grid's validation scores and the chosen C."""
    score = SCORES[settings["metric"]]
    scores, best_c, best = [], None, -np.inf
    for c in c_grid(settings):
        classifier.fit(*train, float(c))
        scores.append(score(classifier.predict(val[0]).cpu().numpy(), val[1].cpu().numpy()))
        if scores[-1] > best:  # strictly better: ties keep the larger C, as Ericsson et al.
            best_c, best = float(c), scores[-1]
    return best_c, scores


def evaluate_linear(train, val, test, settings, device="cpu"):
    """``train``, ``val``, ``test``: (features [n, d], labels [n]), labels 0..K-1. Returns the
    result group: test top-1 and mean per-class accuracy (%), the chosen C and the validation
    curve."""
    train, val, test = (as_tensors(split, device) for split in (train, val, test))
    num_classes = int(max(int(split[1].max()) for split in (train, val, test))) + 1
    classifier = LogisticRegression(train[0].shape[1], num_classes, settings["max_iter"], device)
    c, scores = select_c(classifier, train, val, settings)
    classifier.fit(torch.cat([train[0], val[0]]), torch.cat([train[1], val[1]]), c)
    predicted, truth = classifier.predict(test[0]).cpu().numpy(), test[1].cpu().numpy()
    return {
        "top1": top1(predicted, truth),
        "mean_per_class": mean_per_class(predicted, truth),
        "headline": [settings["metric"]],
        "C": c,
        "validation": {
            "metric": settings["metric"],
            "C": [float(v) for v in c_grid(settings)],
            "score": scores,
        },
        "images": {"train": len(train[1]), "val": len(val[1]), "test": len(truth)},
    }
