"""Study presets: named budgets in ``configs/studies/<name>.yaml`` (``_base_`` composes them).

A preset says which data, methods, arms and seeds a study runs, and which pretraining and
evaluation overrides apply to every run alike. ``tools/compare_negatives.py --preset NAME`` (or a
path to a YAML file) picks one; its command-line arguments take precedence.
"""

from pathlib import Path

from launcher.errors import LauncherError
from pretrain.config import load_config
from pretrain.errors import nearest_name

PRESET_DIR = Path(__file__).resolve().parents[1] / "configs" / "studies"

# Every key a preset may set, with its default (strict: an unknown key is an error).
PRESET_SCHEMA = {
    "dataset": "fmnist",  # config suffix: `<arm>_<method>_<dataset>.yaml`
    "methods": ["ir", "moco", "simclr"],
    # uniform (the reference) and any other arm; `method:arm` for one method only
    "arms": ["uniform", "ring"],
    "seeds": [0, 1, 2],
    "overrides": [],  # pretraining key=value for every run
    "eval": [],  # tools/linear_eval.py options for every run
}


class PresetError(LauncherError):
    """No such study preset, or one with a key the study does not know."""


def preset_names() -> list[str]:
    return sorted(path.stem for path in PRESET_DIR.glob("*.yaml"))


def preset_path(name_or_path: str) -> Path:
    """``configs/studies/<name>.yaml`` for a name, the file itself for a path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise PresetError(f"study preset file {path} does not exist; check the path")
        return path
    if name_or_path not in preset_names():
        near = nearest_name(name_or_path, preset_names())
        hint = f" (did you mean '{near}'?)" if near else ""
        raise PresetError(
            f"unknown study preset '{name_or_path}'{hint}; use one of "
            f"{', '.join(preset_names())} or a path to a YAML file"
        )
    return PRESET_DIR / f"{name_or_path}.yaml"


def load_preset(name_or_path: str) -> dict:
    """The preset's values over the schema's defaults, as plain lists and strings."""
    return load_config(preset_path(name_or_path), schema=PRESET_SCHEMA).to_dict()
