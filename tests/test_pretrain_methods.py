"""The methods' own pieces the estimator tests do not reach: config checks at their boundaries,
heads, banks and queues as built, the pools they report, encoder names, and the dataset ids they
hand the false-negative monitor. (Written against survivors of `make mutation`.)"""

import pytest
import torch
from torch import nn

from pretrain.errors import PretrainError
from pretrain.methods import CONTRASTIVE, METHODS, build_method, method_class
from pretrain.methods.base import MemoryBank, projection_head
from pretrain.monitor import FalseNegativeMonitor
from pretrain.samplers import NegativeSampler
from pretrain.trainer import as_config

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize(
    "name, key, value, message",
    [
        ("ir", "ir.num_negatives", 0, "ir.num_negatives must be >= 1"),
        ("cmc", "cmc.num_negatives", 0, "cmc.num_negatives must be >= 1"),
        ("moco", "moco.queue_size", 0, "moco.queue_size must be >= 1"),
        ("simclr", "optim.batch_size", 1, "simclr needs optim.batch_size >= 2 for in-batch"),
    ],
)
def test_config_checks_refuse_below_the_bound_and_accept_it(name, key, value, message, tiny_config):
    section, field = key.split(".")
    if name == "moco":  # a one-entry queue takes a one-image batch (see the test below)
        tiny_config["optim"]["batch_size"] = 1
    for bad, ok in ((value, value + 1),):
        tiny_config[section] = {**tiny_config.get(section, {}), field: bad}
        with pytest.raises(PretrainError, match=f"^{message}"):
            METHODS[name].check_config(as_config(tiny_config), 64)
        tiny_config[section][field] = ok
        METHODS[name].check_config(as_config(tiny_config), 64)  # the bound itself is valid


def test_unknown_method_and_colour_needs_are_one_line_errors(tiny_config):
    with pytest.raises(PretrainError, match="unknown method 'mocco'; choose one of ir, cmc, moco"):
        method_class("mocco")
    config = as_config({**tiny_config, "method": "cmc"})
    with pytest.raises(PretrainError, match=r"needs colour input .* or method ir/moco/simclr$"):
        build_method(config, 40, source_channels=1, dataset_name="fashion_mnist")
    assert build_method(config, 40, source_channels=3, dataset_name="cifar10").needs_colour
    ir = as_config({**tiny_config, "method": "ir"})
    assert not build_method(ir, 40, source_channels=1, dataset_name="fashion_mnist").needs_colour


def test_heads_are_the_linear_or_mlp_of_their_papers():
    linear = projection_head(8, 4, "linear")
    assert isinstance(linear, nn.Linear) and linear.weight.shape == (4, 8)
    mlp = projection_head(8, 4, hidden_dim=6)  # mlp is the default
    assert [type(m) for m in mlp] == [nn.Linear, nn.ReLU, nn.Linear]
    assert mlp[0].weight.shape == (6, 8) and mlp[2].weight.shape == (4, 6)
    assert projection_head(8, 4)[0].weight.shape == (8, 8)  # hidden width: the input's
    with pytest.raises(PretrainError, match="unknown model.head 'conv'; choose one of linear, mlp"):
        projection_head(8, 4, "conv")


HEADS = {"ir": ["head"], "cmc": ["head_l", "head_ab"], "moco": ["head_q", "head_k"],
         "simclr": ["head"]}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CONTRASTIVE))
def test_model_hidden_dim_reaches_every_head(name, tiny_config):
    model = {**tiny_config["model"], "head": "mlp", "hidden_dim": 12}
    method = METHODS[name](as_config({**tiny_config, "method": name, "model": model}), 40)
    for head in HEADS[name]:
        assert getattr(method, head)[0].out_features == 12, head


def test_banks_and_queues_start_as_unit_rows_with_unknown_ids(tiny_config):
    bank = MemoryBank(30, 8)
    assert bank.momentum == 0.5  # lemniscate's default
    torch.testing.assert_close(bank.memory.norm(dim=1), torch.ones(30))
    moco = METHODS["moco"](as_config({**tiny_config, "method": "moco"}), 40)
    torch.testing.assert_close(moco.queue.norm(dim=1), torch.ones(64))
    assert moco.queue_ptr.dtype == torch.long and int(moco.queue_ptr) == 0
    assert moco.queue_ids.dtype == torch.long and (moco.queue_ids == -1).all()


