#!/usr/bin/env python
"""Per-step cost of the loss with negative selection: uniform vs ring vs the full-sort reference.

    python benchmarks/ring_selection.py [--preset full|smoke] [--devices auto|cpu|cuda|cpu,cuda]
        [--repeats N] [--threads N] [--upper 0.1] [--lower-ratio 0.1] [--json OUT.json]

Two shapes: ``moco`` (B anchors against one shared queue of K keys) and ``ir`` (B anchors, each
against its own K candidates drawn from a memory bank of N entries). For each, forward (with
autograd recording, as in training) and forward+backward, three variants compute InfoNCE:

- ``uniform``: all K negatives, through the project's ``sampled_contrast`` and uniform sampler;
- ``ring``: the project's ring sampler (``pretrain.samplers``) in the same code path;
- ``full_sort``: the original implementation's approach, rewritten here as the reference: sort
  every row of the B x K similarities to find the ranks, gather the ring, same loss.

The timed region starts from the embeddings and the candidates (an IR step's bank gather costs
the same in every variant and is left out). Before timing, ring and full_sort must agree on the
loss and the gradient, and uniform must equal full_sort over every rank; otherwise the run stops,
because comparing the cost of different losses would mean nothing. Repetitions are interleaved;
medians and their ratios come from one run.
"""

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pretrain.errors import PretrainError, one_line_errors
from pretrain.methods.base import sampled_contrast
from pretrain.samplers import NegativeSampler, ring_rank_range

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/timing.py
from timing import (  # noqa: E402
    finish_run,
    interleaved_times,
    machine_facts,
    median,
    resolve_devices,
)

VARIANTS = ("uniform", "ring", "full_sort")
# Issue 8's targets at MoCo shapes.
TARGET_RING_OVER_UNIFORM = 1.15
TARGET_SORT_OVER_RING = 3.0
# float32 logsumexp over 65k terms summed in different orders: ~1e-6 relative is expected.
LOSS_TOLERANCE = 1e-4
GRAD_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    candidates: int  # K negatives per anchor (MoCo: the queue, shared)
    dim: int
    temperature: float
    bank: int = 0  # IR: memory bank size N the candidates are drawn from; 0 = MoCo queue
    has_targets: bool = False  # issue 8's targets are stated for these shapes


PRESETS = {
    "full": {
        "shapes": (
            Shape("moco", batch=256, candidates=65536, dim=128, temperature=0.2, has_targets=True),
            Shape("ir", batch=256, candidates=4096, dim=128, temperature=0.07, bank=50000),
        ),
        "repeats": 11,
    },
    "smoke": {
        "shapes": (
            Shape("moco", batch=16, candidates=1024, dim=16, temperature=0.2),
            Shape("ir", batch=16, candidates=128, dim=16, temperature=0.07, bank=500),
        ),
        "repeats": 2,
    },
}


def make_inputs(shape, device, seed=0):
    """Unit ``anchor`` (B, d, requires grad), ``positive`` (B, d) and ``negatives``."""
    generator = torch.Generator().manual_seed(seed)

    def unit(*size):
        return F.normalize(torch.randn(*size, shape.dim, generator=generator), dim=-1)

    anchor = unit(shape.batch)
    # A positive close to its anchor, as after some training; keys elsewhere are random.
    positive = F.normalize(anchor + 0.5 * unit(shape.batch), dim=1)
    if shape.bank:
        bank = unit(shape.bank)
        # Distinct entries per anchor (the project draws with replacement): with no tied
        # similarities, every tie rule selects the same ring, so the check compares like
        # with like; the cost of selection does not depend on it.
        scores = torch.rand(shape.batch, shape.bank, generator=generator)
        negatives = bank[scores.topk(shape.candidates, dim=1).indices]
    else:
        negatives = unit(shape.candidates)
    anchor = anchor.to(device).requires_grad_(True)
    return anchor, positive.to(device), negatives.to(device)


def similarities(anchor, negatives):
    if negatives.dim() == 3:
        return torch.einsum("bd,bkd->bk", anchor, negatives)
    return anchor @ negatives.T


