"""DDP code paths on CPU (gloo, 2 processes via torchrun): banks and queues stay identical
across ranks, and SimCLR's all-gather gives the loss and gradients of one big batch."""

import subprocess
import sys
import textwrap

import pytest

WORKER = textwrap.dedent("""
    import os
    import torch, torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP
    from pretrain.distributed import init_distributed
    from pretrain.methods import METHODS
    from pretrain.samplers import NegativeSampler
    from pretrain.trainer import as_config

    torch.set_num_threads(1)

    def report(line):
        # one write(2) per line: both ranks share the pipe, and print() may split a line
        os.write(1, (line + "\\n").encode())

    cfg = as_config({"model": {"width": 0.125, "stem": "cifar", "embedding_dim": 8},
                     "moco": {"queue_size": 24, "shuffle_bn_splits": 2},
                     "ir": {"num_negatives": 16}})
    ring = NegativeSampler("ring", upper=0.5)
    # the whole ring once (no random redraw), so one process and two ranks compute the same loss
    whole_ring = NegativeSampler("ring", upper=0.5, num_negatives="ring")

    # SimCLR's single-process reference on the global batch, before joining the group
    torch.manual_seed(0)
    simclr = METHODS["simclr"](cfg, num_samples=32)
    simclr.encoder = nn.Flatten()
    simclr.head = nn.Linear(12, 8)
    torch.manual_seed(7)
    first, second = torch.randn(8, 12), torch.randn(8, 12)
    reference_loss, _ = simclr([first, second], torch.arange(8), whole_ring)
    reference_loss.backward()
    reference_grad = simclr.head.weight.grad.clone()
    simclr.head.weight.grad = None

    info = init_distributed("cpu")

    def same_everywhere(tensor):
        parts = [torch.empty_like(tensor) for _ in range(info.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return all(torch.equal(parts[0], p) for p in parts)

    for name in ("moco", "ir"):
        torch.manual_seed(0)
        method = METHODS[name](cfg, num_samples=32)
        model = DDP(method, broadcast_buffers=False)
        optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
        torch.manual_seed(100 + info.rank)  # each rank its own images and draws
        for step in range(3):
            views = [torch.rand(4, 3, 8, 8) for _ in range(method.num_views)]
            indices = torch.arange(4) + 4 * info.rank + 8 * step
            loss, _ = model(views, indices, ring)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        for key, value in method.state_dict().items():
            if "running" in key or "num_batches" in key:
                continue  # BN statistics are per rank by design
            assert same_everywhere(value), (name, key)
        report(f"{name} consistent")

    model = DDP(simclr)
    mine = slice(4 * info.rank, 4 * info.rank + 4)
    loss, _ = model([first[mine], second[mine]], torch.arange(4), whole_ring)
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    torch.testing.assert_close(mean_loss / info.world_size, reference_loss.detach())
    torch.testing.assert_close(simclr.head.weight.grad, reference_grad)
    report("simclr global batch ok")
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_ddp_keeps_ranks_consistent(tmp_path):
    script = tmp_path / "ddp_worker.py"
    script.write_text(WORKER)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for line in ("moco consistent", "ir consistent", "simclr global batch ok"):
        assert done.stdout.count(line) == 2, done.stdout
