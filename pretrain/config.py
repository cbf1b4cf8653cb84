"""YAML configs with ``_base_`` inheritance, dotted ``key=value`` overrides and strict keys.

Merge order: schema defaults <- ``_base_`` files (in order) <- the file <- command-line
overrides. With a schema, every key must exist in it (an empty mapping in the schema accepts any
keys), so a typo is an error that names the nearest valid key instead of being ignored.
"""

from pathlib import Path

import yaml

from pretrain.atomic_write import atomic_write
from pretrain.errors import RingNCEError, nearest_name

BASE_KEY = "_base_"


class ConfigError(RingNCEError, ValueError):
    """A config problem the user can fix; its message is one line."""


class Config(dict):
    """A dict whose keys also read as attributes (``cfg.optim.lr``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def to_dict(self):
        return {k: v.to_dict() if isinstance(v, Config) else v for k, v in self.items()}


def to_config(value):
    if isinstance(value, dict):
        return Config({k: to_config(v) for k, v in value.items()})
    return value


def deep_merge(base, update):
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path):
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (check the path given to --config)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" line {where.line + 1}" if where else ""
        raise ConfigError(f"config file {path}{line} is not valid YAML: fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of keys, not {type(data).__name__}"
        )
    return data


def load_file_with_bases(path, chain=()):
    """The file's mapping merged over its ``_base_`` files (paths relative to the file)."""
    path = Path(path).resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"config _base_ cycle: {cycle}")
    data = read_yaml(path)
    bases = data.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    merged = {}
    for base in bases:
        merged = deep_merge(merged, load_file_with_bases(path.parent / base, (*chain, path)))
    return deep_merge(merged, data)


def parse_override(text):
    """``"optim.lr=0.1"`` -> ``(["optim", "lr"], 0.1)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not key=value (e.g. optim.lr=0.1)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def set_dotted(mapping, keys, value):
    node = mapping
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


def dotted_keys(mapping, prefix=""):
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        yield path
        if isinstance(value, dict):
            yield from dotted_keys(value, f"{path}.")


def nearest_key_hint(path, schema):
    candidates = list(dotted_keys(schema))
    near = nearest_name(path, candidates)
    close = [near] if near else []
    if not close:
        leaf = path.rsplit(".", 1)[-1]
        close = [c for c in candidates if c.rsplit(".", 1)[-1] == leaf][:1]
    return f"; did you mean '{close[0]}'?" if close else ""


def is_float_text(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def type_name(value):
    return type(value).__name__


def check_value(path, value, default):
    if default is None or value is None:
        return value
    if isinstance(default, bool) or isinstance(value, bool):
        if isinstance(default, bool) and isinstance(value, bool):
            return value
    elif isinstance(default, float) and isinstance(value, int):
        return float(value)
    elif isinstance(default, float) and isinstance(value, str) and is_float_text(value):
        return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    elif isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return list(value)
    elif isinstance(value, type(default)):
        return value
    raise ConfigError(
        f"config key '{path}' expects {type_name(default)} (default {default!r}), "
        f"got {type_name(value)} {value!r}"
    )


def validate(values, schema, root_schema, prefix=""):
    """Check ``values`` against ``schema`` and return them merged over its defaults."""
    if not schema:  # an empty mapping in the schema is free-form
        return dict(values)
    merged = dict(schema)
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in schema:
            raise ConfigError(f"unknown config key '{path}'{nearest_key_hint(path, root_schema)}")
        default = schema[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"config key '{path}' is a section; set its keys, e.g. {path}.x=..."
                )
            merged[key] = validate(value, default, root_schema, f"{path}.")
        else:
            merged[key] = check_value(path, value, default)
    return merged


def load_config(path, overrides=(), schema=None):
    """Load ``path`` (with its ``_base_`` files), apply ``key=value`` overrides, validate."""
    values = load_file_with_bases(path)
    for text in overrides:
        keys, value = parse_override(text)
        set_dotted(values, keys, value)
    if schema is not None:
        values = validate(values, schema, schema)
    return to_config(values)


def save_config(cfg, path):
    """Write the resolved config atomically (temp file + rename)."""
    data = cfg.to_dict() if isinstance(cfg, Config) else dict(cfg)
    atomic_write(path, lambda handle: yaml.safe_dump(data, handle, sort_keys=False))
