#!/usr/bin/env python
"""Per-step cost of choosing negatives: uniform vs the authors' ring vs a full-sort reference.

    python -m benchmarks.ring_selection [--preset full|smoke] [--shapes moco ir60k ir1m]
        [--devices auto|cpu|cuda|cpu,cuda] [--repeats N] [--threads N] [--upper 0.1]
        [--lower-ratio 0.1] [--json OUT.json]

Shapes:
- ``moco``: B = 256 queries against one queue of K = 65,536 keys (d = 128). ``uniform`` uses the
  whole queue; ``ring`` is the default (the authors' MoCoRing): rank the queue, keep ranks
  [lower, upper) and use every member once; ``ring_equal`` is the equal-count control, K draws
  from that ring; ``selection`` is uniform's loss plus the ring's selection (result unused), to
  split the ring's cost between ranking and the rest; ``full_sort`` is a reference written here:
  a full sort of every row, the ring sliced, used once.
- ``ir60k`` / ``ir1m``: B = 256 anchors against a memory bank of N = 60,000 (Fashion-MNIST) or
  N = 1,281,167 (ImageNet) entries, K = 4,096 negatives each. ``uniform`` draws K from the bank;
  ``ring`` (the authors' NCERing) ranks each anchor against the whole bank in row chunks
  (``sampler.rank_chunk_mb``, default 256 MiB) and draws K from its ring; ``full_sort`` sorts,
  slices and makes the same draws.
- On the CPU, every shape adds ``ring_topk``: the same ring ranked by torch's ``topk``, the
  route GPUs take, instead of numpy's ``argpartition`` (``pretrain/ranking.py``).

Every variant is timed from the embeddings to the loss (forward, with autograd recording, and
forward+backward), through the project's own ``pretrain.samplers`` / ``pretrain.pools`` code.
Before timing, ``ring`` and ``ring_topk`` must equal ``full_sort`` (same loss and gradient), and
``ring_equal`` a full-sort reference with the same draws, or the run stops. Repetitions are
interleaved; medians, ratios and the peak resident memory each variant added (a sampling thread
over /proc, CPU only) come from one run.
"""

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmarks.timing import (
    finish_run,
    interleaved_times,
    machine_facts,
    median,
    resolve_devices,
)
from pretrain.errors import PretrainError, one_line_errors
from pretrain.losses import info_nce
from pretrain.pools import BankPool, DensePool
from pretrain.ranking import ROUTES
from pretrain.samplers import NegativeSampler, ring_rank_range

TARGET_RING_OVER_UNIFORM = 1.15  # issues 12 and 25, MoCo shape, forward, the authors' ring
LOSS_TOLERANCE = 1e-4  # float32 logsumexp over 65k terms in different orders
GRAD_TOLERANCE = 1e-4
SEED = 0


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    negatives: int  # K per anchor (MoCo: the queue)
    dim: int
    temperature: float
    bank: int = 0  # IR: memory bank size N; 0 = MoCo queue
    has_target: bool = False


SHAPES = {
    "full": {
        "moco": Shape("moco", 256, 65536, 128, 0.2, has_target=True),
        "ir60k": Shape("ir60k", 256, 4096, 128, 0.07, bank=60000),
        "ir1m": Shape("ir1m", 256, 4096, 128, 0.07, bank=1281167),
    },
    "smoke": {
        "moco": Shape("moco", 16, 1024, 16, 0.2),
        "ir60k": Shape("ir60k", 16, 128, 16, 0.07, bank=600),
        "ir1m": Shape("ir1m", 8, 128, 16, 0.07, bank=3000),
    },
}
REPEATS = {"full": 5, "smoke": 2}


def make_inputs(shape, device):
    """Unit anchors (requires grad), positives near them, and the queue or bank."""
    generator = torch.Generator().manual_seed(SEED)

    def unit(*size):
        return F.normalize(torch.randn(*size, shape.dim, generator=generator), dim=-1)

    anchor = unit(shape.batch)
    positive = F.normalize(anchor + 0.5 * unit(shape.batch), dim=1)
    pool = unit(shape.bank or shape.negatives)
    own = torch.randint(shape.bank or 1, (shape.batch,), generator=generator)
    moved = [t.to(device) for t in (anchor, positive, pool, own)]
    moved[0].requires_grad_(True)
    return moved


