"""Process-group set-up from torchrun/submitit environment variables, the rendezvous address of
a Slurm job, and gathers.

Single-process runs (``WORLD_SIZE`` unset or 1) never touch ``torch.distributed``: every
helper below is then the identity, so the same method code runs on a laptop and under DDP.
"""

import hashlib
import ipaddress
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self):
        return self.rank == 0


def is_distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def resolve_device(requested, local_rank=0):
    """This process's device. With one GPU visible it is that GPU, whatever ``LOCAL_RANK``
    (clusters that bind one GPU per task show each task only its own, as ``cuda:0``); with
    several, the task's rank on the node picks one."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    from pretrain.errors import PretrainError

    if not torch.cuda.is_available():
        raise PretrainError("device=cuda but no CUDA GPU is visible; use device=cpu or auto")
    visible = torch.cuda.device_count()
    if visible == 1:
        return torch.device("cuda", 0)
    if local_rank >= visible:
        raise PretrainError(
            f"LOCAL_RANK={local_rank} but this process sees {visible} GPUs; give each task "
            "one GPU (e.g. --gpus-per-task=1) or every task all of the node's GPUs"
        )
    return torch.device("cuda", local_rank)


def init_distributed(requested_device="auto"):
    """Join the process group named by ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size
        )
    return DistInfo(rank, world_size, local_rank, device)


def master_address(first_host, num_nodes):
    """The IPv4 address every rank dials: the job's first host (Slurm's node list order), resolved
    here so all ranks use one address. A multi-node job whose first host resolves to loopback
    (a hosts file mapping the node name to 127.0.1.1, say) would have every other node dial
    itself and hang at the rendezvous, so that is an error instead."""
    try:
        address = socket.gethostbyname(first_host)
    except OSError as error:
        from pretrain.errors import PretrainError

        raise PretrainError(
            f"cannot resolve the job's first host {first_host!r} ({error}); the nodes must "
            "resolve each other's names (DNS or /etc/hosts)"
        ) from error
    if num_nodes > 1 and ipaddress.ip_address(address).is_loopback:
        from pretrain.errors import PretrainError

        raise PretrainError(
            f"the job's first host {first_host!r} resolves to the loopback address {address}, "
            "which other nodes cannot reach; map it to its network address in /etc/hosts or DNS"
        )
    return address


REPLICA_LOCAL = ("running_mean", "running_var", "num_batches_tracked")


def replicated_state_digest(module):
    """A hash of everything DDP keeps equal on every rank: weights and buffers (memory bank,
    queue and its pointer), leaving out BatchNorm statistics, which are per rank by design.
    Equal digests from all ranks prove the replicas agree bit for bit."""
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        if name.endswith(REPLICA_LOCAL):
            continue
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def gather_no_grad(tensor):
    """Concatenation over ranks along dim 0 (rank order); the identity in one process."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slice."""

    @staticmethod
    def forward(ctx, tensor):
        ctx.rank, ctx.size = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def gather_with_grad(tensor):
    """Concatenation over ranks that lets gradients flow back to every rank's own slice."""
    return _GatherWithGrad.apply(tensor) if is_distributed() else tensor


def local_slice(tensor):
    """This rank's block of a tensor gathered with ``gather_*`` (rank order, equal blocks)."""
    if not is_distributed():
        return tensor
    size = tensor.shape[0] // dist.get_world_size()
    rank = dist.get_rank()
    return tensor[rank * size : (rank + 1) * size]


def broadcast_(tensor):
    """Give every rank rank 0's values (e.g. a shuffling permutation)."""
    if is_distributed():
        dist.broadcast(tensor, src=0)
    return tensor


def broadcast_buffers_(module):
    """Give every rank rank 0's buffers (IR/CMC memory banks, MoCo's queue). DDP runs with
    ``broadcast_buffers=False`` (BatchNorm statistics stay per rank) and so never syncs them:
    without this, each rank's randomly initialised bank differs and, updated with momentum,
    stays different for the whole run."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
    return module


def all_reduce_mean(value):
    if not is_distributed():
        return value
    tensor = torch.as_tensor(value, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(tensor)
    return tensor.item() / dist.get_world_size()


def all_reduce_sum(values):
    """Element-wise sums of a list of numbers over ranks, in one collective; every rank must
    call it (a rank that skips it leaves the others waiting)."""
    if not is_distributed():
        return [float(value) for value in values]
    tensor = torch.tensor([float(value) for value in values], dtype=torch.float64)
    tensor = tensor.to(_comm_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def _comm_device():
    return (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )


def barrier():
    if is_distributed():
        dist.barrier()
