"""Submit pretraining, transfer runs, transfer sweeps or a cluster probe, through submitit.

    python tools/submit.py pretrain --config configs/pretrain/ring_moco_imagenet.yaml \\
        --nodes 2 --gpus-per-node 8 --partition gpu --timeout-min 4320 optim.epochs=200
    python tools/submit.py transfer --config configs/transfer/coco_mask_rcnn_R50_FPN_1x.yaml \\
        --gpus-per-node 8 MODEL.WEIGHTS runs/w.pkl OUTPUT_DIR runs/transfer/ring
    python tools/submit.py sweep configs/sweeps/example.yaml --array-parallelism 8
    python tools/submit.py probe --workdir runs/probe --steps 60 --cluster slurm --wait
    python tools/submit.py watch runs/pretrain/ring --sweep configs/sweeps/tiny_fmnist.yaml

``--cluster slurm`` (default) queues on Slurm; ``local`` runs the same jobs as processes on this
machine; ``debug`` runs them inside this process (for pdb). Jobs requeue themselves on
preemption or time limit and resume from their last checkpoint. Errors are one line, exit 2.
"""

import argparse
import functools
import json
import sys
from pathlib import Path

from launcher.collect import write_reports
from launcher.errors import LauncherError
from launcher.executors import CLUSTERS, Resources, make_executor, submit, unique_log_folder
from launcher.jobs import PretrainJob, TransferJob, load_pretrain_config
from launcher.sweep import load_sweep, submit_sweep
from pretrain.errors import one_line_errors

DEFAULTS = Resources()


def resource_options():
    """Flags shared by every sub-command; unset ones keep the sweep file's or Resources' value."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("where and with what")
    group.add_argument("--cluster", choices=CLUSTERS, default="slurm")
    group.add_argument("--partition")
    group.add_argument("--account")
    group.add_argument("--qos")
    group.add_argument("--constraint")
    group.add_argument("--nodes", type=int, help=f"default {DEFAULTS.nodes}")
    group.add_argument("--gpus-per-node", type=int, help="default 1 (probe: 0); 0 on CPU nodes")
    group.add_argument("--cpus-per-task", type=int, help=f"default {DEFAULTS.cpus_per_task}")
    group.add_argument("--mem-gb", type=float, help="per node; default: the cluster's")
    group.add_argument("--timeout-min", type=int, help=f"default {DEFAULTS.timeout_min}")
    group.add_argument(
        "--max-timeouts",
        type=int,
        help=f"requeues after hitting the time limit (default {DEFAULTS.max_timeouts}; "
        "preemptions: unlimited)",
    )
    group.add_argument(
        "--max-retries",
        type=int,
        help=f"requeues after an infrastructure failure (default {DEFAULTS.max_retries}; "
        "a task's own error is never retried)",
    )
    group.add_argument("--job-name")
    group.add_argument(
        "--array-parallelism",
        type=int,
        help=f"sweeps: array tasks running at once (default {DEFAULTS.array_parallelism})",
    )
    group.add_argument("--log-dir", help="submitit logs (a new sub-folder per submission)")
    group.add_argument("--wait", action="store_true", help="wait for the job(s) and report")
    return parser


def parse_args(argv=None):
    common = resource_options()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pretrain = commands.add_parser("pretrain", parents=[common], help="one (DDP) pretraining")
    pretrain.add_argument("--config", required=True)
    pretrain.add_argument(
        "--tasks-per-node", type=int, help="processes per node (default: one per GPU; 1 on CPU)"
    )
    pretrain.add_argument("overrides", nargs="*", help="key=value config overrides")
    transfer = commands.add_parser("transfer", parents=[common], help="one Detectron2 run")
    transfer.add_argument("--config", required=True)
    transfer.add_argument("opts", nargs="*", help="Detectron2 KEY VALUE pairs")
    sweep = commands.add_parser(
        "sweep", parents=[common], help="a sweep of Detectron2 and classification tasks (job array)"
    )
    sweep.add_argument("sweep_file")
    sweep.add_argument("--output-dir", help="sweep directory (default: the file's output_dir)")
    watch = commands.add_parser(
        "watch", parents=[common], help="evaluate each checkpoint of a running pretraining"
    )
    watch.add_argument("run_dir", help="the pretraining's output_dir")
    watch.add_argument("--sweep", required=True, help="sweep file: tasks, seeds, resources")
    watch.add_argument("--output-dir", help="sweep directory (default: the file's output_dir)")
    watch.add_argument("--poll-s", type=float, default=60.0, help="seconds between looks")
    probe = commands.add_parser("probe", parents=[common], help="check requeue/resume works")
    probe.add_argument("--workdir", required=True)
    probe.add_argument("--steps", type=int, default=60)
    probe.add_argument("--seconds-per-step", type=float, default=1.0)
    return parser.parse_args(argv)


def resources_from(args, name, gpus_default, base=None):
    """Resources defaults <- the sweep file's ``resources`` <- the flags given."""
    chosen = {"job_name": name, "gpus_per_node": gpus_default, **(base or {})}
    flags = {field: getattr(args, field, None) for field in Resources.field_names()}
    chosen.update({field: value for field, value in flags.items() if value is not None})
    resources = Resources(**chosen)
    if resources.gpus_per_node < 0 or resources.nodes < 1 or resources.cpus_per_task < 1:
        raise LauncherError("--gpus-per-node must be >= 0, --nodes and --cpus-per-task >= 1")
    return resources