def make_pool(shape, anchor, pool, own):
    if shape.bank:
        return BankPool(anchor, pool, own, shape.negatives)
    return DensePool(anchor @ pool.T, pool, torch.arange(len(pool), device=pool.device))


def sampler_loss(shape, sampler):
    def loss(anchor, positive, pool, own):
        sampler.generator = torch.Generator(device=anchor.device).manual_seed(SEED)
        positive_similarity = (anchor * positive).sum(dim=1)
        return sampler.contrast(
            anchor, positive_similarity, make_pool(shape, anchor, pool, own), shape.temperature
        )[0]

    return loss


def full_sort_loss(shape, lower, upper, draws):
    """The reference: rank by a full sort, slice the ring, list it by column; then the same
    seeded draws (``draws``) or every member once."""

    def loss(anchor, positive, pool, own):
        similarity = anchor @ pool.T
        if shape.bank:
            similarity = similarity.scatter(1, own.unsqueeze(1), float("-inf"))
        size = pool.shape[0] - (1 if shape.bank else 0)
        start, stop = ring_rank_range(size, lower, upper)
        order = similarity.detach().sort(dim=1, descending=True).indices
        ring = order[:, start:stop].sort(dim=1).values
        if draws:
            generator = torch.Generator(device=anchor.device).manual_seed(SEED)
            positions = torch.randint(
                stop - start, (shape.batch, shape.negatives), generator=generator,
                device=anchor.device,
            )  # fmt: skip
            ring = ring.gather(1, positions)
        negatives = similarity.gather(1, ring) / shape.temperature
        return info_nce((anchor * positive).sum(dim=1) / shape.temperature, negatives)

    return loss


def selection_only_loss(shape, lower, upper):
    """Uniform's loss plus the ring's selection, its result unused: what ranking alone costs,
    so that ``selection - uniform`` is the price of ranking and ``ring - selection`` what using
    the ring adds (or saves: its loss runs over a tenth of the queue)."""
    uniform = NegativeSampler("uniform")

    def loss(anchor, positive, pool, own):
        dense = make_pool(shape, anchor, pool, own)
        dense.ring_members(*ring_rank_range(dense.size, lower, upper), 2**30, by_column=False)
        positive_similarity = (anchor * positive).sum(dim=1)
        return uniform.contrast(anchor, positive_similarity, dense, shape.temperature)[0]

    return loss


def on_the_topk_route(loss):
    """``loss`` with the CPU's ranking sent through torch's ``topk``, the route GPUs take
    (``pretrain/ranking.py``): what the CPU paid before numpy's ``argpartition``."""

    def routed(*inputs):
        partition = ROUTES["partition"]
        ROUTES["partition"] = ROUTES["topk"]
        try:
            return loss(*inputs)
        finally:
            ROUTES["partition"] = partition

    return routed


def variants(shape, options, device):
    """The timed variants and the untimed references they are checked against."""
    ring = NegativeSampler("ring", **options)
    found = {
        "uniform": sampler_loss(shape, NegativeSampler("uniform")),
        "ring": sampler_loss(shape, ring),
    }
    if device.type == "cpu":
        found["ring_topk"] = on_the_topk_route(found["ring"])
    if not shape.bank:
        found["ring_equal"] = sampler_loss(
            shape, NegativeSampler("ring", num_negatives="equal", **options)
        )
        found["selection"] = selection_only_loss(shape, ring.lower, ring.upper)
    if shape.bank * shape.batch * 4 <= 2**30:  # the dense reference needs B x N floats
        # the authors' ring: a bank's is drawn from, a queue's used once
        found["full_sort"] = full_sort_loss(shape, ring.lower, ring.upper, draws=bool(shape.bank))
    return found


