"""Counting a CUDA step's host syncs on a machine without a GPU (tests/test_host_syncs.py).

Under ``FakeTensorMode`` a tensor can live on ``cuda`` with no driver: ops compute shapes
only, so a whole training step runs on the CPU in milliseconds. ``HostSyncs`` sits above it and
records each op that makes the host wait for the device on real CUDA:

- ``_local_scalar_dense``: a tensor read as a Python number (``.item()``, ``int()``,
  ``float()``, ``bool()``, ``if tensor:``);
- ops whose output shape depends on the data (``nonzero``, boolean-mask indexing,
  ``masked_select``, ``unique``, ``repeat_interleave`` without ``output_size``): the host needs
  the count before it can allocate;
- copies between the host and the device without ``non_blocking`` (``.to(device)``,
  ``.cpu()``, ``torch.tensor(..., device=)``, ``new_tensor``): the host waits for the stream.

Each is given a stand-in result (0; the largest possible shape) so the step runs on and every
sync is counted, not just the first. ``found`` lists them with the line of our code that made
each.
"""

import traceback
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
REPO = Path(__file__).resolve().parents[1]
DATA_DEPENDENT = {
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.repeat_interleave.Tensor,
}


def our_line():
    """``file:line`` of the innermost frame of this repository's code (tests excluded)."""
    for frame in reversed(traceback.extract_stack()):
        path = Path(frame.filename)
        if path.is_relative_to(REPO) and not {"tests", ".venv"} & set(path.relative_to(REPO).parts):
            return f"{path.relative_to(REPO)}:{frame.lineno}"
    return "?"


def crosses_host(source, kwargs):
    target = kwargs.get("device") or source.device
    return torch.device(target).type != source.device.type


def stand_in(func, args):
    """A result for a data-dependent op: the largest shape it could have, as a fake tensor."""
    if func is aten.nonzero.default:
        return args[0].new_empty((args[0].numel(), args[0].dim()), dtype=torch.long)
    return args[0].new_empty((args[0].numel(),))


class HostSyncs(TorchDispatchMode):
    """Records every host sync of the ops run under it (see the module's docstring)."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default:
            self.found.append(f"read to host at {our_line()}")
            return 0
        if func in DATA_DEPENDENT or (func is aten.index.Tensor and has_bool_index(args)):
            self.found.append(f"{func.__name__} at {our_line()}")
            if func is not aten.index.Tensor:
                return stand_in(func, args)
        blocking = not kwargs.get("non_blocking", False)
        if func is aten._to_copy.default and crosses_host(args[0], kwargs) and blocking:
            self.found.append(f"blocking copy to {kwargs.get('device')} at {our_line()}")
        if func is aten.copy_.default and args[0].device.type != args[1].device.type:
            if not (len(args) > 2 and args[2]):
                self.found.append(f"blocking copy_ at {our_line()}")
        return func(*args, **kwargs)


def has_bool_index(args):
    return any(i is not None and i.dtype == torch.bool for i in args[1])


def fake_cuda():
    """Fake tensors on ``cuda`` (no driver needed); real CPU tensors may enter (a loader's)."""
    return FakeTensorMode(allow_non_fake_inputs=True)
