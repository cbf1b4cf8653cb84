"""Shared by the benchmark scripts: synchronised timing, interleaved repetitions, machine facts.

Benchmarks compare variants measured in one run: every repetition runs each variant once, in
an order rotated per repetition, so slow drift (other processes, thermal state, allocator
warm-up) falls on all variants alike; medians then ignore the odd disturbed repetition.
"""

import argparse
import os
import platform
import statistics
import sys
import time

import torch

from pretrain.atomic_write import write_json_atomic
from pretrain.errors import PretrainError


def parse_preset_args(description, presets, repeats_by_preset, argv=None):
    """The preset benchmarks' command line: ``--preset --devices --repeats --threads --json``.
    Returns the parsed arguments with ``repeats`` resolved from the preset and checked, and the
    torch CPU thread count applied."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", choices=presets, default="full")
    parser.add_argument("--devices", default="auto", help="auto (CPU, then GPU if present)")
    parser.add_argument("--repeats", type=int, help="timed repetitions (default: the preset's)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", help="also write the figures and machine facts here")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or repeats_by_preset[args.preset]
    if args.repeats < 1:
        raise PretrainError(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def resolve_devices(requested):
    """``"auto"`` = the CPU, then the GPU when one is visible; else a comma list of cpu/cuda."""
    names = ["cpu", "cuda"] if requested == "auto" else requested.split(",")
    if requested == "auto" and not torch.cuda.is_available():
        names = ["cpu"]
    for name in names:
        if name not in ("cpu", "cuda"):
            raise PretrainError(
                f"unknown device '{name}' in --devices; use auto, cpu, cuda or cpu,cuda"
            )
        if name == "cuda" and not torch.cuda.is_available():
            raise PretrainError(
                "--devices names cuda but no CUDA GPU is visible; use --devices cpu"
            )
    return [torch.device(name) for name in names]


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn, device):
    """Wall seconds of ``fn()``, with queued GPU work finished before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_times(variants, device, repeats, warmup=1):
    """``{name: [seconds per repetition]}`` for ``variants`` (name -> callable), interleaved."""
    names = list(variants)
    times = {name: [] for name in names}
    for repetition in range(warmup + repeats):
        shift = repetition % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed = time_once(variants[name], device)
            if repetition >= warmup:
                times[name].append(elapsed)
    return times


def median(values):
    return statistics.median(values)


def load_average():
    """1-minute load average (processes wanting a CPU), or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def machine_facts():
    """What a figure depends on: CPU count and threads, load, GPU, library versions."""
    facts = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": load_average(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def load_warning(facts):
    """A line to print when more runnable work than CPUs was measured (its own threads count:
    a load just above the CPU count can be the benchmark alone)."""
    load, cpus = facts.get("load_average_1min"), facts.get("cpus")
    if load is not None and cpus and load > cpus:
        return (
            f"warning: load average {load:.1f} on {cpus} CPUs (this run's threads included): "
            "if other processes were running, CPU figures are pessimistic; rerun when quiet"
        )
    return None


def write_json(data, path):
    """Write ``data`` to ``path`` atomically (a crash never leaves half a file)."""
    write_json_atomic(path, data)


def finish_run(name, args, settings, facts_before, rows):
    """After the table: a warning if the machine was loaded at either end, and ``--json``."""
    facts_after = machine_facts()
    for facts in (facts_before, facts_after):
        warning = load_warning(facts)
        if warning:
            print(warning)
            break
    if args.json:
        report = {"benchmark": name, "preset": args.preset, **settings}
        report |= {"machine_before": facts_before, "machine_after": facts_after, "rows": rows}
        write_json(report, args.json)
