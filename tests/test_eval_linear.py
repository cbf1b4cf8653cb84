import pytest
import torch

from pretrain.backbones import build_backbone
from pretrain.evaluation.linear_probe import (
    EvalError,
    LinearEvalSettings,
    assert_unchanged,
    extract_frozen_features,
    linear_probe_accuracy,
    snapshot_state,
    topk_accuracy,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def image_batches(num_images, batch_size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(num_images, 3, 32, 32, generator=generator)
    labels = torch.arange(num_images) % 4
    return [
        (images[i : i + batch_size], labels[i : i + batch_size])
        for i in range(0, num_images, batch_size)
    ]


def test_linear_eval_leaves_a_frozen_random_backbone_bitwise_unchanged():
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", width=0.125, stem="cifar")
    backbone.train()  # as a training loop would leave it: BN would update its running stats
    before = snapshot_state([backbone])
    train_x, train_y = extract_frozen_features(backbone, [backbone], image_batches(32))
    test_x, test_y = extract_frozen_features(backbone, [backbone], image_batches(16, seed=1))
    result = linear_probe_accuracy(
        train_x, train_y, test_x, test_y, 4, LinearEvalSettings(lbfgs_max_iter=20)
    )
    after = backbone.state_dict()
    assert before[0].keys() == after.keys()
    assert any("running_mean" in k for k in after)
    for name, tensor in after.items():
        assert torch.equal(tensor, before[0][name]), name
    assert backbone.training, "the caller's train/eval mode is restored"
    assert train_x.shape == (32, backbone.feature_dim) and 0.0 <= result["top1"] <= 1.0


def test_a_forward_in_train_mode_is_caught_by_the_bitwise_check():
    backbone = build_backbone("resnet18", width=0.125, stem="cifar").train()
    snapshot = snapshot_state([backbone])
    with torch.no_grad():
        backbone(torch.randn(4, 3, 32, 32))
    with pytest.raises(EvalError, match="running_mean.*eval mode"):
        assert_unchanged([backbone], snapshot)


def test_embedding_that_touches_bn_stats_fails_extraction():
    backbone = build_backbone("resnet18", width=0.125, stem="cifar")

    def leaky_embed(images):
        backbone.train()  # a buggy embed function that flips BN back to batch statistics
        return backbone(images)

    with pytest.raises(EvalError, match="frozen encoder changed"):
        extract_frozen_features(leaky_embed, [backbone], image_batches(8))


def test_empty_split_is_a_clear_error():
    backbone = build_backbone("resnet18", width=0.125, stem="cifar")
    with pytest.raises(EvalError, match="split is empty"):
        extract_frozen_features(backbone, [backbone], [])


def test_topk_accuracy_on_known_logits():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.2, 0.7], [0.5, 0.3, 0.2]])
    labels = torch.tensor([0, 1, 2])
    result = topk_accuracy(logits, labels, (1, 2, 5))
    assert result["top1"] == pytest.approx(1 / 3)
    assert result["top2"] == pytest.approx(2 / 3)
    assert result["top5"] == pytest.approx(1.0)  # k beyond the class count means every class


@pytest.mark.parametrize("solver", ["lbfgs", "sgd"])
def test_probe_separates_linearly_separable_classes(solver):
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=generator) * 4
    labels = torch.arange(500) % 5
    features = centres[labels] + torch.randn(500, 16, generator=generator)
    settings = LinearEvalSettings(solver=solver, sgd_epochs=5, lbfgs_max_iter=50)
    result = linear_probe_accuracy(
        features[:400], labels[:400], features[400:], labels[400:], 5, settings
    )
    assert result["top1"] > 0.97
    assert result["weight_decay"] in settings.weight_decays


def test_probe_on_noise_labels_is_near_chance():
    # guards against test leakage: with labels independent of features nothing can be learnt
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(600, 8, generator=generator)
    labels = torch.randint(0, 4, (600,), generator=generator)
    result = linear_probe_accuracy(features[:400], labels[:400], features[400:], labels[400:], 4)
    assert result["top1"] < 0.4


def test_unknown_solver_is_refused():
    x = torch.randn(10, 3)
    y = torch.arange(10) % 2
    with pytest.raises(EvalError, match="unknown linear solver 'adam'"):
        linear_probe_accuracy(x, y, x, y, 2, LinearEvalSettings(solver="adam"))
