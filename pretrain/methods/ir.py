"""Instance recognition (Wu et al. 2018): each image is its own class, stored in a memory bank.

The positive of an anchor is its own bank entry; K candidate negatives are drawn uniformly
from the bank per anchor (the sampler may then keep only a ring of them).
"""

from pretrain.methods.base import (
    ContrastiveMethod,
    MemoryBank,
    backbone_from_config,
    embed,
    projection_head,
    sampled_contrast,
)


class InstanceRecognition(ContrastiveMethod):
    num_views = 1

    def __init__(self, cfg, num_samples):
        super().__init__()
        self.temperature = cfg.ir.temperature
        self.num_candidates = cfg.ir.num_negatives
        self.encoder = backbone_from_config(cfg.model)
        self.head = projection_head(
            self.encoder.feature_dim, cfg.model.embedding_dim, cfg.model.head, cfg.model.hidden_dim
        )
        self.bank = MemoryBank(num_samples, cfg.model.embedding_dim, cfg.ir.momentum)

    def encoders(self):
        return {"encoder": self.encoder}

    def forward(self, views, indices, sampler):
        anchor = embed(self.encoder, self.head, views[0])
        memory = self.bank.memory
        candidates = memory[self.bank.draw(anchor.shape[0], self.num_candidates)]
        loss, kept = sampled_contrast(
            anchor, memory[indices], candidates, sampler, self.temperature
        )
        self.bank.update(anchor, indices)
        return loss, {"negatives": kept}
