"""The registry of pretraining methods: ``METHODS[name](cfg, num_samples)``.

``CONTRASTIVE`` are the label-free methods the negative samplers serve; ``supervised`` is the
reference that trains on the labels (it alone is handed them).
"""

from pretrain.errors import PretrainError
from pretrain.methods.cmc import CMC
from pretrain.methods.ir import InstanceRecognition
from pretrain.methods.moco import MoCo
from pretrain.methods.simclr import SimCLR
from pretrain.methods.supervised import Supervised

CONTRASTIVE = {"ir": InstanceRecognition, "cmc": CMC, "moco": MoCo, "simclr": SimCLR}
METHODS = {**CONTRASTIVE, "supervised": Supervised}


def method_class(name):
    if name not in METHODS:
        raise PretrainError(f"unknown method '{name}'; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def build_method(cfg, num_samples, source_channels, dataset_name, labels=None, num_classes=None):
    """The method named by ``cfg.method`` for a dataset of ``num_samples`` images (``labels``
    by dataset index and ``num_classes`` reach only a method that ``uses_labels``)."""
    cls = method_class(cfg.method)
    if cls.needs_colour and source_channels < 3:
        raise PretrainError(
            f"method '{cfg.method}' needs colour input (its views are the L and ab channels of "
            f"Lab) but {dataset_name} is grayscale; use an RGB dataset (cifar10, stl10, "
            "imagefolder) or method ir/moco/simclr"
        )
    if cls.uses_labels:
        return cls(cfg, num_samples, labels, num_classes)
    return cls(cfg, num_samples)
