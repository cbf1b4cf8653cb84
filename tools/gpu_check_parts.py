"""The parts of ``tools/gpu_check.py``: each ``part(mode, work_dir) -> figures`` dict.

``mode`` is ``gpu`` (one CUDA GPU, the issue's shapes) or ``tiny`` (the same code paths on the
CPU, small). Each part runs in its own subprocess, so a crash or a hang stays in its part.
``figures["headline"]`` holds the few numbers the table prints; the rest goes to the JSON.
"""

import contextlib
import copy
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]


def device_for(mode):
    return torch.device("cuda" if mode == "gpu" else "cpu")


def environment(mode, work_dir):
    import torchvision

    optional = {}
    for name in ("detectron2", "fvcore", "iopath", "pycocotools", "yacs", "omegaconf", "submitit"):
        try:
            importlib.import_module(name)
            optional[name] = True
        except Exception:  # an import can fail in many ways; the check only records it
            optional[name] = False
    facts = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "gpu_count": torch.cuda.device_count(),
        "bf16_supported": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        "imports": optional,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts["gpu_memory_gib"] = props.total_memory / 2**30
        facts["compute_capability"] = f"{props.major}.{props.minor}"
    missing = [name for name, ok in optional.items() if not ok]
    headline = {"gpu": facts["gpu"] or "none", "torch": facts["torch"], "cpus": facts["cpus"]}
    headline["missing"] = ",".join(missing) or "none"
    return {"headline": headline, **facts}


def benchmark_json(module_name, argv, work_dir, tag=""):
    """Runs a benchmark script's ``main(argv)`` with ``--json`` and returns that JSON."""
    path = work_dir / f"{module_name}{tag}.json"
    path.unlink(missing_ok=True)
    status = importlib.import_module(f"benchmarks.{module_name}").main([*argv, "--json", str(path)])
    if status != 0 or not path.is_file():
        raise RuntimeError(f"benchmarks/{module_name}.py exited {status}")
    return json.loads(path.read_text())


def ring_selection(mode, work_dir):
    if mode == "gpu":
        argv = ["--shapes", "moco", "ir1m", "--devices", "cuda", "--repeats", "5"]
    else:
        argv = ["--preset", "smoke", "--shapes", "moco", "ir60k", "--devices", "cpu"]
        argv += ["--repeats", "1"]
    report = benchmark_json("ring_selection", argv, work_dir)
    headline = {
        f"{row['shape']} {row['pass']} ring/uniform": row["ring_over_uniform"]
        for row in report["rows"]
    }
    return {"headline": headline, "report": report}


def throughput(mode, work_dir):
    """Both ``data.augment_on`` settings: the loader-fed rate is what augment_on gpu is for."""
    if mode == "gpu":
        # the median of 3 rounds; workers persist, so only round 1 warms up in full
        argv = ["--preset", "gpu", "--steps", "10", "--rounds", "3"]
        argv += ["--data-dir", str(work_dir / "jpeg_folder")]
    else:
        argv = ["--preset", "smoke"]
    headline, reports = {}, {}
    for augment_on in ("cpu", "gpu"):
        report = benchmark_json(
            "train_throughput", [*argv, "--augment-on", augment_on], work_dir, f"_{augment_on}"
        )
        reports[augment_on] = report
        for row in report["rows"]:
            name = f"{row['method']} aug-{augment_on}"
            if augment_on == "cpu":  # the synthetic feed does not depend on augment_on
                headline[f"{row['method']} synthetic img/s"] = row["synthetic_images_per_second"]
            headline[f"{name} loader img/s"] = row["loader_images_per_second"]
            headline[f"{name} data wait"] = row["data_wait_share"]
    return {"headline": headline, "reports": reports}


def augment_cost(mode, work_dir):
    if mode == "gpu":
        argv = ["--devices", "cuda", "--batch", "128", "--repeats", "3"]
    else:
        argv = ["--preset", "smoke", "--devices", "cpu"]
    report = benchmark_json("augment_cost", argv, work_dir)
    (per_image_ms,) = report["rows"]
    return {"headline": {f"{k} ms/img": v for k, v in per_image_ms.items()}, "report": report}