def references(shape, options):
    """``{variant: reference}`` pairs that must agree before anything is timed."""
    ring = NegativeSampler("ring", **options)
    pairs = {"ring": "full_sort", "ring_topk": "full_sort"}
    extra = {}
    if not shape.bank:
        pairs["ring_equal"] = "full_sort_equal"
        extra["full_sort_equal"] = full_sort_loss(shape, ring.lower, ring.upper, draws=True)
    return pairs, extra


def loss_and_grad(fn, inputs):
    inputs[0].grad = None
    loss = fn(*inputs)
    loss.backward()
    grad = inputs[0].grad.clone()
    inputs[0].grad = None
    return loss.detach(), grad


def check_agreement(shape, functions, inputs, options=None):
    """Each ring against its full-sort reference: same loss and gradient, or the timings would
    compare different losses."""
    pairs, extra = references(shape, options or {"upper": 0.1, "lower_ratio": 0.1})
    every = {**functions, **extra}
    ring_loss = loss_and_grad(functions["ring"], inputs)[0]
    losses = {"loss_ring": ring_loss.item()}
    losses["loss_uniform"] = loss_and_grad(functions["uniform"], inputs)[0].item()
    worst = None
    for name, reference in pairs.items():
        if name not in every or reference not in every:
            continue
        loss, grad = loss_and_grad(every[name], inputs)
        sort_loss, sort_grad = loss_and_grad(every[reference], inputs)
        loss_diff = (loss - sort_loss).abs().item()
        grad_diff = (grad - sort_grad).abs().max().item()
        tolerance = LOSS_TOLERANCE * max(abs(sort_loss.item()), 1.0)
        if loss_diff > tolerance or grad_diff > GRAD_TOLERANCE:
            raise PretrainError(
                f"{shape.name}: {name} and {reference} disagree (|loss diff| {loss_diff:.2e}, "
                f"|grad diff| {grad_diff:.2e}); the sampler or the reference is wrong"
            )
        worst = max(worst or 0.0, loss_diff)
    return {"loss_max_diff": worst, **losses}


