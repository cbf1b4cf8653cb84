from pathlib import Path

import pytest

from pretrain.config import ConfigError, load_config, save_config

REPO = Path(__file__).resolve().parents[1]

SCHEMA = {
    "method": {"name": "moco", "temperature": 0.2},
    "optim": {"lr": 0.03, "epochs": 200, "nesterov": False},
    "data": {"root": None, "extra": {}},
}


def write(path, text):
    path.write_text(text)
    return path


def test_base_inheritance_and_overrides(tmp_path):
    write(tmp_path / "base.yaml", "optim:\n  lr: 0.5\n  epochs: 10\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\noptim:\n  epochs: 20\n")
    cfg = load_config(child, ["optim.nesterov=true", "method.temperature=0.1"], SCHEMA)
    assert cfg.optim.lr == 0.5
    assert cfg.optim.epochs == 20
    assert cfg.optim.nesterov is True
    assert cfg.method.temperature == 0.1
    assert cfg.method.name == "moco"


def test_unknown_key_names_nearest(tmp_path):
    path = write(tmp_path / "c.yaml", "optim:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.epoch'.*'optim\.epochs'"):
        load_config(path, ["optim.epoch=3"], SCHEMA)
    with pytest.raises(ConfigError, match="'metod'.*'method'"):
        load_config(write(tmp_path / "d.yaml", "metod:\n  name: ir\n"), (), SCHEMA)


def test_type_errors_and_int_to_float(tmp_path):
    path = write(tmp_path / "c.yaml", "optim:\n  lr: 1\n")
    assert load_config(path, (), SCHEMA).optim.lr == 1.0
    with pytest.raises(ConfigError, match="'optim.epochs' expects int"):
        load_config(path, ["optim.epochs=many"], SCHEMA)
    with pytest.raises(ConfigError, match="is a section"):
        load_config(path, ["optim=3"], SCHEMA)


def test_free_form_section_and_none_default(tmp_path):
    path = write(tmp_path / "c.yaml", "data:\n  root: /x\n  extra:\n    anything: 1\n")
    cfg = load_config(path, (), SCHEMA)
    assert cfg.data.root == "/x" and cfg.data.extra == {"anything": 1}


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path / "bad.yaml", "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="cycle"):
        load_config(write(tmp_path / "loop.yaml", "_base_: loop.yaml\n"))
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(write(tmp_path / "ok.yaml", "a: 1\n"), ["novalue"])


def test_save_round_trip(tmp_path):
    cfg = load_config(write(tmp_path / "c.yaml", "optim:\n  lr: 0.2\n"), (), SCHEMA)
    save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(tmp_path / "out" / "config.yaml", (), SCHEMA) == cfg


def test_exponent_without_dot_is_a_float(tmp_path):
    path = write(tmp_path / "c.yaml", "optim:\n  lr: 1e-3\n")
    assert load_config(path, ["method.temperature=2e-1"], SCHEMA).optim.lr == 1e-3
    assert load_config(path, ["method.temperature=2e-1"], SCHEMA).method.temperature == 0.2
    with pytest.raises(ConfigError, match="'optim.lr' expects float"):
        load_config(path, ["optim.lr=fast"], SCHEMA)


LEAVES = sorted((REPO / "configs" / "pretrain").glob("*.yaml"))


@pytest.mark.parametrize("leaf", LEAVES, ids=lambda path: path.stem)
def test_every_leaf_config_loads_with_its_methods_sampler_defaults(leaf):
    """Leaves compose _base_/{datasets,methods,samplers}; each loads against the schema, and a
    ring arm gets its method's defaults: 0.1 of a bank/queue, half of SimCLR's in-batch pool.
    Contrastive leaves are named sampler_method_dataset, the supervised ones method_dataset."""
    from pretrain.trainer import load_pretrain_config

    cfg = load_pretrain_config(leaf)
    parts = leaf.stem.split("_")
    arm, method = ("uniform", parts[0]) if len(parts) == 2 else parts[:2]
    assert cfg.sampler.name == arm.split("-")[0]
    assert cfg.method == method
    if arm == "ring":
        expected_upper = 0.5 if cfg.method == "simclr" else 0.1
        assert (cfg.sampler.upper, cfg.sampler.lower_ratio) == (expected_upper, 0.1)


def test_leaves_are_a_few_lines():
    assert LEAVES and all(len(leaf.read_text().splitlines()) <= 8 for leaf in LEAVES)
