"""The functions submitit runs on the cluster: pretraining and transfer, both requeueable.

Both are ``submitit.helpers.Checkpointable``: on preemption or a time limit submitit calls
``checkpoint()``, which resubmits the same call, and the call itself resumes from the last
checkpoint on disk (pretraining with ``resume=auto``, Detectron2 with ``resume=True``), so a
requeued job continues where the interrupted one stopped.
"""

import os

import submitit

from pretrain.distributed import master_address

# ports below 20000 are often taken by services; 40000 consecutive job ids map to distinct ports
PORT_BASE = 20000
PORT_SPAN = 40000


def rendezvous_port(job_id):
    """The TCP port a job's processes meet on, from its Slurm job id.

    Every array task has its own ``SLURM_JOB_ID``, so two tasks (or jobs) sharing a node get
    different ports as long as their ids differ by less than PORT_SPAN.
    """
    return PORT_BASE + int(job_id) % PORT_SPAN


def _slurm_job_id():
    return os.environ.get("SLURM_JOB_ID")


def distributed_environment():
    """RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT for this submitit task: the master is
    the first host of ``SLURM_JOB_NODELIST`` (submitit expands it with ``scontrol show
    hostnames``), resolved to its address."""
    env = submitit.JobEnvironment()
    # every task of the job must agree: Slurm's own id (unique per array task), else submitit's
    # id of a local job (shared by its tasks)
    job_id = _slurm_job_id() or env.job_id
    return {
        "RANK": str(env.global_rank),
        "WORLD_SIZE": str(env.num_tasks),
        "LOCAL_RANK": str(env.local_rank),
        "MASTER_ADDR": master_address(env.hostnames[0], env.num_nodes),
        "MASTER_PORT": str(rendezvous_port(job_id)),
    }


def load_pretrain_config(config_path, overrides=()):
    """The resolved pretraining config, validated against the trainer's schema, always with
    ``resume=auto`` so a requeued job continues from its last checkpoint."""
    from pretrain.trainer import load_pretrain_config as load

    return load(config_path, [*overrides, "resume=auto"])


class PretrainJob(submitit.helpers.Checkpointable):
    """One DDP pretraining run: one submitit task per GPU, on one or more nodes."""

    def __call__(self, config_path, overrides=()):
        os.environ.update(distributed_environment())
        from pretrain.trainer import train

        return train(load_pretrain_config(config_path, overrides))


class TransferJob(submitit.helpers.Checkpointable):
    """One Detectron2 training + evaluation: one submitit task per node, Detectron2's
    ``launch`` starts ``num_gpus`` processes on each."""

    def __init__(self, num_gpus=1, datasets=()):
        self.num_gpus = num_gpus
        self.datasets = list(datasets)  # own COCO datasets, NAME=ANNOTATIONS.json:IMAGE_DIR

    def __call__(self, config_file, opts=()):
        if isinstance(config_file, dict):  # a classification task and its run
            from launcher.classification import run_job

            return run_job(config_file, opts)
        from transfer.engine import run

        env = submitit.JobEnvironment()
        job_id = _slurm_job_id()
        # a single process on one machine needs no rendezvous; under Slurm the port comes
        # from the job id so concurrent array tasks on one node never collide
        dist_url = (
            f"tcp://{master_address(env.hostnames[0], env.num_nodes)}:{rendezvous_port(job_id)}"
            if job_id and (env.num_nodes > 1 or self.num_gpus > 1)
            else "auto"
        )
        return run(
            config_file,
            opts=list(opts),
            num_gpus=self.num_gpus,
            num_machines=env.num_nodes,
            machine_rank=env.node,
            dist_url=dist_url,
            resume=True,
            datasets=self.datasets,
        )
