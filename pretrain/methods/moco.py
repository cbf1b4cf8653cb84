"""MoCo v2 (Chen et al. 2020): query encoder, momentum key encoder, FIFO queue of keys.

Batch norm must not let a query find its key through batch statistics. We use shuffle-BN:
the key batch is gathered from all ranks, permuted, and each rank encodes its slice in
``shuffle_bn_splits`` separate BN groups, then the keys are un-permuted. In one process
this still splits the key batch into random BN groups (MoCo's CIFAR "split BN"): by default
4 there, since a single group is the whole key batch and leaves the shortcut open.
"""

import copy

import torch
import torch.nn.functional as F

from pretrain.distributed import broadcast_, gather_no_grad, is_distributed, local_slice
from pretrain.errors import PretrainError
from pretrain.methods.base import (
    ContrastiveMethod,
    backbone_from_config,
    embed,
    full_precision,
    negative_stats,
    projection_head,
)
from pretrain.pools import DensePool

SINGLE_PROCESS_BN_GROUPS = 4  # moco.shuffle_bn_splits null in one process (the FMNIST configs')


class MoCo(ContrastiveMethod):
    num_views = 2
    default_encoder = "query"

    def __init__(self, cfg, num_samples):
        super().__init__()
        self.temperature = cfg.moco.temperature
        self.momentum = cfg.moco.momentum
        self.shuffle_bn_splits = cfg.moco.shuffle_bn_splits
        dim = cfg.model.embedding_dim
        self.query = backbone_from_config(cfg.model)
        self.head_q = projection_head(
            self.query.feature_dim, dim, cfg.model.head, cfg.model.hidden_dim
        )
        self.key = copy.deepcopy(self.query)
        self.head_k = copy.deepcopy(self.head_q)
        for param in [*self.key.parameters(), *self.head_k.parameters()]:
            param.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(cfg.moco.queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        # dataset index of each queued key, for the false-negative monitor only (-1: initial)
        self.register_buffer("queue_ids", torch.full((cfg.moco.queue_size,), -1, dtype=torch.long))

    def encoders(self):
        return {"query": self.query, "key": self.key}

    @staticmethod
    def check_config(cfg, dataset_size):
        if cfg.moco.queue_size < 1:
            raise PretrainError("moco.queue_size must be >= 1")
        splits = cfg.moco.shuffle_bn_splits
        if splits is not None and (not isinstance(splits, int) or splits < 1):
            raise PretrainError(f"moco.shuffle_bn_splits must be null or >= 1, got {splits!r}")
        if cfg.optim.batch_size > cfg.moco.queue_size:
            raise PretrainError(
                f"optim.batch_size={cfg.optim.batch_size} (global) exceeds moco.queue_size="
                f"{cfg.moco.queue_size}: each step enqueues the whole batch; raise the queue"
            )

    def negative_pool(self):
        return self.queue.shape[0], "queue entries", self.queue.shape[0]

    @torch.no_grad()
    def momentum_update(self):
        query_params = [*self.query.parameters(), *self.head_q.parameters()]
        key_params = [*self.key.parameters(), *self.head_k.parameters()]
        if not key_params:  # parameter-free encoders (tests) have nothing to average
            return
        torch._foreach_mul_(key_params, self.momentum)
        torch._foreach_add_(
            key_params, [p.detach() for p in query_params], alpha=1.0 - self.momentum
        )

    def key_bn_groups(self):
        """BN groups per rank for the keys: the config's, else 1 per rank under DDP (the
        shuffle across ranks separates a query from its key) and 4 in one process."""
        if self.shuffle_bn_splits is not None:
            return self.shuffle_bn_splits
        return 1 if is_distributed() else SINGLE_PROCESS_BN_GROUPS

    @torch.no_grad()
    def encode_keys(self, images):
        """Keys with shuffle-BN: no key shares its BN group with the batch of its query."""
        everyone = gather_no_grad(images)
        order = broadcast_(torch.randperm(everyone.shape[0], device=images.device))
        mine = local_slice(everyone[order])
        splits = max(1, min(self.key_bn_groups(), mine.shape[0]))
        keys = torch.cat([embed(self.key, self.head_k, part) for part in mine.chunk(splits)])
        shuffled = gather_no_grad(keys)
        restored = torch.empty_like(shuffled)
        restored[order] = shuffled
        return local_slice(restored)

    @torch.no_grad()
    def enqueue(self, keys, indices):
        """The global batch's keys replace the oldest entries. The pointer stays on the device
        (no host read per step); ``check_config`` keeps the global batch within the queue."""
        keys, indices = gather_no_grad(keys), gather_no_grad(indices)
        size = self.queue.shape[0]
        positions = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[positions] = keys
        self.queue_ids[positions] = indices
        self.queue_ptr.copy_(positions[-1] + 1).remainder_(size)

    def forward(self, views, indices, sampler):
        query = embed(self.query, self.head_q, views[0])
        self.momentum_update()
        keys = self.encode_keys(views[1])
        with full_precision(query):
            queue = self.queue.clone()
            pool = DensePool(query @ queue.T, queue, self.queue_ids.clone())
            positive = (query * keys).sum(dim=1)
            loss, record = sampler.contrast(query, positive, pool, self.temperature)
        self.enqueue(keys, indices)
        return loss, negative_stats([record], indices)
