"""Classification protocols against arithmetic done by hand from their definitions (Ericsson et
al., CVPR 2021): prototype few-shot accuracy, the 95% interval over episodes, episode sampling,
the C grid and its selection, L-BFGS logistic regression, kNN."""

import math

import numpy as np
import pytest
import torch

from transfer.classification.errors import ClassificationError
from transfer.classification.fewshot import (
    check_episodes_possible,
    episode_interval,
    evaluate_fewshot,
    prototype_accuracies,
    sample_episodes,
)
from transfer.classification.knn import evaluate_knn
from transfer.classification.linear import (
    LogisticRegression,
    c_grid,
    evaluate_linear,
    mean_per_class,
    select_c,
)
from transfer.classification.protocols import parse_protocol


def test_prototype_accuracy_on_a_hand_computed_episode():
    # 1-D features; class 0 support {0, 2} -> prototype 1, class 1 support {10} -> prototype 10
    features = torch.tensor([[0.0], [2.0], [10.0], [4.0], [6.0], [9.0], [5.4]])
    support = np.array([[[0, 1], [2, 2]]])  # class 1's support repeats image 2: mean 10
    query = np.array([[[3, 4], [5, 6]]])
    # 4 -> |4-1|=3 < 6: class 0 (right); 6 -> 5 > 4: class 1 (wrong);
    # 9 -> class 1 (right); 5.4 -> 4.4 < 4.6: class 0 (wrong)
    assert prototype_accuracies(features, support, query) == [50.0]


def test_prototypes_use_squared_euclidean_distance_on_raw_features():
    # nearest prototype in Euclidean distance, not cosine: (1, 0) and (10, 0) point the same way
    features = torch.tensor([[1.0, 0.0], [10.0, 0.0], [0.0, 1.0], [9.0, 0.5], [0.5, 0.9]])
    support, query = np.array([[[1], [2]]]), np.array([[[3], [4]]])
    assert prototype_accuracies(features, support, query) == [100.0]


def test_episode_interval_is_196_population_std_over_root_n():
    mean, half = episode_interval([50.0, 100.0, 75.0, 75.0])
    # std with ddof 0: sqrt((25^2 + 25^2 + 0 + 0) / 4) = 17.6777; 1.96 * 17.6777 / sqrt(4)
    assert mean == 75.0
    assert half == pytest.approx(1.96 * math.sqrt(312.5) / 2)


def test_episodes_draw_distinct_classes_and_disjoint_images_of_those_classes():
    labels = np.repeat(np.arange(6), 7)
    support, query = sample_episodes(labels, ways=4, shots=2, queries=5, episodes=50, seed=3)
    assert support.shape == (50, 4, 2) and query.shape == (50, 4, 5)
    for s, q in zip(support, query):
        drawn = np.concatenate([s, q], axis=1)
        assert len(set(labels[drawn[:, 0]])) == 4  # distinct classes
        assert all(len(set(labels[row])) == 1 for row in drawn)  # one class per row
        assert len(set(drawn.ravel())) == drawn.size  # no image twice
    again = sample_episodes(labels, 4, 2, 5, 50, seed=3)
    assert np.array_equal(again[0], support) and np.array_equal(again[1], query)
    other = sample_episodes(labels, 4, 2, 5, 50, seed=4)
    assert not np.array_equal(other[0], support)


def test_every_class_is_drawn_about_equally_often():
    labels = np.repeat(np.arange(5), 6)
    support, _ = sample_episodes(labels, ways=2, shots=1, queries=1, episodes=2000, seed=0)
    counts = np.bincount(labels[support[:, :, 0].ravel()], minlength=5)
    assert counts.sum() == 4000 and np.all(np.abs(counts - 800) < 100)


def test_fewshot_result_group_and_perfect_features():
    labels = np.repeat(np.arange(5), 4)
    features = np.eye(5)[labels] * 10.0
    settings = parse_protocol({"name": "fewshot", "ways": 3, "shots": 1, "queries": 2})
    group = evaluate_fewshot(features, labels, {**settings, "episodes": 30}, seed=0)
    assert group["top1"] == 100.0 and group["ci95"] == 0.0
    assert group["samples"]["top1"] == [100.0] * 30 and group["headline"] == ["top1"]


def test_too_small_classes_name_the_class_and_the_counts():
    with pytest.raises(ClassificationError, match=r"class 'owl' of birds has 12 images.*5 \+ 15"):
        check_episodes_possible({"emu": 40, "owl": 12}, 2, 5, 15, "birds")
    with pytest.raises(ClassificationError, match="2 classes, fewer than ways = 5"):
        check_episodes_possible({"emu": 40, "owl": 40}, 5, 5, 15, "birds")