def agreement_config(mode, sampler):
    from pretrain.trainer import as_config

    big = mode == "gpu"
    return as_config(
        {
            "method": "moco",
            "device": "cuda" if big else "cpu",
            "model": {"arch": "resnet50"} if big else {"arch": "resnet18", "width": 0.25},
            "sampler": {"name": sampler},
            # one BN group for the keys: tiny's 8 images in 4 groups of 2 are all bf16 noise
            "moco": {"queue_size": 65536 if big else 256, "shuffle_bn_splits": 1},
            "data": {"name": "synthetic", "image_size": 224 if big else 32},
            "optim": {"batch_size": 128 if big else 8},
        }
    )


def one_loss(method, views, indices, sampler, autocast, mode=None):
    """The loss of one forward from ``method``'s current state (the method is a copy)."""
    torch.manual_seed(0)  # shuffle-BN's permutation and the ring's draws: the same each time
    with torch.no_grad(), autocast, mode or contextlib.nullcontext():
        loss, _ = method(views, indices, sampler)
    if loss.dtype != torch.float32:
        raise RuntimeError(f"the loss is {loss.dtype} under autocast, not float32")
    return float(loss.float())


class LossDtypes(TorchDispatchMode):
    """Under autocast, what the loss is made of must stay float32: the similarity logits
    against the queue (a product whose last dimension is the queue's length), the ring's ranks
    (every ``topk``'s input; on a GPU, where the ring is ranked by ``topk``) and the loss's
    ``logsumexp``. The encoders may run in bf16. A wrong cast path shows here even where it
    moves the loss by less than bf16's noise."""

    def __init__(self, queue_size):
        super().__init__()
        self.queue_size = queue_size
        self.wrong, self.seen = [], set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        aten = torch.ops.aten
        name = func.overloadpacket.__name__
        if name in ("mm", "addmm", "bmm") and out.shape[-1] == self.queue_size:
            self.check("similarity", f"{name} {tuple(out.shape)}", out.dtype)
        elif func is aten.topk.default:
            self.check("ranks", f"topk of {tuple(args[0].shape)}", args[0].dtype)
        elif func is aten.logsumexp.default:
            self.check("loss", f"logsumexp of {tuple(args[0].shape)}", args[0].dtype)
        return out

    def check(self, kind, what, dtype):
        self.seen.add(kind)
        if dtype != torch.float32:
            self.wrong.append(f"{kind} {what} in {dtype}")


def bf16_agreement(mode, work_dir):
    from pretrain.methods import build_method
    from pretrain.samplers import NegativeSampler

    device = device_for(mode)
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference is true fp32
    torch.backends.cudnn.allow_tf32 = False
    figures = {}
    for sampler_name in ("uniform", "ring"):
        cfg = agreement_config(mode, sampler_name)
        torch.manual_seed(0)
        method = build_method(cfg, 1024, 3, "synthetic").to(device).train()
        if device.type == "cuda":
            method.to(memory_format=torch.channels_last)
        sampler = NegativeSampler.from_config(cfg.sampler, cfg.optim.epochs)
        size, batch = cfg.data.image_size, cfg.optim.batch_size
        views = [torch.randn(batch, 3, size, size, device=device) for _ in range(2)]
        indices = torch.arange(batch, device=device)
        fp32 = one_loss(
            copy.deepcopy(method),
            views,
            indices,
            sampler,
            torch.autocast(device.type, enabled=False),
        )
        dtypes = LossDtypes(cfg.moco.queue_size)
        bf16 = one_loss(
            copy.deepcopy(method),
            views,
            indices,
            sampler,
            torch.autocast(device.type, torch.bfloat16),
            dtypes,
        )
        # the ring's ranks go through topk on a GPU; on the CPU numpy ranks the very similarity
        # that "similarity" checks (pretrain/ranking.py), out of this dispatcher's sight
        ranked_by_topk = sampler_name == "ring" and device.type != "cpu"
        expected = {"similarity", "loss"} | ({"ranks"} if ranked_by_topk else set())
        if dtypes.wrong or not expected <= dtypes.seen:
            raise RuntimeError(
                f"bf16 autocast reached the loss ({sampler_name}): {dtypes.wrong} (checked: "
                f"{sorted(dtypes.seen)} of {sorted(expected)})"
            )
        figures[sampler_name] = {
            "fp32": fp32,
            "bf16": bf16,
            "relative": abs(bf16 - fp32) / abs(fp32),
        }
    worst = max(f["relative"] for f in figures.values())
    if worst > 0.02:  # bf16 keeps ~3 significant digits; the dtypes above are the sharp test
        raise RuntimeError(f"bf16 and fp32 losses differ by {worst:.3g} (relative): {figures}")
    return {"headline": {"worst relative loss gap": worst, "loss dtypes": "float32"}, **figures}


