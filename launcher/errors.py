"""The launcher's error type: a problem the user can fix, told in one line."""

from pretrain.errors import RingNCEError


class LauncherError(RingNCEError):
    """Bad input, an unreachable cluster or a rejected submission; the message names the fix."""
