"""Install Detectron2 into the running interpreter's environment.

Route 1: a compiled Detectron2 is already importable (``from detectron2 import _C`` works):
nothing to do. Route 2 (pip only): fetch the ``pb1-detectron2==0.6`` source distribution, whose
Python code is upstream v0.6 but which lacks the C++ sources, and install its ``detectron2``
package as plain Python under the name ``detectron2``. ``transfer.detectron2_env`` then backs
the missing ``detectron2._C`` with this project's fallback.
"""

import importlib.util
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "pb1-detectron2==0.6"

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
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def prepared_source(tmp):
    """The v0.6 sdist unpacked under ``tmp`` with the minimal setup script: a folder pip can
    install or build a wheel from (also used by tools/prepare_gpu_carry.sh)."""
    tmp = Path(tmp)
    pip("download", "-q", "--no-deps", "--no-build-isolation", SDIST, "-d", str(tmp))
    (archive,) = tmp.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp / "src", filter="data")
    (src,) = (tmp / "src").iterdir()
    (src / "setup.py").write_text(MINIMAL_SETUP)
    for name in ("setup.cfg", "pyproject.toml"):
        (src / name).unlink(missing_ok=True)
    return src


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
    main()