def resume_config(mode, output_dir, stop_after_epoch=None):
    big = mode == "gpu"
    batch, steps_per_epoch = (64, 50) if big else (8, 2)
    return {
        "method": "moco",
        "output_dir": str(output_dir),
        "device": "cuda" if big else "cpu",
        "model": {"arch": "resnet50"} if big else {"arch": "resnet18", "width": 0.25},
        "sampler": {"name": "ring"},
        "moco": {"queue_size": 4096 if big else 32},
        "data": {
            "name": "synthetic",
            "num_workers": 4 if big else 0,
            "synthetic": {
                "image_size": 64 if big else 32,
                "train_count": batch * steps_per_epoch,
                "test_count": 64,
            },
        },
        "optim": {"batch_size": batch, "epochs": 2},
        "train": {"stop_after_epoch": stop_after_epoch, "progress": False, "tensorboard": False},
        "knn": {"every_epochs": 0, "train_subset": 64, "test_subset": 64, "k": 5},
        # epoch 2 only: the stopped run still writes epoch 1 at its stop (3 writes, not 4)
        "checkpoint": {"every_epochs": 2},
    }


def final_checkpoint(output_dir):
    from pretrain.checkpoint import epoch_path, load_checkpoint

    return load_checkpoint(epoch_path(output_dir, 2))


def largest_difference(first, second):
    return max((first[k].float() - second[k].float()).abs().max().item() for k in first)


NONDETERMINISTIC = "does not have a deterministic implementation"
RESUME_TOLERANCE = 1e-2  # of the largest parameter, only where a kernel warned (see below)


def deterministic_cuda():
    """Deterministic CUDA kernels for the resume comparison. cuDNN's flag alone leaves e.g. the
    backward of the ring's gather over duplicate columns (an atomic scatter-add) free to sum
    in any order; ``warn_only`` lets a kernel without a deterministic version run (warning)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before the first cuBLAS call
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def resume_runs(mode, straight, resumed):
    """Straight, stopped and resumed training; the messages of nondeterministic kernels."""
    import warnings

    from pretrain.trainer import train

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(resume_config(mode, straight))
        train(resume_config(mode, resumed, stop_after_epoch=1))
        train(resume_config(mode, resumed))
    return sorted(
        {str(w.message).split(".")[0] for w in caught if NONDETERMINISTIC in str(w.message)}
    )


def resume_convert(mode, work_dir):
    """Exact agreement, or within ``RESUME_TOLERANCE`` where torch warned that a kernel it ran
    has no deterministic version (the warnings are in the figures)."""
    import shutil

    if mode == "gpu":
        deterministic_cuda()
    straight, resumed = work_dir / "resume_straight", work_dir / "resume_stopped"
    for folder in (straight, resumed):
        shutil.rmtree(folder, ignore_errors=True)
    nondeterministic = resume_runs(mode, straight, resumed)
    first, second = final_checkpoint(straight), final_checkpoint(resumed)
    gap = largest_difference(first["model"], second["model"])
    scale = max(value.float().abs().max().item() for value in first["model"].values())
    weights = work_dir / "converted.pkl"
    command = [sys.executable, str(REPO / "tools" / "convert_to_d2.py")]
    command += [str(straight / "checkpoints" / "epoch_0002.pth"), str(weights)]
    converted = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if converted.returncode != 0:
        raise RuntimeError(f"conversion failed: {converted.stderr.strip()[-300:]}")
    allowed = RESUME_TOLERANCE * scale if nondeterministic else 0.0
    if gap > allowed:
        raise RuntimeError(
            f"resumed run differs from the straight one by {gap:.3g} (allowed {allowed:.3g}; "
            f"nondeterministic kernels: {nondeterministic or 'none'})"
        )
    headline = {"steps": first["global_step"], "max parameter gap": gap, "converted": weights.name}
    headline["nondeterministic kernels"] = len(nondeterministic)
    return {
        "headline": headline,
        "nondeterministic_kernels": nondeterministic,
        "conversion_report": converted.stdout[-2000:],
    }


def detectron2_opts(mode, weights, output_dir):
    opts = ["MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(output_dir)]
    if mode == "gpu":
        opts += ["SOLVER.MAX_ITER", "50", "INPUT.MIN_SIZE_TRAIN", "(800,)"]
        opts += ["INPUT.MAX_SIZE_TRAIN", "1333", "INPUT.MIN_SIZE_TEST", "800"]
        opts += ["INPUT.MAX_SIZE_TEST", "1333", "DATALOADER.NUM_WORKERS", "4"]
        return opts
    opts += ["SOLVER.MAX_ITER", "2", "MODEL.FPN.OUT_CHANNELS", "64"]
    opts += ["MODEL.ROI_BOX_HEAD.FC_DIM", "128", "MODEL.ROI_MASK_HEAD.CONV_DIM", "64"]
    return opts + ["MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", "(64, 64)"]


def seconds_per_iteration(output_dir):
    """Median of Detectron2's logged per-iteration ``time`` (metrics.json) of the last run in
    the file, or None. Detectron2 appends to metrics.json: a rerun in the same folder adds its
    lines after the earlier run's, whose iterations start again from the beginning."""
    path = Path(output_dir) / "metrics.json"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    timed = [record for record in records if "time" in record and "iteration" in record]
    starts = [i for i in range(1, len(timed)) if timed[i]["iteration"] <= timed[i - 1]["iteration"]]
    last_run = timed[starts[-1] :] if starts else timed
    return statistics.median(r["time"] for r in last_run) if last_run else None


