#!/usr/bin/env python
"""Refuse a carried wheel that the device's CPython 3.12 cannot install (prepare_gpu_carry.sh).

    python tools/carry_wheels.py DIR [--log-dir LOGS]

A wheel is fine if its tags name CPython 3.12 (``cp312``), the stable ABI (``abi3``) or pure
Python 3 (``py3-none-any``). Anything else (a ``cp311`` wheel that ``pip wheel`` built here when
PyPI had no cp312 one) fails here, in one line naming the package, instead of on the device.
``LOGS/NAME.log`` (the failed download's output, if any) gives the reason in that line.
"""

import argparse
import sys
from pathlib import Path


def installable_on_cp312(filename):
    """From ``name-version[-build]-python-abi-platform.whl``: does CPython 3.12 take it?"""
    python, abi, platform = filename[: -len(".whl")].split("-")[-3:]
    pythons = python.split(".")
    if "cp312" in pythons or abi == "abi3":
        return True
    return (
        any(p in ("py3", "py2.py3") for p in pythons + [python])
        and abi == "none"
        and (platform == "any")
    )


def last_line(path):
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def check(wheel_dir, log_dir=None):
    """The one-line error for the first wheel CPython 3.12 refuses, or None."""
    for wheel in sorted(Path(wheel_dir).glob("*.whl")):
        if installable_on_cp312(wheel.name):
            continue
        package = wheel.name.split("-")[0].lower()
        reason = ""
        log = Path(log_dir) / f"{package}.log" if log_dir else None
        if log and log.is_file() and last_line(log):
            reason = f" (PyPI download: {last_line(log)[:200]})"
        return (
            f"{package}: {wheel.name} is not cp312, abi3 or py3-none-any, so the device's "
            f"Python 3.12 refuses it{reason}; pin a {package} version with a cp312 wheel in "
            "requirements.txt"
        )
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel_dir")
    parser.add_argument("--log-dir")
    args = parser.parse_args(argv)
    error = check(args.wheel_dir, args.log_dir)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
