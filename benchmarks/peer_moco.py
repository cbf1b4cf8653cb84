"""Our MoCo v2 training step against lightly's, interleaved in one run.

    python -m benchmarks.peer_moco [--preset cpu|gpu|smoke] [--device cpu|cuda]
        [--cases resnet18-narrow,resnet50] [--steps N] [--rounds N] [--threads N] [--json OUT]

``ours`` is ``pretrain.trainer.train_step`` on the project's MoCo v2 method (uniform negatives,
one shuffle-BN group, as lightly's), its SGD and schedule. ``lightly`` is lightly's documented
MoCo v2 step (its ImageNet ResNet-50 MoCo v2 benchmark, the steps of its PyTorch example):
query through backbone and ``MoCoProjectionHead``, ``update_momentum`` of backbone and head,
keys encoded under ``batch_shuffle``/``batch_unshuffle``, ``NTXentLoss`` with its memory bank as
the queue, backward, SGD, cosine schedule. Both sides share the backbone (the project's
``ScaledResNet``, the same architecture built twice), batch, queue, temperature, momentum, SGD
settings, threads and the same synthetic views already on the device; on a GPU both run under
bf16 autocast with channels_last (the trainer's GPU defaults). Before timing, the two steps must
give the same loss from the same weights and queue (they compute the same thing).

Rounds alternate which side goes first; each segment skips warm-up steps and times the rest. The
figure per side is the median over rounds of seconds per step; ``lightly/ours`` is the ratio of
those medians (above 1: ours is faster). lightly is an optional extra (``pip install
'.[peer]'``), for this benchmark only: install it in a separate virtualenv, never the project's.
"""

import argparse
import copy
import sys
import time
from contextlib import nullcontext

import torch

from benchmarks.timing import finish_run, machine_facts, median, synchronize
from benchmarks.train_throughput import Trainee
from pretrain.backbones import build_backbone
from pretrain.errors import PretrainError, one_line_errors
from pretrain.trainer import as_config

LOSS_TOLERANCE = 1e-4  # float32 sums in a different order; a different computation is far off
EMBEDDING_DIM = 128

# Shapes of the project's two MoCo recipes (Fashion-MNIST config; ImageNet, MoCo v2's own),
# with the ResNet-50's batch and input cut to what two CPU cores step in seconds.
CASES = {
    "resnet18-narrow": {
        "model": {"arch": "resnet18", "width": 0.25, "stem": "imagenet"},
        "image_size": 64, "batch": 256, "queue": 4096, "temperature": 0.1, "momentum": 0.99,
    },
    "resnet50": {
        "model": {"arch": "resnet50", "width": 1.0, "stem": "imagenet"},
        "image_size": 96, "batch": 32, "queue": 65536, "temperature": 0.2, "momentum": 0.999,
    },
}  # fmt: skip
PRESETS = {
    "cpu": {"device": "cpu", "warmup": 2, "steps": 10, "rounds": 3, "overrides": {}},
    # MoCo v2's ImageNet shape for the ResNet-50 (batch 256 of 224 px, queue 65,536)
    "gpu": {"device": "cuda", "warmup": 10, "steps": 50, "rounds": 3,
            "overrides": {"resnet50": {"image_size": 224, "batch": 256}}},
    "smoke": {"device": "cpu", "warmup": 1, "steps": 1, "rounds": 1,
              "overrides": {name: {"image_size": 32, "batch": 8, "queue": 64} for name in CASES}},
}  # fmt: skip


def import_lightly():
    try:
        import lightly  # noqa: F401
    except ImportError:
        raise PretrainError(
            "lightly is not installed: this benchmark compares against it; install it in a "
            "separate virtualenv with pip install -e '.[peer]' (never into the project's .venv)"
        ) from None


# ---- the two steps ---------------------------------------------------------------------------


def our_config(case):
    return as_config(
        {
            "method": "moco",
            "model": {**case["model"], "head": "mlp", "embedding_dim": EMBEDDING_DIM},
            "sampler": {"name": "uniform"},
            "moco": {
                "queue_size": case["queue"],
                "temperature": case["temperature"],
                "momentum": case["momentum"],
                "shuffle_bn_splits": 1,  # lightly's batch shuffle is one BN group per device
            },
            "optim": {"batch_size": case["batch"]},
            "train": {"amp": True, "channels_last": True},  # on a GPU only (the trainer's rule)
        }
    )


