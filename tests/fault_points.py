"""Points where a Slurm fault test holds a job until it has done its damage, so each fault lands
at the moment it is meant to, by design, never by timing.

- ``HeldTransferJob``: a TransferJob whose Detectron2 run, if its OUTPUT_DIR holds ``HOLD_FILE``
  (an iteration count N), stops right after iteration N's checkpoint, writes ``HELD_FILE`` (its
  host) and waits for ``RELEASE_FILE``. A run resumed from that checkpoint starts after it and is
  not held again.
- ``HeldProbeJob`` and ``HeldPretrainJob``: the same after the probe's step N or the
  pretraining's epoch N checkpoint (``HOLD_FILE`` in the probe's workdir or the run's
  output_dir).
- ``launch_hold``: an sbatch line that holds array task I before its ``srun`` (the step's launch)
  while ``launch_I`` exists in a folder, after writing ``at_launch_I`` (its host); it removes
  ``launch_I`` so a requeued run of the task goes straight on.

Jobs import this module by name: the submitting test puts tests/ on the jobs' PYTHONPATH.
"""

import os
import socket
import time
from pathlib import Path

from launcher.jobs import PretrainJob, TransferJob
from launcher.probe import ProbeJob

HOLD_FILE = "hold_after_iteration"
HELD_FILE = "held"
RELEASE_FILE = "release"
POLL_S = 0.1  # how often a held job looks for its release file


def write_atomically(path, text):
    partial = Path(f"{path}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def hold_if_asked(directory, done):
    """Hold here if ``directory`` asks for a hold once ``done`` (an iteration, step or epoch
    count) is checkpointed: write HELD_FILE, then wait for RELEASE_FILE."""
    hold = Path(directory) / HOLD_FILE
    if not hold.is_file() or done != int(hold.read_text()):
        return
    write_atomically(Path(directory) / HELD_FILE, socket.gethostname())
    while not (Path(directory) / RELEASE_FILE).exists():
        time.sleep(POLL_S)


def hold_after_checkpoint_hook():
    """A Detectron2 hook run after the PeriodicCheckpointer (hooks run in order): iteration N's
    checkpoint is on disk when the hold starts."""
    from detectron2.engine import HookBase  # after transfer's _C fallback, which the caller loads

    class HoldAfterCheckpoint(HookBase):
        def after_step(self):
            hold_if_asked(self.trainer.cfg.OUTPUT_DIR, self.trainer.iter + 1)

    return HoldAfterCheckpoint()


class HeldTransferJob(TransferJob):
    def __call__(self, config_file, opts=()):
        from transfer.engine import Trainer

        build_hooks = Trainer.build_hooks
        Trainer.build_hooks = lambda trainer: [*build_hooks(trainer), hold_after_checkpoint_hook()]
        return super().__call__(config_file, opts)


class HeldProbeJob(ProbeJob):
    def __call__(self, workdir, *args, **kwargs):
        import launcher.probe

        save = launcher.probe.save_atomically

        def save_then_hold(state, path):
            save(state, path)
            hold_if_asked(workdir, state["step"])

        launcher.probe.save_atomically = save_then_hold
        return super().__call__(workdir, *args, **kwargs)


class HeldPretrainJob(PretrainJob):
    def __call__(self, config_path, overrides=()):
        import pretrain.checkpoint

        save = pretrain.checkpoint.save_checkpoint

        def save_then_hold(checkpoint, output_dir, epoch):
            path = save(checkpoint, output_dir, epoch)
            hold_if_asked(output_dir, epoch)
            return path

        pretrain.checkpoint.save_checkpoint = save_then_hold
        return super().__call__(config_path, overrides)


def hold_after(directory, done):
    """Ask the job writing ``directory`` to hold once ``done`` is checkpointed."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / HOLD_FILE).write_text(str(done))


def launch_hold(folder):
    """The sbatch line holding the array tasks named by ``launch_<index>`` files in ``folder``."""
    task = f"{folder}/%s_$SLURM_ARRAY_TASK_ID"
    return (
        f'if rm "{task % "launch"}" 2>/dev/null; then '
        f'hostname > "{task % "at_launch"}.partial" && '
        f'mv "{task % "at_launch"}.partial" "{task % "at_launch"}"; '
        f'while [ ! -e "{task % "release_launch"}" ]; do sleep {POLL_S}; done; fi'
    )
