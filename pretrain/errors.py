"""The project's error types: a problem the user can fix, told in one line.

Every entry point's ``main`` is wrapped in ``one_line_errors``: a ``RingNCEError`` is printed as
``error: <message>`` and the exit status is 2, without a traceback.
"""

import difflib
import functools
import sys


class RingNCEError(Exception):
    """Bad input or a failed run; the message names the problem and the fix."""


class PretrainError(RingNCEError):
    """A pretraining, evaluation or conversion problem."""


def nearest_name(name, candidates, cutoff=0.5):
    """The candidate closest to a mistyped ``name`` (difflib ratio >= cutoff), or None: the one
    nearest-key hint every unknown-name error in the project uses."""
    close = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=cutoff)
    return close[0] if close else None


def check_known_keys(mapping, allowed, where, error):
    """Refuse a key of ``mapping`` outside ``allowed`` with ``error`` (a RingNCEError class),
    naming the nearest valid key: the one unknown-key message of every strict schema."""
    for key in mapping:
        if key not in allowed:
            near = nearest_name(key, allowed)
            hint = f"did you mean '{near}'?" if near else f"valid keys: {', '.join(allowed)}"
            raise error(f"unknown key '{key}' in {where}; {hint}")


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