def log_folder(args, default_root, label):
    return unique_log_folder(args.log_dir or default_root, label)


def submit_pretrain(args):
    cfg = load_pretrain_config(args.config, args.overrides)  # bad configs fail here, not queued
    resources = resources_from(args, "ring-nce-pretrain", 1)
    # one process per GPU unless asked otherwise; DDP ranks come from the submitit task of each
    if args.tasks_per_node is None:
        resources.tasks_per_node = max(1, resources.gpus_per_node)
    elif args.tasks_per_node < 1:
        raise LauncherError(f"--tasks-per-node must be >= 1, got {args.tasks_per_node}")
    folder = log_folder(args, Path(cfg.output_dir) / "submitit", "pretrain")
    executor = make_executor(args.cluster, folder, resources)
    return [submit(executor, resources, PretrainJob(), args.config, args.overrides)]


def _transfer_output_dir(opts):
    pairs = dict(zip(opts[::2], opts[1::2]))
    return pairs.get("OUTPUT_DIR", "runs/transfer")


def submit_transfer(args):
    import transfer  # noqa: F401  (Detectron2's _C fallback first)
    from transfer.config import build_config

    if len(args.opts) % 2:
        raise LauncherError("transfer opts must be KEY VALUE pairs (an even number of words)")
    resources = resources_from(args, "ring-nce-transfer", 1)
    num_gpus = max(1, resources.gpus_per_node)
    # a bad config or missing weights file fails here, not after hours in the queue
    build_config(args.config, args.opts, num_gpus=1, num_machines=1)
    folder = log_folder(args, Path(_transfer_output_dir(args.opts)) / "submitit", "transfer")
    executor = make_executor(args.cluster, folder, resources)
    return [submit(executor, resources, TransferJob(num_gpus), args.config, args.opts)]


def submit_probe(args):
    from launcher.probe import ProbeJob  # torch: imported only when needed

    resources = resources_from(args, "ring-nce-probe", 0)
    folder = log_folder(args, Path(args.workdir) / "submitit", "probe")
    executor = make_executor(args.cluster, folder, resources)
    job_arguments = (str(Path(args.workdir).resolve()), args.steps, args.seconds_per_step)
    return [submit(executor, resources, ProbeJob(), *job_arguments)]


def run_sweep(args):
    spec = load_sweep(args.sweep_file)
    sweep_dir = Path(args.output_dir).resolve() if args.output_dir else Path(spec["output_dir"])
    resources = resources_from(args, "ring-nce-sweep", 1, spec["resources"])
    skipped, submitted = submit_sweep(spec, args.cluster, resources, sweep_dir, args.log_dir)
    print(f"{sweep_dir}: {len(submitted)} run(s) submitted, {len(skipped)} already done or queued")
    for run, job in submitted:
        print(f"  {run.label}: job {job.job_id}, log {job.paths.stdout}")
    if args.wait or args.cluster != "slurm":
        for _, job in submitted:
            job.wait()
        markdown, _ = write_reports(sweep_dir)
        print(markdown, end="")
    return 0


def run_watch(args):
    from launcher.watch import watch

    spec = load_sweep(args.sweep)
    sweep_dir = Path(args.output_dir).resolve() if args.output_dir else Path(spec["output_dir"])
    resources = resources_from(args, "ring-nce-watch", 1, spec["resources"])
    print(f"watching {args.run_dir}: each new checkpoint's runs go to {sweep_dir}", flush=True)
    say = functools.partial(print, flush=True)
    print(watch(args.run_dir, spec, args.cluster, resources, sweep_dir, args.poll_s, say), end="")
    return 0


def report_jobs(jobs, wait):
    for job in jobs:
        print(f"job {job.job_id}: log {job.paths.stdout}")
    if not wait:
        return 0
    status = 0
    for job in jobs:
        error = job.exception()
        if error is None:
            # one JSON line per task (rank order): a multi-node job reports every rank
            for result in job.results():
                print(json.dumps(result, default=str))
        else:
            lines = str(error).strip().splitlines() or ["failed"]
            print(f"job {job.job_id} failed: {lines[-1]} (log {job.paths.stdout})")
            status = 1
    return status


@one_line_errors
def main(argv=None):
    args = parse_args(argv)
    submitters = {"pretrain": submit_pretrain, "transfer": submit_transfer, "probe": submit_probe}
    if args.command == "sweep":
        return run_sweep(args)
    if args.command == "watch":
        return run_watch(args)
    jobs = submitters[args.command](args)
    return report_jobs(jobs, args.wait or args.cluster == "debug")


if __name__ == "__main__":
    sys.exit(main())
