"""The launcher's error type: a problem the user can fix, told in one line."""


class LauncherError(Exception):
    """Bad input, an unreachable cluster or a rejected submission; the message names the fix."""
