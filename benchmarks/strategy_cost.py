#!/usr/bin/env python
"""Loss forward+backward of every negative strategy relative to uniform, at the MoCo shape.

    python -m benchmarks.strategy_cost [--preset full|smoke] [--devices auto|cpu|cuda]
        [--repeats N] [--threads N] [--json OUT.json]

B = 256 queries, a queue of K = 65,536 keys, d = 128 (``smoke``: tiny). Each strategy runs
through ``NegativeSampler.contrast`` from the embeddings to the loss and its gradient, exactly as
a training step calls it; repetitions are interleaved and the ratios to uniform come from one run.
MoCHi runs at the paper's (N, s, s') = (1024, 1024, 256); DCL/HCL at tau_plus 0.1, beta 1.
"""

import sys

from benchmarks.ring_selection import SHAPES, make_inputs, quartiles, sampler_loss
from benchmarks.timing import (
    finish_run,
    interleaved_times,
    machine_facts,
    median,
    parse_preset_args,
    resolve_devices,
)
from pretrain.errors import one_line_errors
from pretrain.samplers import NegativeSampler

STRATEGIES = {
    "uniform": {},
    "ring": {"upper": 0.1},  # the authors' MoCoRing: every ring member once
    "ring_equal": {"upper": 0.1, "num_negatives": "equal"},  # the equal-count control
    "dcl": {"tau_plus": 0.1},
    "hcl": {"tau_plus": 0.1, "beta": 1.0},
    "hcl_in_ring": {"tau_plus": 0.1, "beta": 1.0, "within_ring": True, "upper": 0.1},
    "mochi": {"mochi_hardest": 1024, "mochi_pairs": 1024, "mochi_query": 256},
}
SMOKE_MOCHI = {"mochi_hardest": 64, "mochi_pairs": 64, "mochi_query": 16}
REPEATS = {"full": 5, "smoke": 2}


def strategy_samplers(preset):
    samplers = {}
    for label, options in STRATEGIES.items():
        name = label.split("_")[0]
        if preset == "smoke" and name == "mochi":
            options = SMOKE_MOCHI
        samplers[label] = NegativeSampler(name, **options)
    return samplers


def measure(shape, device, preset, repeats):
    inputs = make_inputs(shape, device)

    def step(loss_fn):
        def run():
            inputs[0].grad = None
            loss_fn(*inputs).backward()

        return run

    runs = {label: step(sampler_loss(shape, s)) for label, s in strategy_samplers(preset).items()}
    times = interleaved_times(runs, device, repeats)
    base = median(times["uniform"])
    rows = []
    for label, values in times.items():
        ratios = [v / u for v, u in zip(values, times["uniform"])]
        rows.append(
            {
                "device": device.type,
                "strategy": label,
                "forward_backward_s": median(values),
                "over_uniform": median(values) / base,
                "over_uniform_quartiles": quartiles(ratios),
                "seconds_per_repeat": values,
            }
        )
    return rows


def print_table(rows, shape):
    print(f"MoCo shape B={shape.batch} K={shape.negatives} d={shape.dim}, forward+backward")
    print(f"{'device':6} {'strategy':12} {'median s':>9} {'x uniform':>20}")
    for row in rows:
        low, high = row["over_uniform_quartiles"]
        print(
            f"{row['device']:6} {row['strategy']:12} {row['forward_backward_s']:9.4f} "
            f"{row['over_uniform']:8.2f} [{low:.2f}-{high:.2f}]"
        )


@one_line_errors
def main(argv=None):
    args = parse_preset_args(__doc__.splitlines()[0], SHAPES, REPEATS, argv)
    shape = SHAPES[args.preset]["moco"]
    facts_before = machine_facts()
    print(f"machine: {facts_before}", flush=True)
    rows = []
    for device in resolve_devices(args.devices):
        rows += measure(shape, device, args.preset, args.repeats)
    print_table(rows, shape)
    finish_run("strategy_cost", args, {"strategies": STRATEGIES}, facts_before, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
