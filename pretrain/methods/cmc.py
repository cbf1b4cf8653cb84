"""Contrastive multiview coding (Tian et al. 2019) with the L and ab views of Lab colour.

Two encoders (1-channel L, 2-channel ab), one memory bank per view. The L embedding of an
image contrasts against the ab bank (positive: the image's own ab entry, negatives: K drawn
entries, or K draws from its ring over the whole bank) and vice versa; both terms use the same
drawn images under uniform, as the original. The data pipeline delivers Lab images
(``pretrain.data``), so CMC needs colour input: grayscale data has constant ab.
"""

import torch

from pretrain.errors import PretrainError
from pretrain.methods.base import (
    ContrastiveMethod,
    MemoryBank,
    backbone_from_config,
    embed,
    full_precision,
    negative_stats,
    projection_head,
)
from pretrain.pools import BankPool


class CMC(ContrastiveMethod):
    num_views = 1
    default_encoder = "l"
    needs_colour = True

    def __init__(self, cfg, num_samples):
        super().__init__()
        self.temperature = cfg.cmc.temperature
        self.num_candidates = cfg.cmc.num_negatives
        dim = cfg.model.embedding_dim
        self.l = backbone_from_config(cfg.model, in_channels=1)
        self.ab = backbone_from_config(cfg.model, in_channels=2)
        self.head_l = projection_head(self.l.feature_dim, dim, cfg.model.head, cfg.model.hidden_dim)
        self.head_ab = projection_head(
            self.ab.feature_dim, dim, cfg.model.head, cfg.model.hidden_dim
        )
        self.bank_l = MemoryBank(num_samples, dim, cfg.cmc.momentum)
        self.bank_ab = MemoryBank(num_samples, dim, cfg.cmc.momentum)

    def encoders(self):
        return {"l": self.l, "ab": self.ab}

    @staticmethod
    def check_config(cfg, dataset_size):
        if cfg.cmc.num_negatives < 1:
            raise PretrainError("cmc.num_negatives must be >= 1")

    def negative_pool(self):
        return self.bank_l.memory.shape[0] - 1, "other bank entries", self.num_candidates

    def features(self, images):
        """Both views' features, concatenated (CMC's evaluation protocol)."""
        return torch.cat([self.l(images[:, :1]), self.ab(images[:, 1:])], dim=1)

    def forward(self, views, indices, sampler):
        lab = views[0]
        z_l = embed(self.l, self.head_l, lab[:, :1])
        z_ab = embed(self.ab, self.head_ab, lab[:, 1:])
        count = self.num_candidates
        with full_precision(z_l):
            drawn = BankPool(z_l, self.bank_ab.memory, indices, count).usual_columns(
                sampler.generator
            )
            terms = [
                sampler.contrast(
                    z,
                    (z * memory[indices]).sum(dim=1),
                    BankPool(z, memory, indices, count, drawn),
                    self.temperature,
                )
                for z, memory in ((z_l, self.bank_ab.memory), (z_ab, self.bank_l.memory))
            ]
        self.bank_l.update(z_l, indices)
        self.bank_ab.update(z_ab, indices)
        loss = terms[0][0] + terms[1][0]
        return loss, negative_stats([record for _, record in terms], indices)
