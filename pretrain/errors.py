"""The error type of the pretraining library: a problem the user can fix, told in one line."""


class PretrainError(Exception):
    """Bad input or a failed run; the message names the problem and the fix."""