def full_sort_ring_loss(anchor, positive, negatives, start, stop, temperature):
    """The reference: a full sort of each row gives the ranks; InfoNCE over ranks [start, stop).

    Written independently of ``pretrain.losses`` so the agreement check means something.
    """
    positive_logit = (anchor * positive).sum(dim=1, keepdim=True) / temperature
    similarity = similarities(anchor, negatives)
    order = torch.sort(similarity.detach(), dim=1, descending=True).indices
    ring = similarity.gather(1, order[:, start:stop]) / temperature
    logits = torch.cat([positive_logit, ring], dim=1)
    return (torch.logsumexp(logits, dim=1) - positive_logit.squeeze(1)).mean()


def loss_functions(shape, sampler_options):
    """name -> ``f(anchor, positive, negatives) -> loss`` for the three variants."""
    uniform = NegativeSampler("uniform")
    ring = NegativeSampler("ring", **sampler_options)
    start, stop = ring_rank_range(shape.candidates, ring.lower, ring.upper)

    def project(sampler):
        return lambda a, p, n: sampled_contrast(a, p, n, sampler, shape.temperature)[0]

    return {
        "uniform": project(uniform),
        "ring": project(ring),
        "full_sort": lambda a, p, n: full_sort_ring_loss(a, p, n, start, stop, shape.temperature),
    }, (start, stop)


def loss_and_grad(fn, anchor, positive, negatives):
    anchor.grad = None
    loss = fn(anchor, positive, negatives)
    loss.backward()
    return loss.detach(), anchor.grad.clone()


def check_agreement(shape, functions, ranks, inputs):
    """Max |difference| of loss and gradient: ring vs full_sort, uniform vs full_sort(all)."""
    anchor, positive, negatives = inputs
    ring_loss, ring_grad = loss_and_grad(functions["ring"], *inputs)
    sort_loss, sort_grad = loss_and_grad(functions["full_sort"], *inputs)
    uniform_loss, uniform_grad = loss_and_grad(functions["uniform"], *inputs)

    def everything(a, p, n):
        return full_sort_ring_loss(a, p, n, 0, shape.candidates, shape.temperature)

    all_loss, all_grad = loss_and_grad(everything, *inputs)
    anchor.grad = None
    loss_diff = max((ring_loss - sort_loss).abs().item(), (uniform_loss - all_loss).abs().item())
    grad_diff = max(
        (ring_grad - sort_grad).abs().max().item(), (uniform_grad - all_grad).abs().max().item()
    )
    scale = max(abs(sort_loss.item()), 1.0)
    if loss_diff > LOSS_TOLERANCE * scale or grad_diff > GRAD_TOLERANCE:
        raise PretrainError(
            f"{shape.name}: losses disagree (max |loss diff| {loss_diff:.2e}, |grad diff| "
            f"{grad_diff:.2e}; ring ranks {ranks[0]}..{ranks[1] - 1}); the ring sampler or the "
            "reference is wrong, so the timings would compare different losses"
        )
    return {
        "loss_uniform": uniform_loss.item(),
        "loss_ring": ring_loss.item(),
        "loss_max_diff": loss_diff,
        "grad_max_diff": grad_diff,
    }


def timed_variants(functions, inputs, backward):
    anchor = inputs[0]

    def step(fn):
        def run():
            anchor.grad = None
            loss = fn(*inputs)
            if backward:
                loss.backward()

        return run

    return {name: step(functions[name]) for name in VARIANTS}


