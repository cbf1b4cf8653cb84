"""Learning-rate schedule (warmup then cosine or step) and the ring's ``upper`` schedule."""

import math

from pretrain.errors import PretrainError

LR_SCHEDULES = ("cosine", "step", "constant")
RING_SCHEDULES = ("constant", "linear", "cosine", "step")


def lr_factor(step, total_steps, warmup_steps, schedule, milestone_steps=(), gamma=0.1):
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    if schedule not in LR_SCHEDULES:
        raise PretrainError(
            f"unknown optim.schedule '{schedule}'; choose one of {', '.join(LR_SCHEDULES)}"
        )
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    if schedule == "step":
        return gamma ** sum(step >= m for m in milestone_steps)
    return 1.0


def ring_upper_at(epoch, schedule, start, target, anneal_epochs, step_epochs=None):
    """The ring's ``upper`` at ``epoch`` (float).

    ``linear``/``cosine`` go from ``start`` (1.0: ranks [lower_ratio, 1), not uniform) down to
    ``target`` over ``anneal_epochs`` then stay; ``step`` holds ``start`` until
    ``anneal_epochs`` then drops to ``target``, or, with a list ``step_epochs``, drops
    geometrically at each listed epoch so that it reaches ``target`` at the last one;
    ``constant`` is ``target`` throughout.
    """
    if schedule not in RING_SCHEDULES:
        raise PretrainError(
            f"unknown sampler.schedule '{schedule}'; choose one of {', '.join(RING_SCHEDULES)}"
        )
    if schedule == "constant":
        return target
    if schedule == "step":
        milestones = list(step_epochs) if step_epochs else [anneal_epochs]
        passed = sum(epoch >= m for m in milestones)
        return start * (target / start) ** (passed / len(milestones))
    if anneal_epochs <= 0:
        return target
    progress = min(epoch / anneal_epochs, 1.0)
    if schedule == "linear":
        return start + (target - start) * progress
    return target + (start - target) * 0.5 * (1.0 + math.cos(math.pi * progress))
