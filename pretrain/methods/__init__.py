"""The registry of pretraining methods: ``METHODS[name](cfg, num_samples)``."""

from pretrain.errors import PretrainError
from pretrain.methods.cmc import CMC
from pretrain.methods.ir import InstanceRecognition
from pretrain.methods.moco import MoCo
from pretrain.methods.simclr import SimCLR

METHODS = {"ir": InstanceRecognition, "cmc": CMC, "moco": MoCo, "simclr": SimCLR}


def method_class(name):
    if name not in METHODS:
        raise PretrainError(f"unknown method '{name}'; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def build_method(cfg, num_samples, source_channels, dataset_name):
    """The method named by ``cfg.method`` for a dataset of ``num_samples`` images."""
    cls = method_class(cfg.method)
    if cls.needs_colour and source_channels < 3:
        raise PretrainError(
            f"method '{cfg.method}' needs colour input (its views are the L and ab channels of "
            f"Lab) but {dataset_name} is grayscale; use an RGB dataset (cifar10, stl10, "
            "imagefolder) or method ir/moco/simclr"
        )
    return cls(cfg, num_samples)