def measure_shape(shape, device, sampler_options, repeats):
    inputs = make_inputs(shape, device)
    functions, ranks = loss_functions(shape, sampler_options)
    agreement = check_agreement(shape, functions, ranks, inputs)
    rows = []
    for backward in (False, True):
        times = interleaved_times(timed_variants(functions, inputs, backward), device, repeats)
        medians = {name: median(times[name]) for name in VARIANTS}
        # Variants of one repetition ran back to back: their ratio cancels slow drift.
        paired = {
            "ring_over_uniform": [r / u for r, u in zip(times["ring"], times["uniform"])],
            "sort_over_ring": [s / r for s, r in zip(times["full_sort"], times["ring"])],
        }
        rows.append(
            {
                "device": device.type,
                "shape": shape.name,
                "pass": "forward+backward" if backward else "forward",
                "batch": shape.batch,
                "candidates": shape.candidates,
                "bank": shape.bank,
                "dim": shape.dim,
                "ring_ranks": list(ranks),
                "repeats": repeats,
                "has_targets": shape.has_targets,
                **{f"{name}_s": medians[name] for name in VARIANTS},
                "ring_over_uniform": medians["ring"] / medians["uniform"],
                "sort_over_ring": medians["full_sort"] / medians["ring"],
                **{f"{name}_quartiles": quartiles(values) for name, values in paired.items()},
                "seconds_per_repeat": times,
                **agreement,
            }
        )
    return rows


def quartiles(values):
    """(25th, 75th) percentiles: the spread of the per-repetition ratios."""
    if len(values) < 2:
        return (values[0], values[0])
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return (low, high)


def verdict(row):
    """Issue 8's targets apply at the full MoCo shapes only."""
    if not row["has_targets"]:
        return ""
    misses = []
    if row["ring_over_uniform"] > TARGET_RING_OVER_UNIFORM:
        misses.append(f"ring/uniform > {TARGET_RING_OVER_UNIFORM}")
    if row["sort_over_ring"] < TARGET_SORT_OVER_RING:
        misses.append(f"sort/ring < {TARGET_SORT_OVER_RING}")
    return "targets met" if not misses else "MISSED: " + ", ".join(misses)


def print_table(rows):
    print("medians; ratios of medians, [per-repetition ratio quartiles]")
    header = (
        f"{'device':6} {'shape':5} {'pass':16} {'uniform s':>10} {'ring s':>10} "
        f"{'sort s':>10} {'ring/unif':>16} {'sort/ring':>16} {'loss diff':>9}  verdict"
    )
    print(header)
    for row in rows:
        print(
            f"{row['device']:6} {row['shape']:5} {row['pass']:16} {row['uniform_s']:10.4f} "
            f"{row['ring_s']:10.4f} {row['full_sort_s']:10.4f} "
            f"{spread(row, 'ring_over_uniform'):>16} {spread(row, 'sort_over_ring'):>16} "
            f"{row['loss_max_diff']:9.1e}  {verdict(row)}"
        )


def spread(row, name):
    low, high = row[f"{name}_quartiles"]
    return f"{row[name]:.2f} [{low:.2f}-{high:.2f}]"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=PRESETS, default="full")
    parser.add_argument("--devices", default="auto", help="auto (CPU, then GPU if present)")
    parser.add_argument("--repeats", type=int, help="timed repetitions (default: the preset's)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--upper", type=float, default=0.1, help="ring upper rank fraction")
    parser.add_argument("--lower-ratio", type=float, default=0.1, help="lower = ratio * upper")
    parser.add_argument("--json", help="also write the figures and machine facts here")
    return parser.parse_args(argv)


def run(args):
    preset = PRESETS[args.preset]
    repeats = args.repeats or preset["repeats"]
    if repeats < 1:
        raise PretrainError(f"--repeats must be >= 1, got {repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = resolve_devices(args.devices)
    sampler_options = {"upper": args.upper, "lower_ratio": args.lower_ratio}
    NegativeSampler("ring", **sampler_options)  # a bad --upper fails before any work
    facts_before = machine_facts()
    print(f"machine: {facts_before}", flush=True)
    rows = []
    for device in devices:
        for shape in preset["shapes"]:
            print(f"measuring {shape.name} on {device.type} ...", file=sys.stderr, flush=True)
            rows += measure_shape(shape, device, sampler_options, repeats)
    print_table(rows)
    finish_run("ring_selection", args, {"sampler": sampler_options}, facts_before, rows)
    return rows


@one_line_errors
def main(argv=None):
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
