import torch

from pretrain.evaluation.knn import extract_features, knn_accuracy, knn_predict


def test_weighted_vote_by_hand():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.05]])
    # k=2: neighbours 0 (label 0, sim ~0.9988) and 1 (label 1, sim ~0.9982): label 0 wins
    assert knn_predict(train, labels, query, 2, k=2, temperature=0.07).tolist() == [0]
    # k=3 adds the far label-1 point; with a huge temperature weights are ~equal: label 1 wins
    assert knn_predict(train, labels, query, 2, k=3, temperature=1e6).tolist() == [1]


def test_separable_clusters_and_chance():
    torch.manual_seed(0)
    centres = torch.randn(4, 16) * 5
    labels = torch.arange(200) % 4
    train = centres[labels] + torch.randn(200, 16)
    test_labels = torch.arange(80) % 4
    test = centres[test_labels] + torch.randn(80, 16)
    assert knn_accuracy(train, labels, test, test_labels, 4, k=20) == 1.0
    shuffled = knn_accuracy(train, labels[torch.randperm(200)], test, test_labels, 4, k=20)
    assert shuffled < 0.6


def test_extract_features_keeps_order():
    loader = [(torch.ones(2, 3), torch.tensor([1, 2])), (2 * torch.ones(1, 3), torch.tensor([0]))]
    features, labels = extract_features(lambda x: x.sum(1, keepdim=True), loader)
    assert features.flatten().tolist() == [3.0, 3.0, 6.0] and labels.tolist() == [1, 2, 0]
