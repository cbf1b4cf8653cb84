"""The classification tasks' error type: bad input told in one line with its fix."""

from pretrain.errors import nearest_name
from transfer.errors import TransferError


class ClassificationError(TransferError):
    """A dataset, protocol or checkpoint a classification task cannot use."""


def check_keys(mapping, allowed, where):
    """Refuse a key outside ``allowed``, naming the nearest valid one."""
    for key in mapping:
        if key not in allowed:
            near = nearest_name(key, allowed)
            hint = f"did you mean '{near}'?" if near else f"valid keys: {', '.join(allowed)}"
            raise ClassificationError(f"unknown key '{key}' in {where}; {hint}")
