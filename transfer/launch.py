"""Start one Detectron2 worker process per GPU, each backing ``detectron2._C`` before it imports
any Detectron2 module: ``launch(main_func, num_gpus, ...)``, Detectron2's ``launch`` contract.

A spawned worker starts with no modules and imports what it unpickles, in order: first the
function spawn runs, then its arguments. Detectron2's own ``launch`` hands spawn its
``_distributed_worker``, whose package imports ``detectron2.layers``, which imports
``detectron2._C``: without the compiled extension every worker dies of ImportError before
anything of ours runs. (``train_net.py --num-gpus N`` escaped because spawn re-imports a script
run as ``__main__`` first; a submitit job's ``__main__`` is submitit's, which imports nothing of
ours.) ``_worker`` lives in the ``transfer`` package, whose ``__init__`` registers the fallback
(``transfer.detectron2_env``), so unpickling it registers the fallback whatever started the job.
"""

import socket
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm

from transfer.errors import TransferError

TIMEOUT = timedelta(minutes=30)  # Detectron2's default for its process group


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(main_func, num_gpus, num_machines=1, machine_rank=0, dist_url="auto", args=()):
    """``main_func(*args)`` here for one process, else in ``num_gpus`` spawned workers on this
    machine (NCCL on GPUs, gloo without), ranks ``machine_rank * num_gpus + local rank``."""
    world_size = num_gpus * num_machines
    if world_size == 1:
        return main_func(*args)
    if dist_url == "auto":
        if num_machines > 1:
            raise TransferError("dist_url auto works on one machine; pass tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{free_port()}"
    worker_args = (main_func, world_size, num_gpus, machine_rank, dist_url, args)
    mp.start_processes(
        _worker, nprocs=num_gpus, args=worker_args, daemon=False, start_method="spawn"
    )
    return None


def _worker(local_rank, main_func, world_size, num_gpus, machine_rank, dist_url, args):
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        "nccl" if on_gpu else "gloo",
        init_method=dist_url,
        world_size=world_size,
        rank=machine_rank * num_gpus + local_rank,
        timeout=TIMEOUT,
    )
    # Detectron2's comm.get_local_rank/size read the group of this machine's processes; every
    # rank creates every machine's group (new_group is collective)
    for machine in range(world_size // num_gpus):
        group = dist.new_group(list(range(machine * num_gpus, (machine + 1) * num_gpus)))
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()
