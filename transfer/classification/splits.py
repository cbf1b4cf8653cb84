"""Which images train, validate and test a probe, for one seed.

Split folders are used as they are; without a val/ folder, a stratified ``val_fraction`` of each
class's train images validates (Ericsson et al. hold out 20% of train). A dataset without split
folders needs a split rule, ``{train: f, val: f, test: f}``, applied per class with the run's
seed, so each seed is another draw of the partition and the interval over seeds includes it.
"""

import numpy as np

from transfer.classification.errors import ClassificationError
from transfer.classification.image_folder import SPLITS

TRAIN, VAL, TEST = (SPLITS.index(name) for name in SPLITS)


def check_rule(rule, where):
    """A split rule's fractions: the three splits, each > 0, summing to 1."""
    if not isinstance(rule, dict) or set(rule) != set(SPLITS):
        raise ClassificationError(
            f"{where} split rule {rule!r} must give fractions for exactly train, val and test, "
            "e.g. {train: 0.5, val: 0.2, test: 0.3}"
        )
    fractions = {}
    for name in SPLITS:
        value = rule[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ClassificationError(f"{where} split {name}: {value!r} must lie in (0, 1)")
        fractions[name] = float(value)
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ClassificationError(
            f"{where} split fractions {fractions} sum to {sum(fractions.values()):g}, not 1"
        )
    return fractions


def _class_members(labels, label, mask=None):
    selected = labels == label
    return np.flatnonzero(selected if mask is None else selected & mask)


def split_by_rule(folder, rule, seed):
    generator = np.random.default_rng(seed)
    splits = np.full(len(folder.labels), TRAIN)
    for label, name in enumerate(folder.classes):
        members = generator.permutation(_class_members(folder.labels, label))
        n_val = int(round(rule["val"] * len(members)))
        n_test = int(round(rule["test"] * len(members)))
        if min(n_val, n_test, len(members) - n_val - n_test) < 1:
            raise ClassificationError(
                f"class '{name}' of {folder.root} has {len(members)} images: too few for the split "
                f"rule {rule} (each split needs one); use a coarser rule or more images"
            )
        splits[members[:n_val]] = VAL
        splits[members[n_val : n_val + n_test]] = TEST
    return splits


def hold_out_validation(folder, val_fraction, seed):
    generator = np.random.default_rng(seed)
    splits = folder.folder_splits.copy()
    for label, name in enumerate(folder.classes):
        members = generator.permutation(_class_members(folder.labels, label, splits == TRAIN))
        n_val = int(round(val_fraction * len(members)))
        if n_val < 1 or n_val >= len(members):
            raise ClassificationError(
                f"class '{name}' of {folder.root}/train has {len(members)} images: too few to hold "
                f"out {val_fraction:.0%} for validation; add a val/ folder or more images"
            )
        splits[members[:n_val]] = VAL
    return splits


def assign_splits(folder, rule, val_fraction, seed):
    """The split (TRAIN, VAL, TEST) of every image of ``folder`` for ``seed``."""
    if folder.has_split_folders:
        if (folder.folder_splits == VAL).any():
            return folder.folder_splits.copy()
        return hold_out_validation(folder, val_fraction, seed)
    if rule is None:
        raise ClassificationError(
            f"{folder.root} has no train/val/test folders: give the dataset a split rule, e.g. "
            "split: {train: 0.5, val: 0.2, test: 0.3}"
        )
    return split_by_rule(folder, rule, seed)
