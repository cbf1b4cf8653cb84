"""SimCLR (Chen et al. 2020): NT-Xent with the 2B-2 other in-batch views as negatives.

The ring ranks those 2B-2 (the original's SimCLR ring kept upper 0.5 of them).

Under DDP the embeddings are all-gathered (gradients flow back to their rank) so negatives
come from the global batch, and batch norm is synchronised (SyncBN) over the global batch.
"""

import torch
import torch.distributed as dist

from pretrain.distributed import gather_no_grad, gather_with_grad, is_distributed
from pretrain.errors import PretrainError
from pretrain.losses import in_batch_negative_index, pair_partner
from pretrain.methods.base import (
    ContrastiveMethod,
    backbone_from_config,
    embed,
    full_precision,
    negative_stats,
    projection_head,
)
from pretrain.pools import DensePool


class SimCLR(ContrastiveMethod):
    num_views = 2
    sync_batchnorm = True

    def __init__(self, cfg, num_samples):
        super().__init__()
        self.temperature = cfg.simclr.temperature
        self.in_batch_negatives = 2 * cfg.optim.batch_size - 2  # of the global batch
        self.encoder = backbone_from_config(cfg.model)
        self.head = projection_head(
            self.encoder.feature_dim, cfg.model.embedding_dim, cfg.model.head, cfg.model.hidden_dim
        )

    def encoders(self):
        return {"encoder": self.encoder}

    @staticmethod
    def check_config(cfg, dataset_size):
        if cfg.optim.batch_size < 2:
            raise PretrainError("simclr needs optim.batch_size >= 2 for in-batch negatives")

    def negative_pool(self):
        size = self.in_batch_negatives
        return size, "in-batch negatives of optim.batch_size", size

    def forward(self, views, indices, sampler):
        batch = views[0].shape[0]
        z = embed(self.encoder, self.head, torch.cat(views))
        first, second = gather_with_grad(z[:batch]), gather_with_grad(z[batch:])
        everyone = torch.cat([first, second])  # global view-1 block, then view-2 block
        rank = dist.get_rank() if is_distributed() else 0
        mine = torch.arange(rank * batch, (rank + 1) * batch, device=z.device)
        anchors = torch.cat([mine, mine + first.shape[0]])
        partner = pair_partner(anchors, everyone.shape[0])
        negative_index = in_batch_negative_index(anchors, everyone.shape[0])
        ids = gather_no_grad(indices).repeat(2)  # dataset index of every stacked view
        with full_precision(z):
            similarity = everyone[anchors] @ everyone.T
            positive = similarity.gather(1, partner.unsqueeze(1)).squeeze(1)
            pool = DensePool(similarity, everyone, ids, negative_index)
            loss, record = sampler.contrast(everyone[anchors], positive, pool, self.temperature)
        return loss, negative_stats([record], ids[anchors])
