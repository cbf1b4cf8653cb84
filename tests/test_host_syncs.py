"""One training step makes no host sync, for every method and with ``augment_on: gpu``.

A sync stalls the host until the GPU's queue drains, so the next kernels are queued late: the
step's docstring promises none. The step runs on fake CUDA tensors (tests/host_syncs.py) from
a real loader batch, through ``pretrain.trainer.device_step`` as the training loop calls it,
with bf16 autocast and channels_last as on a GPU.
"""

import pytest
import torch
from host_syncs import HostSyncs, fake_cuda
from torch import nn

from pretrain.distributed import DistInfo
from pretrain.methods import build_method
from pretrain.trainer import (
    as_config,
    build_optimization,
    build_training,
    device_step,
    train_loader,
)

CASES = [
    (method, sampler, "cpu")
    for method in ("moco", "simclr", "ir", "cmc")
    for sampler in ("uniform", "ring")
] + [(method, "ring", "gpu") for method in ("moco", "simclr", "ir")]
CASES += [("supervised", "uniform", "cpu")]


def first_batch(run):

    views, _, indices = next(
        iter(train_loader(run.train_set, run.batch_per_rank, 0, run.cfg, run.info))
    )
    return views, indices


def on_the_device(run, method):
    """``run`` with ``method`` and its optimizer on fake CUDA, as ``build_training`` puts them
    there: every parameter and buffer is made afresh as a fake CUDA tensor of its shape (a real
    tensor cannot be turned into a fake one in place; building under fake mode would have MoCo
    deep-copy fake tensors, which they do not support)."""
    run.method = method
    for module in run.method.modules():
        for name, param in module._parameters.items():
            if param is not None:
                module._parameters[name] = nn.Parameter(on_cuda(param), param.requires_grad)
        for name, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[name] = on_cuda(buffer)
    run.model = run.method.train()
    run.optimizer, run.scheduler = build_optimization(run.cfg, run.method, run.steps_per_epoch)
    run.info = DistInfo(device=torch.device("cuda"))
    run.memory_format = torch.channels_last
    run.use_amp = True


def on_cuda(tensor):
    return torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device="cuda")


def stand_in_backward(method):
    """CUDA's autograd engine needs a driver, so backward is skipped: its kernels are torch's,
    none of our code runs there. The parameters get gradients for the optimizer's step."""

    def backward(loss, *args, **kwargs):
        for param in method.parameters():
            if param.requires_grad:
                param.grad = torch.zeros_like(param)

    return backward


@pytest.mark.parametrize("method, sampler, augment_on", CASES)
def test_one_training_step_makes_no_host_sync(
    method, sampler, augment_on, tiny_config, monkeypatch
):
    tiny_config.update(method=method, sampler={"name": sampler, "upper": 0.5})
    tiny_config["data"]["augment_on"] = augment_on
    tiny_config["data"]["synthetic"]["image_size"] = 32
    run = build_training(as_config(tiny_config))
    views, indices = first_batch(run)
    method = build_method(  # on the CPU; on_the_device makes its fake CUDA tensors
        run.cfg,
        len(run.train_set),
        run.source.channels,
        run.source.name,
        run.train_set.labels,
        run.source.num_classes,
    )
    with fake_cuda():
        on_the_device(run, method)
        monkeypatch.setattr(torch.Tensor, "backward", stand_in_backward(run.method))
        with HostSyncs() as syncs:
            loss, _ = device_step(run, views, indices)
    assert loss.device.type == "cuda"
    assert not syncs.found, "\n".join(syncs.found)
