"""Pieces shared by the methods: projection heads, the memory bank, the method interface."""

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.backbones import build_backbone
from pretrain.distributed import gather_no_grad
from pretrain.errors import PretrainError

HEADS = ("linear", "mlp")


def projection_head(in_dim, out_dim, kind="mlp", hidden_dim=None):
    """IR/CMC's linear embedding or MoCo v2/SimCLR's 2-layer MLP."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        hidden_dim = hidden_dim or in_dim
        return nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
        )
    raise PretrainError(f"unknown model.head '{kind}'; choose one of {', '.join(HEADS)}")


def backbone_from_config(model_cfg, in_channels=3):
    return build_backbone(model_cfg.arch, model_cfg.width, model_cfg.stem, in_channels)


def embed(backbone, head, images):
    """Unit-norm embeddings; bf16 from AMP is lifted to float32 before the loss."""
    z = head(backbone(images))
    return F.normalize(z.float() if z.dtype in (torch.float16, torch.bfloat16) else z, dim=1)


def full_precision(tensor):
    """Turns AMP off for similarity logits: bf16 would blur the ring's ranks and the loss."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def negative_stats(records, anchor_ids):
    """A method's step stats from its loss terms' negative records (``NegativeSampler.contrast``).

    ``negatives_per_anchor`` is what the arms must share at equal compute; ``monitor`` carries
    the dataset ids of the negatives (and their weights) for the false-negative monitor, which
    looks up labels outside the training path.
    """
    count = sum(record["count"] for record in records) / len(records)
    monitor = [{**record, "anchor_ids": anchor_ids} for record in records]
    return {"negatives_per_anchor": float(count), "monitor": monitor}


class MemoryBank(nn.Module):
    """N x d unit embeddings, one per training image, updated by momentum and renormalised.

    Updates use the embeddings and indices of the whole (all-gathered) batch, so every rank
    holds the same bank.
    """

    def __init__(self, size, dim, momentum=0.5):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("memory", F.normalize(torch.randn(size, dim), dim=1))

    @torch.no_grad()
    def update(self, embeddings, indices):
        embeddings, indices = gather_no_grad(embeddings.detach()), gather_no_grad(indices)
        mixed = self.momentum * self.memory[indices] + (1.0 - self.momentum) * embeddings
        self.memory[indices] = F.normalize(mixed, dim=1)


class ContrastiveMethod(nn.Module):
    """One pretraining method: ``forward(views, indices, sampler) -> (loss, stats)``.

    ``views`` is the list of augmented batches (``num_views`` of them), ``indices`` the dataset
    indices of the images. Subclasses name their backbones in ``encoders()`` (the checkpoint's
    ``encoders``) and pick the one evaluated by default.
    """

    num_views = 1
    default_encoder = "encoder"
    needs_colour = False
    uses_labels = False  # only the supervised reference is handed the training labels
    sync_batchnorm = False  # SimCLR: statistics over the global batch under DDP

    def encoders(self):
        raise NotImplementedError

    @staticmethod
    def check_config(cfg, dataset_size):
        """Refuse a config this method cannot train (one-line PretrainError), before any data
        is read or anything written; each method checks its own keys."""

    def negative_pool(self):
        """``(size, what, usual_count)``: candidates ranked per anchor, their name, and the
        uniform arm's negatives per anchor, for ``NegativeSampler.check_pool`` before training."""
        raise NotImplementedError

    def encoder_in_channels(self):
        return {name: backbone.conv1.in_channels for name, backbone in self.encoders().items()}

    def features(self, images):
        """Pooled backbone features for the kNN monitor and linear evaluation."""
        return self.encoders()[self.default_encoder](images)
