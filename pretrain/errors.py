"""The project's error types: a problem the user can fix, told in one line.

Every entry point catches ``RingNCEError``, prints ``error: <message>`` and exits with status 2.
"""


class RingNCEError(Exception):
    """Bad input or a failed run; the message names the problem and the fix."""


class PretrainError(RingNCEError):
    """A pretraining, evaluation or conversion problem."""
