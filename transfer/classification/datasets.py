"""What a classification task's ``dataset`` names, resolved to folders.

- an offline domain built from shipped data (``glyphs``, ``digits``: transfer.classification
  .domains), built into the project cache on first use;
- a folder (``ROOT/<class>/...`` or ``ROOT/{train,val,test}/<class>/...``);
- a mapping ``{root | builtin | config, split, name, domains}``, or a YAML file holding one
  (``_base_`` allowed). With ``domains`` it is a suite (the Meta-Dataset recipe,
  configs/classification/meta_dataset.yaml): one dataset per domain folder under ``root``.

``split`` is the rule for datasets without split folders: ``{train: f, val: f, test: f}``.
"""

from pathlib import Path

from pretrain.config import load_file_with_bases
from pretrain.errors import nearest_name
from transfer.classification import domains
from transfer.classification.errors import ClassificationError, check_keys
from transfer.classification.splits import check_rule

DATASET_KEYS = ("config", "root", "builtin", "split", "name", "domains")
DOCS = "docs/classification.md"


def _as_mapping(value, where):
    if isinstance(value, str) and value in domains.DOMAINS:
        return {"builtin": value}
    if isinstance(value, str) and value.endswith((".yaml", ".yml")):
        return {"config": value}
    if isinstance(value, str):
        return {"root": value}
    if isinstance(value, dict):
        return dict(value)
    raise ClassificationError(
        f"{where} must be an offline domain ({', '.join(domains.DOMAINS)}), a folder, a YAML file "
        "or a mapping with root/builtin/config"
    )


def _with_config(mapping, where):
    """The mapping over its ``config`` file; the file's relative root is taken from the current
    directory, like every path of a sweep file."""
    config = mapping.pop("config", None)
    if config is None:
        return mapping
    path = Path(config).expanduser()
    if not path.is_file():
        raise ClassificationError(f"{where}: dataset config {path} does not exist")
    return {**load_file_with_bases(path), **mapping}


def _root(mapping, where):
    builtin, root = mapping.get("builtin"), mapping.get("root")
    if (builtin is None) == (root is None):
        raise ClassificationError(f"{where} needs exactly one of 'root' (a folder) or 'builtin'")
    if builtin is None:
        return str(Path(str(root)).expanduser().resolve()), mapping.get("name") or Path(root).name
    if builtin not in domains.DOMAINS:
        near = nearest_name(builtin, domains.DOMAINS)
        raise ClassificationError(
            f"{where}: no offline domain {builtin!r}"
            + (f"; did you mean '{near}'?" if near else f"; choose {', '.join(domains.DOMAINS)}")
        )
    return str(domains.build(builtin)), mapping.get("name") or builtin


def _dataset(root, name, mapping, where):
    split = mapping.get("split")
    if split is None and "builtin" in mapping:
        split = domains.DOMAINS[mapping["builtin"]].split
    return {
        "name": str(name),
        "root": root,
        "builtin": mapping.get("builtin"),  # rebuilt by a run whose node lacks the cache
        "split": None if split is None else check_rule(split, where),
    }


def _suite(root, mapping, where):
    names = mapping["domains"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ClassificationError(f"{where}.domains must be a non-empty list of folder names")
    suite = mapping.get("name") or Path(root).name
    datasets = {}
    for domain in names:
        folder = Path(root) / domain
        if not folder.is_dir():
            raise ClassificationError(
                f"{suite} domain '{domain}' not found: expected {folder} (one sub-folder per "
                f"class; see {DOCS}); lay it out there or drop it from domains"
            )
        datasets[domain] = _dataset(str(folder), f"{suite}/{domain}", mapping, where)
    return datasets


def resolve_datasets(value, where="dataset"):
    """``{domain or None: {"name", "root", "split"}}``: one entry (key None) for a dataset,
    one per domain for a suite. Paths come back absolute; suite domains are checked to exist."""
    mapping = _with_config(_as_mapping(value, where), where)
    check_keys(mapping, DATASET_KEYS, where)
    root, name = _root(mapping, where)
    if "domains" in mapping:
        return _suite(root, mapping, where)
    return {None: _dataset(root, name, mapping, where)}
