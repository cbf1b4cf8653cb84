"""The classification tasks' error type: bad input told in one line with its fix."""

from pretrain.errors import check_known_keys
from transfer.errors import TransferError


class ClassificationError(TransferError):
    """A dataset, protocol or checkpoint a classification task cannot use."""


def check_keys(mapping, allowed, where):
    """Refuse a key outside ``allowed``, naming the nearest valid one."""
    check_known_keys(mapping, allowed, where, ClassificationError)
