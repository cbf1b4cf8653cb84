"""The classification tasks' error type: bad input told in one line with its fix."""

from transfer.errors import TransferError


class ClassificationError(TransferError):
    """A dataset, protocol or checkpoint a classification task cannot use."""