@pytest.mark.parametrize(
    "name, encoders, pool",
    [
        ("ir", ["encoder"], (39, "other bank entries", 32)),
        ("cmc", ["l", "ab"], (39, "other bank entries", 32)),
        ("moco", ["query", "key"], (64, "queue entries", 64)),
        ("simclr", ["encoder"], (30, "in-batch negatives of optim.batch_size", 30)),
    ],
)
def test_encoder_names_and_negative_pools(name, encoders, pool, tiny_config):
    method = METHODS[name](as_config({**tiny_config, "method": name}), 40)
    assert list(method.encoders()) == encoders
    assert method.negative_pool() == pool


def test_cmc_features_are_both_views_concatenated(tiny_config):
    torch.manual_seed(0)
    method = METHODS["cmc"](as_config({**tiny_config, "method": "cmc"}), 40).eval()
    lab = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        expected = torch.cat([method.l(lab[:, :1]), method.ab(lab[:, 1:])], dim=1)
        torch.testing.assert_close(method.features(lab), expected)


@pytest.mark.parametrize("name", sorted(CONTRASTIVE))
def test_the_monitor_reads_each_anchor_against_its_own_negatives(name, tiny_config):
    """Through each method's forward and its uniform pool: the ids it hands the monitor are the
    anchors' dataset indices and their negatives', so labels equal to the dataset index give a
    false-negative share of 0 and labels all equal give 1 (ids the method does not know, MoCo's
    initial queue, count as unknown)."""
    torch.manual_seed(1)
    method = METHODS[name](as_config({**tiny_config, "method": name}), 40)
    shape = (8, 3, 16, 16)
    views = [torch.rand(*shape) for _ in range(method.num_views)]
    indices = torch.arange(8) + 30
    if name == "moco":  # a queue of known images, none of them an anchor
        method.queue_ids.copy_(torch.arange(64) % 30)
    _, stats = method(views, indices, NegativeSampler("uniform"))
    ids = stats["monitor"][0]["ids"]()
    assert ids.shape == (len(stats["monitor"][0]["anchor_ids"]), stats["negatives_per_anchor"])
    shares = []
    for labels in (torch.arange(40), torch.zeros(40, dtype=torch.long)):
        monitor = FalseNegativeMonitor(labels)
        monitor.update(stats["monitor"])
        shares.append(monitor.epoch_stats()["false_negative_share"])
    assert shares == [0.0, 1.0]
    expected = {"ir": 32, "cmc": 32, "moco": 64, "simclr": 14}[name]
    assert stats["negatives_per_anchor"] == expected


def test_moco_refuses_a_global_batch_larger_than_its_queue(tiny_config):
    """Each step enqueues the whole global batch; a larger one cannot fit (a shape error
    mid-run before this check)."""
    tiny_config["optim"]["batch_size"] = 65  # the queue holds 64
    with pytest.raises(PretrainError, match=r"^optim.batch_size=65 \(global\) exceeds moco.qu"):
        METHODS["moco"].check_config(as_config(tiny_config), 1000)
    tiny_config["optim"]["batch_size"] = 64
    METHODS["moco"].check_config(as_config(tiny_config), 1000)


def test_moco_queue_wraps_around_with_the_pointer_on_the_device(tiny_config):
    moco = METHODS["moco"](as_config({**tiny_config, "moco": {"queue_size": 5}}), 40)
    keys = torch.nn.functional.normalize(torch.randn(9, 16), dim=1)
    for start in (0, 3, 6):
        moco.enqueue(keys[start : start + 3], torch.arange(start, start + 3))
    assert moco.queue_ptr.item() == 4  # 9 keys into 5 slots
    assert moco.queue_ids.tolist() == [5, 6, 7, 8, 4]
    torch.testing.assert_close(moco.queue[:4], keys[5:])


def test_moco_splits_the_key_batch_into_bn_groups_by_default_in_one_process(tiny_config):
    """One BN group over the whole key batch would let a query find its key through batch
    statistics; by default one process splits it (4 groups), as shuffle-BN does across GPUs."""
    tiny_config["moco"] = {"queue_size": 64}  # shuffle_bn_splits left at its default
    moco = METHODS["moco"](as_config(tiny_config), 40)
    assert moco.key_bn_groups() == 4
    moco.key, moco.head_k = nn.Flatten(), nn.BatchNorm1d(12, affine=False)  # keys: BN only
    images = torch.randn(8, 3, 2, 2)
    torch.manual_seed(0)
    keys = moco.encode_keys(images)
    one_group = torch.nn.functional.normalize(moco.head_k(images.flatten(1)), dim=1)
    assert not torch.allclose(keys, one_group, atol=1e-3)
    torch.manual_seed(0)
    order = torch.randperm(8)
    groups = [moco.head_k(images[part].flatten(1)) for part in order.chunk(4)]
    torch.testing.assert_close(keys[order], torch.nn.functional.normalize(torch.cat(groups), dim=1))


