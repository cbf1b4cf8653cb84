"""The transfer package's error types: a problem the user can fix, told in one line."""

from pretrain.errors import RingNCEError


class TransferError(RingNCEError):
    """Bad input to a transfer run; the message is one line naming the problem and the fix."""


class ConversionError(TransferError):
    """A checkpoint that cannot be converted; the message says why and what to do instead."""
