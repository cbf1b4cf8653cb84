"""The project's error types: a problem the user can fix, told in one line.

Every entry point's ``main`` is wrapped in ``one_line_errors``: a ``RingNCEError`` is printed as
``error: <message>`` and the exit status is 2, without a traceback.
"""

import functools
import sys


class RingNCEError(Exception):
    """Bad input or a failed run; the message names the problem and the fix."""


class PretrainError(RingNCEError):
    """A pretraining, evaluation or conversion problem."""


def one_line_errors(main):
    """Wrap an entry point's ``main(argv) -> status`` so that a ``RingNCEError`` exits with 2."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except RingNCEError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

    return wrapped
