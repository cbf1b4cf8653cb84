"""Gradients reach the trained encoders and heads only: not the key encoder, not the banks."""

import pytest
import torch

from pretrain.methods import CONTRASTIVE, METHODS
from pretrain.samplers import NegativeSampler
from pretrain.trainer import as_config

pytestmark = pytest.mark.usefixtures("single_thread")

TRAINED = {
    "moco": ("query", "head_q"),
    "simclr": ("encoder", "head"),
    "ir": ("encoder", "head"),
    "cmc": ("l", "ab", "head_l", "head_ab"),
}


STRATEGIES = {
    "uniform": {},
    "ring": {"upper": 0.5},
    "dcl": {"tau_plus": 0.1},
    "hcl": {"tau_plus": 0.1, "beta": 1.0, "within_ring": True, "upper": 0.5},
    "mochi": {"mochi_hardest": 8, "mochi_pairs": 8, "mochi_query": 4},
}


@pytest.mark.parametrize("name", sorted(CONTRASTIVE))
@pytest.mark.parametrize("sampler", sorted(STRATEGIES))
def test_gradients_flow_only_where_they_should(name, sampler, tiny_config):
    torch.manual_seed(0)
    method = METHODS[name](as_config({**tiny_config, "method": name}), num_samples=40)
    views = [torch.rand(8, 3, 16, 16) for _ in range(method.num_views)]
    key_before = {k: v.clone() for k, v in method.state_dict().items() if k.startswith("key.")}
    loss, _ = method(views, torch.arange(8), NegativeSampler(sampler, **STRATEGIES[sampler]))
    loss.backward()
    for module_name, module in method.named_children():
        grads = [p.grad for p in module.parameters()]
        if module_name in TRAINED[name]:
            assert all(g is not None and torch.isfinite(g).all() for g in grads), module_name
            assert any(g.abs().sum() > 0 for g in grads), module_name
        else:
            assert all(g is None for g in grads), module_name
    for buffer_name, buffer in method.named_buffers():
        assert not buffer.requires_grad and buffer.grad is None, buffer_name
    if name == "moco":  # the key encoder moved by momentum only, towards the query encoder
        after = method.state_dict()
        moved = [
            k
            for k, v in key_before.items()
            if v.is_floating_point() and not torch.equal(v, after[k])
        ]
        assert moved and all(not p.requires_grad for p in method.key.parameters())


@pytest.mark.parametrize("name", ["moco", "simclr"])
def test_bf16_autocast_keeps_logits_in_float32(name, tiny_config):
    """The GPU AMP path, exercised with CPU autocast: networks in bf16, loss in float32."""
    torch.manual_seed(0)
    method = METHODS[name](as_config({**tiny_config, "method": name}), num_samples=40)
    views = [torch.rand(8, 3, 16, 16) for _ in range(method.num_views)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = method(views, torch.arange(8), NegativeSampler("ring", upper=0.5))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()


def test_key_encoder_is_the_momentum_average_of_the_query(tiny_config):
    """After a step's forward, every key parameter is m * key_before + (1 - m) * query (MoCo's
    eq. 2), with m != 0.5 so that swapping m and 1 - m shows; BN statistics are left out."""
    torch.manual_seed(0)
    cfg = as_config({**tiny_config, "method": "moco", "moco": {"queue_size": 64, "momentum": 0.9}})
    method = METHODS["moco"](cfg, num_samples=40)
    with torch.no_grad():  # key and query apart, so that the average is visible
        for param in [*method.key.parameters(), *method.head_k.parameters()]:
            param.add_(torch.randn_like(param))
    query = {n: p.clone() for n, p in [*named(method, "query"), *named(method, "head_q")]}
    key = {n: p.clone() for n, p in [*named(method, "key"), *named(method, "head_k")]}
    views = [torch.rand(8, 3, 16, 16) for _ in range(2)]
    method(views, torch.arange(8), NegativeSampler("uniform"))
    after = dict([*named(method, "key"), *named(method, "head_k")])
    for name, before in key.items():
        partner = name.replace("key.", "query.", 1).replace("head_k.", "head_q.", 1)
        expected = 0.9 * before + 0.1 * query[partner]
        torch.testing.assert_close(after[name], expected, rtol=1e-6, atol=1e-7)


def named(method, module):
    return [(f"{module}.{n}", p) for n, p in getattr(method, module).named_parameters()]


@pytest.mark.parametrize("name", ["ir", "cmc"])
@pytest.mark.parametrize("momentum", [0.0, 0.3])
def test_memory_bank_moves_by_its_momentum(name, momentum, tiny_config):
    """bank[i] <- normalize(m * bank[i] + (1 - m) * z_i) at the batch's indices only (m = 0 is
    the authors' IR: the entry becomes the new embedding); m != 0.5 shows a swap."""
    torch.manual_seed(1)
    config = {**tiny_config, "method": name, name: {"num_negatives": 16, "momentum": momentum}}
    method = METHODS[name](as_config(config), num_samples=40)
    banks = ["bank"] if name == "ir" else ["bank_l", "bank_ab"]
    before = {bank: getattr(method, bank).memory.clone() for bank in banks}
    captured = {}
    for bank in banks:  # the embeddings the bank receives, captured where they are handed over
        update = getattr(method, bank).update

        def capture(embeddings, indices, bank=bank, update=update):
            captured[bank] = embeddings.detach().clone()
            update(embeddings, indices)

        getattr(method, bank).update = capture
    indices = torch.tensor([3, 17, 0, 29, 11, 5, 38, 21])
    method([torch.rand(8, 3, 16, 16)], indices, NegativeSampler("uniform"))
    for bank in banks:
        z = torch.nn.functional.normalize(captured[bank], dim=1)
        old = before[bank][indices]
        expected = torch.nn.functional.normalize(momentum * old + (1 - momentum) * z, dim=1)
        memory = getattr(method, bank).memory
        torch.testing.assert_close(memory[indices], expected)
        untouched = torch.ones(40, dtype=torch.bool).scatter_(0, indices, False)
        assert torch.equal(memory[untouched], before[bank][untouched])
