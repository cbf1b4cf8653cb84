"""A small, exactly reproducible training job that checks a cluster before real work is sent.

``tools/submit.py probe`` trains a softmax regression on a seeded synthetic problem with
mini-batches drawn from a seeded generator, checkpointing (weights + generator state) after
every step. An interrupted and requeued probe therefore ends with bit-identical weights to an
uninterrupted one: comparing the two digests shows that preemption, requeue and resume work on
this cluster (the same path pretraining and transfer jobs take).
"""

import hashlib
import os
import socket
import time
from pathlib import Path

import submitit
import torch

from pretrain.atomic_write import atomic_write

CHECKPOINT_NAME = "probe_checkpoint.pt"
FEATURES, CLASSES, SAMPLES, BATCH = 32, 4, 512, 64


def synthetic_problem(seed):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(SAMPLES, FEATURES, generator=generator)
    true_weights = torch.randn(FEATURES, CLASSES, generator=generator)
    return inputs, (inputs @ true_weights).argmax(dim=1)


def weights_digest(weights):
    return hashlib.sha256(weights.numpy().tobytes()).hexdigest()[:16]


def save_atomically(state, path):
    atomic_write(path, lambda handle: torch.save(state, handle), binary=True)


def read_progress(workdir):
    """The step a probe's checkpoint has reached (0 when none is written yet)."""
    path = Path(workdir) / CHECKPOINT_NAME
    return torch.load(path)["step"] if path.exists() else 0


class ProbeJob(submitit.helpers.Checkpointable):
    def __call__(self, workdir, steps, seconds_per_step=0.0, seed=0, learning_rate=0.5):
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        checkpoint = workdir / CHECKPOINT_NAME
        torch.set_num_threads(1)
        inputs, labels = synthetic_problem(seed)
        batches = torch.Generator().manual_seed(seed + 1)
        weights = torch.zeros(FEATURES, CLASSES)
        start = 0
        if checkpoint.exists():
            state = torch.load(checkpoint)
            start, weights = state["step"], state["weights"]
            batches.set_state(state["generator"])
        for step in range(start, steps):
            index = torch.randint(0, SAMPLES, (BATCH,), generator=batches)
            probabilities = torch.softmax(inputs[index] @ weights, dim=1)
            probabilities[torch.arange(BATCH), labels[index]] -= 1.0
            weights = weights - learning_rate * inputs[index].T @ probabilities / BATCH
            save_atomically(
                {"step": step + 1, "weights": weights, "generator": batches.get_state()},
                checkpoint,
            )
            # stands in for the seconds a real training step takes, so a test can interrupt
            # the job mid-run
            time.sleep(seconds_per_step)
        loss = torch.nn.functional.cross_entropy(inputs @ weights, labels).item()
        return {
            "steps": steps,
            "resumed_from_step": start,
            "loss": loss,
            "accuracy": ((inputs @ weights).argmax(dim=1) == labels).float().mean().item(),
            "digest": weights_digest(weights),
            "host": socket.gethostname(),
            "job_id": os.environ.get("SLURM_JOB_ID"),
        }