def test_c_grid_is_the_inverse_of_ericssons_weight_decay_grid_largest_first():
    grid = c_grid(parse_protocol("linear"))
    expected = 1.0 / torch.logspace(-6, 5, 45, dtype=torch.float64).numpy()
    assert np.allclose(grid, expected, rtol=1e-12)


def test_selection_keeps_the_first_best_c_in_grid_order():
    class Constant:  # every C scores the same: the first (largest) C must win
        def fit(self, *args):
            return self

        def predict(self, features):
            return torch.zeros(len(features), dtype=torch.long)

    labels = torch.zeros(4, dtype=torch.long)
    settings = parse_protocol({"name": "linear", "c_values": 3})
    c, scores = select_c(Constant(), (None, labels), (torch.zeros(4, 1), labels), settings)
    assert c == pytest.approx(1e6) and scores == [100.0] * 3


def test_mean_per_class_accuracy_by_hand():
    labels = np.array([0, 0, 0, 0, 1])
    predicted = np.array([0, 0, 0, 0, 0])
    assert mean_per_class(predicted, labels) == pytest.approx(50.0)  # (4/4 + 0/1) / 2


def blobs(seed, per_class=20, spread=0.3):
    generator = np.random.default_rng(seed)
    centres = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    labels = np.repeat(np.arange(3), per_class)
    return centres[labels] + spread * generator.normal(size=(len(labels), 2)), labels


def test_linear_separates_separable_blobs_perfectly():
    settings = parse_protocol({"name": "linear", "c_values": 12})
    group = evaluate_linear(blobs(0), blobs(1), blobs(2), settings)
    assert group["top1"] == 100.0 and group["mean_per_class"] == 100.0
    assert group["images"] == {"train": 60, "val": 60, "test": 60}
    assert len(group["validation"]["score"]) == 12


def test_lbfgs_solution_satisfies_the_optimality_condition():
    # stationarity of mean CE + ||W||^2 / (2 C n): W = C X^T (Y - P), sum_i (Y - P) = 0
    features, labels = blobs(0, spread=2.0)
    x = torch.tensor(features, dtype=torch.float32)
    y = torch.tensor(labels)
    model = LogisticRegression(2, 3, max_iter=500).fit(x, y, c=0.05)
    probabilities = torch.softmax(x @ model.weight + model.bias, dim=1)
    residual = torch.nn.functional.one_hot(y, 3).float() - probabilities
    assert torch.allclose(model.weight, 0.05 * x.T @ residual, atol=2e-3)
    assert residual.sum(dim=0).abs().max() < 2e-3 * len(y)


def test_lbfgs_matches_scikit_learns_logistic_regression():
    sklearn = pytest.importorskip("sklearn.linear_model")
    features, labels = blobs(5, spread=2.0)
    reference = sklearn.LogisticRegression(C=0.3, max_iter=1000, tol=1e-8).fit(features, labels)
    x, y = torch.tensor(features, dtype=torch.float32), torch.tensor(labels)
    model = LogisticRegression(2, 3, max_iter=1000).fit(x, y, c=0.3)
    assert np.allclose(model.weight.T.numpy(), reference.coef_, atol=2e-3)
    assert np.allclose(model.bias.numpy(), reference.intercept_, atol=2e-3)


def test_knn_votes_of_the_bank():
    bank = (np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), np.array([0, 0, 1]))
    test = (np.array([[1.0, 0.05], [0.1, 1.0]]), np.array([0, 0]))
    settings = parse_protocol({"name": "knn", "k": 1})
    group = evaluate_knn(bank, test, 2, settings)
    assert group["top1"] == 50.0 and group["headline"] == ["top1"]


@pytest.mark.parametrize(
    "value, message",
    [
        (
            {"name": "fewshot", "shot": 1},
            "unknown key of protocol fewshot 'shot'; did you mean 'shots'",
        ),
        ("fewshots", "unknown protocol 'fewshots'; did you mean 'fewshot'"),
        ({"name": "linear", "metric": "top5"}, "metric must be one of top1, mean_per_class"),
        ({"name": "fewshot", "ways": 1}, "an episode needs >= 2"),
        ({"name": "fewshot", "episodes": 0}, "episodes is 0; it must be >= 1"),
        ({"name": "knn", "k": 2.5}, "expects int"),
        (3, "must be a protocol name"),
    ],
)
def test_bad_protocols_are_one_line_errors(value, message):
    with pytest.raises(ClassificationError, match=message.replace("(", r"\(")) as error:
        parse_protocol(value, "tasks.t.protocol")
    assert "\n" not in str(error.value)


def test_protocol_defaults_are_ericssons():
    assert parse_protocol("fewshot") == {
        "name": "fewshot",
        "ways": 5,
        "shots": 5,
        "queries": 15,
        "episodes": 600,
        "split": "all",
    }
    linear = parse_protocol("linear")
    assert (linear["c_values"], linear["max_iter"], linear["val_fraction"]) == (45, 100, 0.2)