def detectron2(mode, work_dir):
    import shutil
    import time

    from transfer.engine import run

    weights = work_dir / "converted.pkl"
    if not weights.is_file():
        raise RuntimeError(f"no {weights}: the resume_convert part did not finish")
    figures, headline = {}, {}
    for task, config in (
        ("mask", "tiny_mask_rcnn_R50_FPN.yaml"),
        ("keypoint", "tiny_keypoint_rcnn_R50_FPN.yaml"),
    ):
        output_dir = work_dir / f"detectron2_{task}"
        shutil.rmtree(output_dir, ignore_errors=True)  # a fresh run, not a resumed or appended one
        started = time.perf_counter()
        results = run(
            str(REPO / "configs" / "transfer" / config), detectron2_opts(mode, weights, output_dir)
        )
        per_iteration = seconds_per_iteration(output_dir)
        figures[task] = {
            "results": results,
            "s_per_iter": per_iteration,
            "wall_s": time.perf_counter() - started,
        }
        headline[f"{task} s/iter"] = per_iteration if per_iteration is not None else "n/a"
        headline[f"{task} bbox AP"] = results.get("bbox", {}).get("AP")
    return {"headline": headline, **figures}


def study(mode, work_dir):
    command = [sys.executable, str(REPO / "tools" / "compare_negatives.py"), "--preset", "cpu"]
    command += ["--methods", "moco", "--seeds", "0", "1", "2"]
    command += ["--output", str(work_dir / "study"), "--report-dir", str(work_dir / "study_report")]
    if os.environ.get("RINGNCE_FMNIST_ROOT"):  # the device machine's carried copy
        command.append(f"data.root={os.environ['RINGNCE_FMNIST_ROOT']}")
    if mode == "gpu":  # ~60 s per run: 6 runs and their linear evaluations in about 7 minutes
        command += ["device=cuda", "data.num_workers=6", "optim.epochs=4"]
        command += ["--eval", "device=cuda", "--eval", "batch_size=1024", "--eval", "num_workers=6"]
    else:
        command += ["data.train_subset=256", "optim.epochs=1", "optim.batch_size=32"]
        command += ["moco.queue_size=64", "model.width=0.125", "knn.train_subset=64"]
        command += ["knn.test_subset=64", "--eval", "train_limit=512", "--eval", "test_limit=256"]
        command += ["--eval", "lbfgs_max_iter=20", "--eval", "weight_decays=[1e-4]"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"study exited {done.returncode}: {done.stderr.strip()[-400:]}")
    report = (work_dir / "study_report" / "results.md").read_text()
    return {
        "headline": {"report": str(work_dir / "study_report" / "results.md")},
        "results_md": report,
    }


PARTS = {
    "environment": environment,
    "ring_selection": ring_selection,
    "throughput": throughput,
    "augment_cost": augment_cost,
    "bf16_agreement": bf16_agreement,
    "resume_convert": resume_convert,
    "detectron2": detectron2,
    "study": study,
}