class LightlyMoCoV2:
    """lightly's MoCo v2 step, as its docs write it, over the project's backbone."""

    def __init__(self, case, cfg, steps, device, use_amp, memory_format):
        from lightly.loss import NTXentLoss
        from lightly.models.modules import MoCoProjectionHead
        from lightly.models.utils import deactivate_requires_grad
        from lightly.utils.scheduler import CosineWarmupScheduler

        self.backbone = build_backbone(**case["model"]).to(device, memory_format=memory_format)
        dim = self.backbone.feature_dim
        self.projection_head = MoCoProjectionHead(dim, dim, EMBEDDING_DIM).to(device)
        self.key_backbone = copy.deepcopy(self.backbone)
        self.key_projection_head = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.key_backbone)
        deactivate_requires_grad(self.key_projection_head)
        self.criterion = NTXentLoss(
            temperature=case["temperature"], memory_bank_size=(case["queue"], EMBEDDING_DIM)
        ).to(device)
        self.momentum = case["momentum"]
        parameters = [*self.backbone.parameters(), *self.projection_head.parameters()]
        self.optimizer = torch.optim.SGD(
            parameters,
            lr=cfg.optim.lr,
            momentum=cfg.optim.momentum,
            weight_decay=cfg.optim.weight_decay,
        )
        self.scheduler = CosineWarmupScheduler(self.optimizer, warmup_epochs=0, max_epochs=steps)
        self.use_amp = use_amp
        for module in (self.backbone, self.projection_head, self.key_backbone):
            module.train()

    def autocast(self):  # the trainer's rule, as Trainee.autocast
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.use_amp else nullcontext()

    def copy_from(self, method):
        """Take our method's weights and queue (for the same-loss check)."""
        self.backbone.load_state_dict(method.query.state_dict())
        self.projection_head.layers.load_state_dict(method.head_q.state_dict())
        self.key_backbone.load_state_dict(method.key.state_dict())
        self.key_projection_head.layers.load_state_dict(method.head_k.state_dict())
        self.criterion.memory_bank.bank.copy_(method.queue)

    @torch.no_grad()
    def keys(self, images):
        from lightly.models.utils import batch_shuffle, batch_unshuffle

        images, shuffle = batch_shuffle(batch=images)
        features = self.key_backbone(images).flatten(start_dim=1)
        return batch_unshuffle(batch=self.key_projection_head(features), shuffle=shuffle)

    def loss(self, views):
        from lightly.models.utils import update_momentum

        with self.autocast():
            query = self.projection_head(self.backbone(views[0]).flatten(start_dim=1))
            update_momentum(self.backbone, self.key_backbone, m=self.momentum)
            update_momentum(self.projection_head, self.key_projection_head, m=self.momentum)
            key = self.keys(views[1])
            return self.criterion(query, key)

    def step(self, views, indices):
        loss = self.loss(views)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.scheduler.step()
        return loss.detach()


def build_pair(case, device, steps):
    """``{"ours": Trainee, "lightly": LightlyMoCoV2}`` for one case."""
    cfg = our_config(case)
    ours = Trainee(cfg, case["batch"] * steps, device)
    theirs = LightlyMoCoV2(case, cfg, steps, device, ours.use_amp, ours.memory_format)
    return {"ours": ours, "lightly": theirs}


def check_same_loss(pair, views, indices):
    """From the same weights and queue, the two steps' losses agree (on copies: no state moves)."""
    ours, theirs = copy.deepcopy(pair["ours"]), copy.deepcopy(pair["lightly"])
    theirs.copy_from(ours.method)
    with ours.autocast():
        our_loss, _ = ours.method(views, indices, ours.sampler)
    their_loss = theirs.loss(views)
    our_loss, their_loss = float(our_loss.detach()), float(their_loss.detach())
    difference = abs(our_loss - their_loss)
    tolerance = LOSS_TOLERANCE if views[0].device.type == "cpu" else 1e-2  # bf16 on a GPU
    if not difference <= tolerance:
        raise PretrainError(
            f"ours and lightly's MoCo v2 losses differ by {difference:.3g} from the same weights "
            f"and queue ({our_loss:.6f} vs {their_loss:.6f}): the steps do not "
            "compute the same thing, so their times cannot be compared"
        )
    return our_loss, their_loss


