"""The evaluation protocols a classification task names, with their defaults (Ericsson et al.,
CVPR 2021, ``linusericsson/ssl-transfer``: ``linear.py``, ``few_shot.py``).

A task's ``protocol`` is a name (``linear``), a mapping (``{name: fewshot, shots: 1}``) or a
YAML file holding such a mapping (``_base_`` allowed). Unknown names and keys are one-line
errors naming the nearest valid one.
"""

import copy
from pathlib import Path

from pretrain.config import ConfigError, load_file_with_bases, validate
from pretrain.errors import nearest_name
from transfer.classification.errors import ClassificationError

PROTOCOLS = {
    # L-BFGS multinomial logistic regression on frozen features; C = 1/wd for Ericsson's
    # wd = logspace(-6, 5, 45), picked on validation, then refit on train + val
    "linear": {
        "c_min": 1e-5,
        "c_max": 1e6,
        "c_values": 45,
        "max_iter": 100,  # scikit-learn's default, which Ericsson et al. ran with
        "metric": "top1",  # what validation maximises: top1 or mean_per_class
        "val_fraction": 0.2,  # held out of train when the dataset has no val split
    },
    # weighted kNN (cosine, votes exp(s / T)), train + val as the bank, test as queries
    "knn": {"k": 20, "temperature": 0.07},
    # N-way K-shot episodes, Q queries per class, prototype (class mean) classifier
    "fewshot": {"ways": 5, "shots": 5, "queries": 15, "episodes": 600, "split": "all"},
}
METRICS = ("top1", "mean_per_class")
FEWSHOT_SPLITS = ("all", "train", "val", "test")
POSITIVE_INTEGERS = {
    "linear": ("c_values", "max_iter"),
    "knn": ("k",),
    "fewshot": ("shots", "queries", "episodes"),
}


def _as_mapping(value, where):
    if isinstance(value, str) and value.endswith((".yaml", ".yml")):
        path = Path(value).expanduser()
        if not path.is_file():
            raise ClassificationError(f"{where}: protocol file {path} does not exist")
        return load_file_with_bases(path)
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict):
        return dict(value)
    raise ClassificationError(
        f"{where} must be a protocol name ({', '.join(PROTOCOLS)}), a mapping with 'name', or a "
        "YAML file"
    )


def _check_values(name, settings, where):
    for key in POSITIVE_INTEGERS[name]:
        if isinstance(settings[key], bool) or not isinstance(settings[key], int):
            raise ClassificationError(f"{where}.{key} is {settings[key]!r}; it must be an integer")
        if settings[key] < 1:
            raise ClassificationError(f"{where}.{key} is {settings[key]}; it must be >= 1")
    if name == "linear":
        if not 0 < settings["c_min"] < settings["c_max"]:
            raise ClassificationError(f"{where} needs 0 < c_min < c_max")
        if settings["metric"] not in METRICS:
            raise ClassificationError(f"{where}.metric must be one of {', '.join(METRICS)}")
        if not 0 < settings["val_fraction"] < 1:
            raise ClassificationError(f"{where}.val_fraction must lie in (0, 1)")
    if name == "knn" and not settings["temperature"] > 0:
        raise ClassificationError(f"{where}.temperature must be > 0")
    if name == "fewshot":
        if isinstance(settings["ways"], bool) or not isinstance(settings["ways"], int):
            raise ClassificationError(f"{where}.ways must be an integer")
        if settings["ways"] < 2:
            raise ClassificationError(f"{where}.ways is {settings['ways']}; an episode needs >= 2")
        if settings["split"] not in FEWSHOT_SPLITS:
            raise ClassificationError(f"{where}.split must be one of {', '.join(FEWSHOT_SPLITS)}")


def parse_protocol(value, where="protocol"):
    """``{"name": ..., **settings}`` with every default filled in and every value checked."""
    mapping = _as_mapping(value, where)
    name = mapping.pop("name", None)
    if name not in PROTOCOLS:
        near = nearest_name(name, PROTOCOLS)
        hint = f"did you mean '{near}'?" if near else f"choose one of {', '.join(PROTOCOLS)}"
        raise ClassificationError(f"{where}: unknown protocol {name!r}; {hint}")
    schema = copy.deepcopy(PROTOCOLS[name])
    try:
        settings = validate(mapping, schema, schema)
    except ConfigError as error:
        message = str(error).replace("config key", f"key of protocol {name}")
        raise ClassificationError(f"{where}: {message}") from None
    _check_values(name, settings, f"{where} ({name})")
    return {"name": name, **settings}