def test_moco_bn_groups_must_be_positive(tiny_config):
    tiny_config["moco"] = {"queue_size": 64, "shuffle_bn_splits": 0}
    with pytest.raises(PretrainError, match="^moco.shuffle_bn_splits must be null or >= 1, got 0"):
        METHODS["moco"].check_config(as_config(tiny_config), 64)


def test_moco_bn_groups_come_from_the_config_else_one_per_rank_under_ddp(tiny_config, monkeypatch):
    """An explicit ``shuffle_bn_splits`` wins, 1 is a valid count (no split), and without one a
    DDP rank keeps its keys in one group: the shuffle across ranks already separates them."""
    for splits in (1, 2, 3):
        tiny_config["moco"] = {"queue_size": 64, "shuffle_bn_splits": splits}
        config = as_config(tiny_config)
        METHODS["moco"].check_config(config, 64)  # accepted at the bound
        assert METHODS["moco"](config, 40).key_bn_groups() == splits
    tiny_config["moco"] = {"queue_size": 64}
    moco = METHODS["moco"](as_config(tiny_config), 40)
    monkeypatch.setattr("pretrain.methods.moco.is_distributed", lambda: True)
    assert moco.key_bn_groups() == 1


def supervised_method(tiny_config, labels, num_classes):
    config = as_config({**tiny_config, "method": "supervised"})
    return build_method(config, len(labels), 3, "synthetic", torch.as_tensor(labels), num_classes)


def test_supervised_loss_is_the_cross_entropy_of_its_classifier_on_the_batch_labels(tiny_config):
    torch.manual_seed(0)
    labels = torch.tensor([2, 0, 1, 4, 3, 1])
    method = supervised_method(tiny_config, labels, num_classes=5)
    assert method.classifier.out_features == 5
    assert method.encoders() == {"encoder": method.encoder}
    assert method.negative_pool() == (0, "negatives (supervised has none)", 0)
    assert "labels" not in method.state_dict()  # rebuilt from the data on resume
    images, indices = torch.randn(4, 3, 16, 16), torch.tensor([5, 0, 3, 1])
    loss, logs = method([images], indices, sampler=None)
    logits = method.classifier(method.encoder(images))
    targets = labels[indices]
    torch.testing.assert_close(loss, nn.functional.cross_entropy(logits, targets))
    accuracy = (logits.argmax(dim=1) == targets).float().mean()
    torch.testing.assert_close(logs["train_accuracy"], accuracy)
    assert logs["monitor"] == [] and set(logs) == {"train_accuracy", "monitor"}


@pytest.mark.parametrize(
    "labels, message",
    [
        (
            [0, 1, -1, 2, -1],
            r"^method supervised needs a label for every training image but 2 have none "
            r"\(STL-10's unlabeled split\); set data.stl_unlabeled=false$",
        ),
        ([0, 1, 2, 1], "^method supervised got 4 labels for 5 images"),
    ],
)
def test_supervised_refuses_labels_that_do_not_fit_its_images(tiny_config, labels, message):
    config = as_config({**tiny_config, "method": "supervised"})
    with pytest.raises(PretrainError, match=message):
        build_method(config, 5, 3, "synthetic", torch.as_tensor(labels), 3)


def test_supervised_accepts_only_the_uniform_sampler(tiny_config):
    METHODS["supervised"].check_config(as_config({**tiny_config, "method": "supervised"}), 4)
    config = as_config({**tiny_config, "method": "supervised", "sampler": {"name": "ring"}})
    message = (
        "^method supervised uses no negatives, so sampler.name=ring does nothing; leave "
        "sampler.name at uniform$"
    )
    with pytest.raises(PretrainError, match=message):
        METHODS["supervised"].check_config(config, 4)


def test_supervised_indexes_its_labels_as_int64_whatever_dtype_they_come_in(tiny_config):
    """Labels read from uint8 or int32 files must still index cross-entropy's int64 targets."""
    for dtype in (torch.uint8, torch.int32):
        method = supervised_method(tiny_config, torch.tensor([1, 0, 2], dtype=dtype), 3)
        assert method.labels.dtype == torch.long
        loss, _ = method([torch.randn(2, 3, 16, 16)], torch.tensor([2, 0]), sampler=None)
        assert torch.isfinite(loss)