# ---- measurement -----------------------------------------------------------------------------


def segment(side, views, indices, warmup, steps):
    """Seconds per step of ``side`` over ``steps`` steps after ``warmup``."""
    device = views[0].device
    for _ in range(warmup):
        side.step(views, indices)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        side.step(views, indices)
    synchronize(device)
    return (time.perf_counter() - started) / steps


def measure_case(name, case, preset, device, steps, rounds):
    pair = build_pair(case, device, (preset["warmup"] + steps) * rounds)  # the schedules' length
    memory_format = pair["ours"].memory_format
    shape = (case["batch"], 3, case["image_size"], case["image_size"])
    generator = torch.Generator().manual_seed(0)
    views = [
        torch.randn(shape, generator=generator).to(device, memory_format=memory_format)
        for _ in range(2)
    ]
    indices = torch.arange(case["batch"], device=device)
    our_loss, their_loss = check_same_loss(pair, views, indices)
    times = {side: [] for side in pair}
    for round_index in range(rounds):
        order = list(pair) if round_index % 2 == 0 else list(pair)[::-1]
        for side in order:
            print(f"round {round_index + 1}/{rounds}: {name} {side}", file=sys.stderr, flush=True)
            times[side].append(segment(pair[side], views, indices, preset["warmup"], steps))
    ours_s, lightly_s = median(times["ours"]), median(times["lightly"])
    return {"case": name, "device": device.type, **{k: case[k] for k in CASES[name]},
            "ours_s_per_step": ours_s, "lightly_s_per_step": lightly_s,
            "lightly_over_ours": lightly_s / ours_s, "ours_runs_s": times["ours"],
            "lightly_runs_s": times["lightly"], "check_loss_ours": our_loss,
            "check_loss_lightly": their_loss}  # fmt: skip


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=PRESETS, default="cpu")
    parser.add_argument("--cases", default=",".join(CASES), help="comma list of cases")
    parser.add_argument("--steps", type=int, help="timed steps per segment")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: the preset's")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    args.steps = preset["steps"] if args.steps is None else args.steps
    args.rounds = preset["rounds"] if args.rounds is None else args.rounds
    args.device = args.device or preset["device"]
    args.cases = args.cases.split(",")
    for case in args.cases:
        if case not in CASES:
            raise PretrainError(f"unknown case '{case}' in --cases; choose from {', '.join(CASES)}")
    for option in ("steps", "rounds", "threads"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise PretrainError(f"--{option} must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise PretrainError("no CUDA GPU is visible for --preset gpu / --device cuda; use cpu")
    return args


@one_line_errors
def main(argv=None):
    args = parse_args(argv)
    import_lightly()
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    device = torch.device(args.device)
    facts = machine_facts()
    rows = []
    for name in args.cases:
        case = {**CASES[name], **preset["overrides"].get(name, {})}
        rows.append(measure_case(name, case, preset, device, args.steps, args.rounds))
    print("case             batch  px  queue   ours s/step  lightly s/step  same-loss check")
    for row in rows:
        print(
            f"{row['case']:<16} {row['batch']:>5} {row['image_size']:>3} {row['queue']:>6} "
            f"{row['ours_s_per_step']:>13.4f} {row['lightly_s_per_step']:>15.4f}  "
            f"{row['check_loss_ours']:.5f} = {row['check_loss_lightly']:.5f}"
        )
    settings = {"threads": torch.get_num_threads(), "steps": args.steps, "rounds": args.rounds}
    finish_run("peer_moco", args, settings, facts, rows)
    for row in rows:
        print(f"lightly/ours {row['case']} ({row['device']}): {row['lightly_over_ours']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
