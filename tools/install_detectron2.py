"""Install Detectron2 into the running interpreter's environment.

Route 1: a compiled Detectron2 is already importable (``from detectron2 import _C`` works):
nothing to do. Route 2 (pip only): fetch the ``pb1-detectron2==0.6`` source distribution, whose
Python code is upstream v0.6 but which lacks the C++ sources, and install its ``detectron2``
package as plain Python under the name ``detectron2``. ``transfer.detectron2_env`` then backs
the missing ``detectron2._C`` with this project's fallback.

Standard library only, and runs on every Python setup.py admits (from Debian 12's 3.11.2):
tests/test_setup_oldest_python.py runs its unpacking under the oldest one on the machine.
"""

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "pb1-detectron2==0.6"
SDIST_FILE = "pb1-detectron2-0.6.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"  # PyPI's

# Only the package list and the model-zoo configs: the sdist's own setup.py builds the C++
# extension from sources the sdist does not contain.
MINIMAL_SETUP = """
from pathlib import Path
from setuptools import find_packages, setup

configs = [str(p.relative_to("detectron2/model_zoo"))
           for p in Path("detectron2/model_zoo/configs").rglob("*") if p.is_file()]
setup(
    name="detectron2",
    version="0.6",
    description="Detectron2 v0.6 Python code (pb1-detectron2 sdist), installed without _C",
    packages=find_packages(include=["detectron2", "detectron2.*"]),
    package_data={"detectron2.model_zoo": configs},
)
"""


def installed_state():
    """'compiled', 'python-only' or None."""
    code = (
        "import importlib.util, sys\n"
        "spec = importlib.util.find_spec('detectron2')\n"
        "if spec is None: sys.exit(3)\n"
        "sys.exit(0 if importlib.util.find_spec('detectron2._C') else 4)\n"
    )
    rc = subprocess.run([sys.executable, "-c", code], capture_output=True).returncode
    return {0: "compiled", 4: "python-only"}.get(rc)


def pip(*args):
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    subprocess.run(command, check=True)


# tarfile's extraction filters arrived in 3.11.4 and 3.10.12; Debian 12's python3 is 3.11.2
HAS_DATA_FILTER = hasattr(tarfile, "data_filter")


class UnsafeArchive(Exception):
    """An archive this script will not install from (one line: what is wrong with it)."""


def refuse_unsafe(member, dest):
    """Raise UnsafeArchive if ``member`` may not be extracted under ``dest`` (a real path),
    judged against what is on disk now, so links extracted before it are followed: absolute
    names, names or link targets leaving ``dest``, device files and fifos. What
    ``tarfile.data_filter`` refuses, for Pythons that predate it (3.11.0-3.11.3, 3.10.0-3.10.11)."""
    name = member.name
    if name.startswith(("/", os.sep)) or os.path.isabs(name):
        raise UnsafeArchive(f"member {name!r} has an absolute path")
    target = os.path.realpath(os.path.join(dest, name))
    if os.path.commonpath([dest, target]) != dest:
        raise UnsafeArchive(f"member {name!r} would be written outside the destination")
    if member.ischr() or member.isblk() or member.isfifo():
        raise UnsafeArchive(f"member {name!r} is a device file or fifo")
    if member.issym() or member.islnk():
        if os.path.isabs(member.linkname):
            raise UnsafeArchive(f"link {name!r} points to the absolute path {member.linkname!r}")
        # a symbolic link is relative to its own folder, a hard link to the archive's root
        base = os.path.dirname(target) if member.issym() else dest
        pointee = os.path.realpath(os.path.join(base, member.linkname))
        if os.path.commonpath([dest, pointee]) != dest:
            raise UnsafeArchive(f"link {name!r} points outside the destination")


