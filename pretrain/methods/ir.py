"""Instance recognition (Wu et al. 2018): each image is its own class, stored in a memory bank.

The positive of an anchor is its own bank entry; its negatives come from the rest of the bank:
K uniform draws (uniform) or K draws from its similarity ring over the whole bank (ring).
"""

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

    @staticmethod
    def check_config(cfg, dataset_size):
        if cfg.ir.num_negatives < 1:
            raise PretrainError("ir.num_negatives must be >= 1")

    def negative_pool(self):
        return self.bank.memory.shape[0] - 1, "other bank entries", self.num_candidates

    def forward(self, views, indices, sampler):
        anchor = embed(self.encoder, self.head, views[0])
        memory = self.bank.memory
        with full_precision(anchor):
            positive = (anchor * memory[indices]).sum(dim=1)
            pool = BankPool(anchor, memory, indices, self.num_candidates)
            loss, record = sampler.contrast(anchor, positive, pool, self.temperature)
        self.bank.update(anchor, indices)
        return loss, negative_stats([record], indices)
