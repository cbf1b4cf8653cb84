"""CUDA set-up decisions checked without a GPU: the device a task uses, cuDNN autotuning."""

import pytest
import torch

from pretrain.distributed import resolve_device
from pretrain.errors import PretrainError
from pretrain.trainer import tune_cudnn


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this process sees ``count`` CUDA GPUs."""

    def see(count):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return see


def test_a_task_bound_to_one_gpu_uses_it_whatever_its_local_rank(gpus):
    """Slurm's --gpus-per-task=1 shows each task its own GPU only, as cuda:0."""
    gpus(1)
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 0)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 0)


def test_tasks_seeing_all_gpus_pick_theirs_by_local_rank(gpus):
    gpus(4)
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 3)
    with pytest.raises(PretrainError, match="^LOCAL_RANK=5 but this process sees 4 GPUs; give"):
        resolve_device("cuda", local_rank=5)


@pytest.fixture
def cudnn_flags():
    saved = torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()
    yield
    torch.backends.cudnn.benchmark = saved[0]
    torch.use_deterministic_algorithms(saved[1])


def test_cudnn_autotunes_on_a_gpu_unless_determinism_is_asked(cudnn_flags):
    torch.backends.cudnn.benchmark = False
    tune_cudnn(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    tune_cudnn(torch.device("cuda", 0))
    assert torch.backends.cudnn.benchmark is True
    torch.use_deterministic_algorithms(True)
    tune_cudnn(torch.device("cuda", 0))
    assert torch.backends.cudnn.benchmark is False


def test_the_resume_check_asks_cuda_for_deterministic_kernels(cudnn_flags, monkeypatch):
    """cuDNN's flag does not cover e.g. the atomic scatter-add of the ring's gather backward:
    the check turns on deterministic algorithms (warning where a kernel has none), with the
    cuBLAS workspace they need, and the trainer then leaves cuDNN's autotuning off."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import gpu_check_parts

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = torch.backends.cudnn.deterministic
    try:
        gpu_check_parts.deterministic_cuda()
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert gpu_check_parts.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        tune_cudnn(torch.device("cuda", 0))
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.deterministic = saved