def checked_members(tar, dest):
    """The members of ``tar``, each refused or made safe just before extractall takes it (it
    pulls them one at a time, so each check sees the links already extracted). Modes and owners
    as the "data" filter leaves them: no setuid/setgid/sticky or group/other write bits, files
    readable and writable by their owner, owned by whoever extracts."""
    for member in tar:
        refuse_unsafe(member, dest)
        if member.isdir():
            member.mode = 0o755
        elif member.isreg() or member.islnk():
            member.mode = (member.mode & 0o755) | 0o600
            if not member.mode & 0o100:
                member.mode &= ~0o111
        member.uid, member.gid, member.uname, member.gname = os.getuid(), os.getgid(), "", ""
        yield member


def extract_safely(archive, dest, use_filter=HAS_DATA_FILTER):
    """Unpack ``archive`` into ``dest`` with the "data" filter where this Python has it
    (3.11.4+, 3.10.12+), else with the same refusals done by hand. (The filter strips a leading
    "/" from a member's name and extracts it inside ``dest``; the hand check refuses it.)"""
    dest = os.path.realpath(dest)
    os.makedirs(dest, exist_ok=True)
    with tarfile.open(archive) as tar:
        if not use_filter:
            tar.extractall(dest, members=checked_members(tar, dest))
            return
        try:
            tar.extractall(dest, filter="data")
        except tarfile.FilterError as error:
            raise UnsafeArchive(str(error)) from error


def unpacked_source(archive, dest):
    """The v0.6 sdist ``archive`` unpacked under ``dest`` with the minimal setup script in place
    of its own: a folder pip can install or build a wheel from."""
    try:
        extract_safely(archive, Path(dest))
    except UnsafeArchive as error:
        raise UnsafeArchive(f"{Path(archive).name}: {error}; refusing to install from it") from None
    (src,) = Path(dest).iterdir()
    (src / "setup.py").write_text(MINIMAL_SETUP)
    for name in ("setup.cfg", "pyproject.toml"):
        (src / name).unlink(missing_ok=True)
    return src


def cache_dir():
    # transfer.fixtures.cache_dir's rule: this script runs before the project is installed
    return Path(os.environ.get("RINGNCE_CACHE", Path(__file__).resolve().parents[1] / ".cache"))


def cached_sdist():
    """The sdist, fetched through pip once into the project cache and checked against PyPI's
    hash (tests/test_setup_oldest_python.py unpacks it under the oldest Python)."""
    path = cache_dir() / "downloads" / SDIST_FILE
    if path.is_file():
        return path
    with tempfile.TemporaryDirectory() as tmp:
        pip("download", "-q", "--no-deps", "--no-build-isolation", SDIST, "-d", tmp)
        archive = Path(tmp) / SDIST_FILE
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            raise UnsafeArchive(
                f"{SDIST_FILE}: the package index served sha256 {digest}, not PyPI's "
                f"{SDIST_SHA256}; refusing to install from it"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{SDIST_FILE}.{os.getpid()}.partial")
        shutil.copyfile(archive, partial)
        os.replace(partial, path)  # whole or absent for a concurrent reader
    return path


def prepared_source(tmp):
    """The v0.6 sdist unpacked under ``tmp`` by ``unpacked_source`` (also used by
    tools/prepare_gpu_carry.sh)."""
    return unpacked_source(cached_sdist(), Path(tmp) / "src")


def main():
    state = installed_state()
    if state == "compiled":
        print("detectron2: compiled build found (detectron2._C present); using it")
        return
    if state == "python-only":
        print(
            "detectron2: v0.6 Python package present; detectron2._C comes from ring-nce's fallback"
        )
        return
    if importlib.util.find_spec("torch") is None:
        sys.exit("install_detectron2: torch must be installed first (its setup.py imports torch)")
    with tempfile.TemporaryDirectory() as tmp:
        pip("install", "-q", "--no-deps", "--no-build-isolation", str(prepared_source(tmp)))
    print("detectron2: installed v0.6 Python code from", SDIST)


if __name__ == "__main__":
    try:
        main()
    except UnsafeArchive as error:
        print(f"error: install_detectron2: {error}", file=sys.stderr)
        sys.exit(2)
