"""Supervised pretraining: cross-entropy on the labels, the upper reference of the leaderboards.

It shares everything else with the contrastive runs (backbone, data, MoCo v2's augmentation,
optimizer and budget), so a transfer table can put it next to them. The linear classifier is
its only head; the checkpoint's ``encoders`` hold the backbone alone, as for the others.
"""

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.errors import PretrainError
from pretrain.methods.base import ContrastiveMethod, backbone_from_config


class Supervised(ContrastiveMethod):
    num_views = 1
    uses_labels = True

    def __init__(self, cfg, num_samples, labels, num_classes):
        super().__init__()
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != (num_samples,):
            raise PretrainError(
                f"method supervised got {len(labels)} labels for {num_samples} images"
            )
        unlabelled = int((labels < 0).sum())
        if unlabelled:
            raise PretrainError(
                f"method supervised needs a label for every training image but {unlabelled} have "
                "none (STL-10's unlabeled split); set data.stl_unlabeled=false"
            )
        self.encoder = backbone_from_config(cfg.model)
        self.classifier = nn.Linear(self.encoder.feature_dim, num_classes)
        # by dataset index, as the batch's ``indices`` come; rebuilt from the data, not saved
        self.register_buffer("labels", labels, persistent=False)

    def encoders(self):
        return {"encoder": self.encoder}

    @staticmethod
    def check_config(cfg, dataset_size):
        if cfg.sampler.name != "uniform":
            raise PretrainError(
                f"method supervised uses no negatives, so sampler.name={cfg.sampler.name} does "
                "nothing; leave sampler.name at uniform"
            )

    def negative_pool(self):
        return 0, "negatives (supervised has none)", 0

    def forward(self, views, indices, sampler):
        logits = self.classifier(self.encoder(views[0])).float()
        targets = self.labels[indices]
        loss = F.cross_entropy(logits, targets)
        accuracy = (logits.detach().argmax(dim=1) == targets).float().mean()
        return loss, {"train_accuracy": accuracy, "monitor": []}