def resident_bytes():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def peak_added_bytes(fn, device):
    """Peak memory ``fn`` adds: CUDA's allocator counter, or resident memory sampled on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    base, peak, done = resident_bytes(), [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], resident_bytes())
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        fn()
    finally:
        done.set()
        watcher.join()
    return max(peak[0], resident_bytes()) - base


def step(fn, inputs, backward):
    def run():
        inputs[0].grad = None
        loss = fn(*inputs)
        if backward:
            loss.backward()

    return run


def measure_shape(shape, device, options, repeats):
    inputs = make_inputs(shape, device)
    functions = variants(shape, options, device)
    agreement = check_agreement(shape, functions, inputs, options)
    rows = []
    for backward in (False, True):
        runs = {name: step(fn, inputs, backward) for name, fn in functions.items()}
        peaks = {name: peak_added_bytes(run, device) for name, run in runs.items()}
        times = interleaved_times(runs, device, repeats)
        medians = {name: median(values) for name, values in times.items()}
        ratios = [r / u for r, u in zip(times["ring"], times["uniform"])]
        rows.append(
            {
                "device": device.type,
                "shape": shape.name,
                "pass": "forward+backward" if backward else "forward",
                "batch": shape.batch,
                "negatives": shape.negatives,
                "bank": shape.bank,
                "dim": shape.dim,
                "repeats": repeats,
                "has_target": shape.has_target and not backward,
                **{f"{name}_s": value for name, value in medians.items()},
                **{f"{name}_peak_mib": value / 2**20 for name, value in peaks.items()},
                "ring_over_uniform": medians["ring"] / medians["uniform"],
                "ring_over_uniform_quartiles": quartiles(ratios),
                "dense_bank_mib": shape.bank * shape.batch * 4 / 2**20,
                "seconds_per_repeat": times,
                **agreement,
            }
        )
    return rows


def quartiles(values):
    if len(values) < 2:
        return (values[0], values[0])
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return (low, high)


def verdict(row):
    if not row["has_target"]:
        return ""
    met = row["ring_over_uniform"] <= TARGET_RING_OVER_UNIFORM
    return "target met" if met else f"MISSED: ring/uniform > {TARGET_RING_OVER_UNIFORM}"


def print_table(rows):
    print(
        "medians in s; ring/uniform = ratio of medians [per-repetition quartiles]; peak MiB added"
    )
    print(
        f"{'device':6} {'shape':6} {'pass':16} {'uniform':>9} {'ring':>9} {'ring_eq':>9} "
        f"{'full_sort':>9} {'ring/uniform':>18} {'peak u/r MiB':>14}  verdict"
    )
    for row in rows:
        low, high = row["ring_over_uniform_quartiles"]
        cells = [
            f"{row[k]:9.4f}" if k in row else f"{'-':>9}"
            for k in ("uniform_s", "ring_s", "ring_equal_s", "full_sort_s")
        ]
        print(
            f"{row['device']:6} {row['shape']:6} {row['pass']:16} {' '.join(cells)} "
            f"{row['ring_over_uniform']:6.2f} [{low:.2f}-{high:.2f}] "
            f"{row['uniform_peak_mib']:6.0f}/{row['ring_peak_mib']:<6.0f}  {verdict(row)}"
        )
    for row in rows:
        if "selection_s" in row and row["pass"] == "forward":
            uniform = row["uniform_s"]
            print(
                f"{row['device']} {row['shape']} forward, x uniform: uniform plus the ring's "
                f"selection {row['selection_s'] / uniform:.2f} (ranking adds "
                f"{(row['selection_s'] - uniform) / uniform:.2f}), the authors' ring (used once) "
                f"{row['ring_s'] / uniform:.2f}, the equal-count control "
                f"{row['ring_equal_s'] / uniform:.2f}"
            )
        if "ring_topk_s" in row:
            print(
                f"{row['device']} {row['shape']} {row['pass']}: the ring ranked by argpartition "
                f"{row['ring_s']:.4f} s, by torch's topk (the GPU route) "
                f"{row['ring_topk_s']:.4f} s: x{row['ring_topk_s'] / row['ring_s']:.2f}"
            )
        if row["bank"] and row["pass"] == "forward":
            print(
                f"{row['shape']}: a dense B x N similarity matrix would hold "
                f"{row['dense_bank_mib']:.0f} MiB; the chunked ring added "
                f"{row['ring_peak_mib']:.0f}"
            )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=SHAPES, default="full")
    parser.add_argument("--shapes", nargs="+", choices=("moco", "ir60k", "ir1m"))
    parser.add_argument("--devices", default="auto", help="auto (CPU, then GPU if present)")
    parser.add_argument("--repeats", type=int, help="timed repetitions (default: the preset's)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--upper", type=float, default=0.1, help="ring upper rank fraction")
    parser.add_argument("--lower-ratio", type=float, default=0.1, help="lower = ratio * upper")
    parser.add_argument("--json", help="also write the figures and machine facts here")
    return parser.parse_args(argv)


def run(args):
    repeats = args.repeats or REPEATS[args.preset]
    if repeats < 1:
        raise PretrainError(f"--repeats must be >= 1, got {repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = resolve_devices(args.devices)
    options = {"upper": args.upper, "lower_ratio": args.lower_ratio}
    NegativeSampler("ring", **options)  # a bad --upper fails before any work
    facts_before = machine_facts()
    print(f"machine: {facts_before}", flush=True)
    rows = []
    for device in devices:
        for name in args.shapes or SHAPES[args.preset]:
            shape = SHAPES[args.preset][name]
            print(f"measuring {shape.name} on {device.type} ...", file=sys.stderr, flush=True)
            rows += measure_shape(shape, device, options, repeats)
    print_table(rows)
    finish_run("ring_selection", args, {"sampler": options}, facts_before, rows)
    return rows


@one_line_errors
def main(argv=None):
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
