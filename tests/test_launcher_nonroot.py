"""Set-up and tests as an ordinary user (issue 14, part 5): run as ``nobody`` with the system-wide
Fashion-MNIST hidden (an empty folder bind-mounted over it in a private mount namespace), so
what passes here is what a user without root on a login node gets:

- tools/fetch_fashion_mnist.sh (what tools/setup_env.sh runs without root) unpacks the Debian
  package into the project cache with ``apt-get download`` + ``dpkg -x``;
- the data tests, the real Fashion-MNIST one included, pass from that copy;
- a Slurm test skips with one line naming what is missing (root), instead of failing.

Needs root itself (to switch user and mount), so it skips elsewhere. The demo as a non-root user
is the same code path (the loader's lookup), not repeated here for its minutes.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYSTEM_COPY = Path("/usr/share/datasets/fashion-mnist")

pytestmark = pytest.mark.slow


def as_nobody(home, cache, command):
    """``command`` (a shell line, run in the repository) as nobody, the system copy hidden."""
    empty = home / "empty"
    empty.mkdir(exist_ok=True)
    hide = f"mount --bind {empty} {SYSTEM_COPY} && " if SYSTEM_COPY.is_dir() else ""
    # the checkout may be, or sit below, a root-only folder (`mktemp -d` makes mode 700 ones):
    # nobody sees it through an overlay in its own home, whose root is world-readable; overlayfs
    # reads the checkout with the mounter's (root's) rights, nothing on disk changes mode
    checkout, upper, work = home / "checkout", home / "overlay-upper", home / "overlay-work"
    for folder in (checkout, upper, work):
        folder.mkdir(mode=0o755, exist_ok=True)
    hide += (
        f"mount -t overlay overlay -o lowerdir={REPO},upperdir={upper},workdir={work} "
        f"{checkout} && "
    )
    # this machine's venv was made from a Python under /root (mode 700): show nobody that Python
    # alone, as a user's own installation would be readable to them
    if sys.base_prefix.startswith("/root/"):
        python = home / "python"
        python.mkdir(exist_ok=True)
        hide += (
            f"mount --bind {sys.base_prefix} {python} && mount -t tmpfs -o mode=755 tmpfs /root && "
            f"mkdir -p {sys.base_prefix} && mount --bind {python} {sys.base_prefix} && "
        )
    user = f"setpriv --reuid nobody --regid nogroup --clear-groups env HOME={home} TMPDIR={home}"
    user += f" RINGNCE_CACHE={cache} PATH={os.environ['PATH']} OMP_NUM_THREADS=1"
    return subprocess.run(
        ["unshare", "--mount", "sh", "-c", f"{hide}cd {checkout} && {user} sh -c '{command}'"],
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture
def nobody_home():
    if os.geteuid() != 0:
        pytest.skip("switching to the nobody user needs root (this run is already non-root)")
    for tool in ("unshare", "setpriv", "apt-get", "dpkg"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    # not under pytest's tmp_path: its root-owned parents (mode 700) shut nobody out
    home = Path(tempfile.mkdtemp(prefix="ringnce-nobody-", dir="/tmp"))
    shutil.chown(home, "nobody", "nogroup")
    yield home
    shutil.rmtree(home, ignore_errors=True)


def test_setup_data_and_tests_work_without_root(nobody_home):
    cache = nobody_home / "cache"
    fetched = as_nobody(nobody_home, cache, "bash tools/fetch_fashion_mnist.sh")
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert "unpacked into" in fetched.stdout
    unpacked = cache / "debian" / "dataset-fashion-mnist" / "usr/share/datasets/fashion-mnist"
    assert (unpacked / "train-images-idx3-ubyte.gz").stat().st_uid != 0  # nobody wrote it
    again = as_nobody(nobody_home, cache, "bash tools/fetch_fashion_mnist.sh")
    assert again.returncode == 0 and again.stdout == ""  # already there: nothing fetched

    pytest_as_nobody = f".venv/bin/python -m pytest -p no:cacheprovider --basetemp {nobody_home}/pt"
    tests = as_nobody(
        nobody_home,
        cache,
        f"{pytest_as_nobody} -v -rs tests/test_pretrain_data.py tests/test_config.py",
    )
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert "test_real_fashion_mnist_when_installed PASSED" in tests.stdout

    slurm = as_nobody(
        nobody_home, cache, f"{pytest_as_nobody} -rs tests/test_slurm_cluster.py -k idempotent"
    )
    assert slurm.returncode == 0, slurm.stdout[-3000:]
    skipped = [line for line in slurm.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1 and "local Slurm cluster unavailable: needs root" in skipped[0]
