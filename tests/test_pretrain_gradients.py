"""Gradients reach the trained encoders and heads only: not the key encoder, not the banks."""

import pytest
import torch

from pretrain.methods import METHODS
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


@pytest.mark.parametrize("name", sorted(METHODS))
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
