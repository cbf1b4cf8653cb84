"""Contrastive multiview coding (Tian et al. 2019) with the L and ab views of Lab colour.

Two encoders (1-channel L, 2-channel ab), one memory bank per view. The L embedding of an
image contrasts against the ab bank (positive: the image's own ab entry, negatives: K drawn
entries) and vice versa. The data pipeline delivers Lab images (``pretrain.data``), so CMC
needs colour input: grayscale data has constant ab and nothing to predict.
"""

import torch

from pretrain.methods.base import (
    ContrastiveMethod,
    MemoryBank,
    backbone_from_config,
    embed,
    projection_head,
    sampled_contrast,
)


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

    def features(self, images):
        """Both views' features, concatenated (CMC's evaluation protocol)."""
        return torch.cat([self.l(images[:, :1]), self.ab(images[:, 1:])], dim=1)

    def forward(self, views, indices, sampler):
        lab = views[0]
        z_l = embed(self.l, self.head_l, lab[:, :1])
        z_ab = embed(self.ab, self.head_ab, lab[:, 1:])
        drawn = self.bank_l.draw(z_l.shape[0], self.num_candidates)  # same images for both
        loss_l, kept_l = sampled_contrast(
            z_l, self.bank_ab.memory[indices], self.bank_ab.memory[drawn], sampler, self.temperature
        )
        loss_ab, kept_ab = sampled_contrast(
            z_ab, self.bank_l.memory[indices], self.bank_l.memory[drawn], sampler, self.temperature
        )
        self.bank_l.update(z_l, indices)
        self.bank_ab.update(z_ab, indices)
        return loss_l + loss_ab, {"negatives": (kept_l + kept_ab) / 2}
