"""Set-up under the oldest Python that setup.py admits (issue 26). Debian 12's /usr/bin/python3 is
3.11.2, older than tarfile's extraction filters (3.11.4): ``extractall(filter="data")`` broke an
ordinary user's set-up there while the suite, run by a newer Python, passed. So the set-up steps
that touch version-dependent APIs run here under the oldest system Python on the machine that
meets python_requires (skipped, with the reason, where there is none):

- tools/install_detectron2.py's source preparation, on a crafted sdist, on malicious archives
  and on the real pb1-detectron2 sdist when the project cache has it;
- a venv made with ``--without-pip`` (what an ordinary user gets without Debian's python3-venv)
  given pip by tools/bootstrap_pip.py, from a local index;
- every project source compiled, so syntax newer than the oldest Python fails here too.
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from crafted_archives import MALICIOUS, SDIST_LIKE, TOP, write_archive, write_fake_pip_index

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
sys.path.insert(0, str(TOOLS))  # as when run as a script
import install_detectron2  # noqa: E402

FLOOR = tuple(
    int(part)
    for part in re.search(r'python_requires=">=([\d.]+)"', (REPO / "setup.py").read_text())[
        1
    ].split(".")
)
SYSTEM_DIRS = (Path("/usr/bin"), Path("/usr/local/bin"))
# no user site-packages and no PYTHONPATH: the old interpreter sees the standard library only
BARE_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONNOUSERSITE": "1"}


def run_python(python, code, *args, timeout=120):
    return subprocess.run(
        [str(python), "-c", code, *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=BARE_ENV, cwd=REPO,
    )  # fmt: skip


def version_of(python):
    done = run_python(python, "import sys; print(*sys.version_info[:3])", timeout=30)
    return tuple(map(int, done.stdout.split())) if done.returncode == 0 else None


@pytest.fixture(scope="module")
def oldest():
    """(version, path) of the oldest system python3 meeting python_requires."""
    found = {}
    for folder in SYSTEM_DIRS:
        for path in folder.glob("python3*"):
            if re.fullmatch(r"python3(\.\d+)?", path.name) and os.access(path, os.X_OK):
                found.setdefault(path.resolve(), path)
    versions = sorted((v, p) for p in found.values() if (v := version_of(p)) and v >= FLOOR)
    if not versions:
        where = " or ".join(map(str, SYSTEM_DIRS))
        pytest.skip(f"no system python3 >= {'.'.join(map(str, FLOOR))} in {where}")
    return versions[0]


UNPACK = """
import sys, tarfile
sys.path.insert(0, sys.argv[1])
from install_detectron2 import HAS_DATA_FILTER, UnsafeArchive, unpacked_source
print("data filter" if HAS_DATA_FILTER else "hand-written check")
for archive in sys.argv[2:]:
    try:
        print("unpacked", unpacked_source(archive, archive + ".src"))
    except UnsafeArchive as error:
        print("refused", error)
"""


def unpack_under(python, archives):
    """(route, one result line per archive) of install_detectron2.unpacked_source under
    ``python``."""
    done = run_python(python, UNPACK, TOOLS, *archives)
    assert done.returncode == 0, done.stderr
    route, *results = done.stdout.splitlines()
    assert len(results) == len(archives), done.stdout
    return route, results


def test_detectron2_source_is_prepared_under_the_oldest_python(tmp_path, oldest):
    version, python = oldest
    route, [result] = unpack_under(python, [write_archive(tmp_path / "a.tar.gz", SDIST_LIKE)])
    # the filters arrived in 3.11.4 (3.10.12 on 3.10): before them, the check by hand
    assert route == ("data filter" if version >= (3, 11, 4) else "hand-written check")
    src = tmp_path / "a.tar.gz.src" / TOP
    assert result == f"unpacked {src}"
    assert (src / "setup.py").read_text() == install_detectron2.MINIMAL_SETUP
    assert not (src / "setup.cfg").exists() and not (src / "pyproject.toml").exists()
    assert oct((src / "dev" / "run.sh").stat().st_mode & 0o7777) == oct(0o755)


def test_malicious_archives_are_refused_under_the_oldest_python(tmp_path, oldest):
    version, python = oldest
    archives = [
        write_archive(tmp_path / f"evil{i}.tar.gz", members)
        for i, (members, _) in enumerate(MALICIOUS.values())
    ]
    route, results = unpack_under(python, archives)
    for case, archive, result in zip(MALICIOUS, archives, results, strict=True):
        if route == "data filter" and case == "absolute path":
            continue  # the filter extracts it inside instead (test_archive_safety.py)
        assert result.startswith(f"refused {archive.name}: "), (case, result)
        assert result.endswith("; refusing to install from it"), (case, result)
        if route == "hand-written check":
            assert MALICIOUS[case][1] in result, (case, result)
    written = {archive.name for archive in archives} | {f"{a.name}.src" for a in archives}
    assert {path.name for path in tmp_path.iterdir()} <= written  # nothing beside the folders
    assert not Path("/tmp/ringnce-evil").exists()


def test_real_detectron2_sdist_is_prepared_under_the_oldest_python(tmp_path, oldest):
    archive = install_detectron2.cache_dir() / "downloads" / install_detectron2.SDIST_FILE
    if not archive.is_file():
        pytest.skip(f"{archive} absent (tools/install_detectron2.py keeps it when it installs)")
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == install_detectron2.SDIST_SHA256
    copy = tmp_path / archive.name
    copy.write_bytes(archive.read_bytes())
    _, [result] = unpack_under(oldest[1], [copy])
    src = Path(result.removeprefix("unpacked "))
    assert (src / "setup.py").read_text() == install_detectron2.MINIMAL_SETUP
    with tarfile.open(archive) as tar:
        files = {m.name for m in tar if m.isfile() and m.name != f"{TOP}/setup.cfg"}
    unpacked = {str(p.relative_to(src.parent)) for p in src.rglob("*") if p.is_file()}
    assert len(files) > 300 and unpacked == files  # every file, the build files replaced
    assert "detectron2/model_zoo/configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml" in {
        f.removeprefix(f"{TOP}/") for f in unpacked
    }


INSTALL_PIP = """
import sys
sys.path.insert(0, sys.argv[1])
from bootstrap_pip import install_pip
install_pip(*sys.argv[2:])
"""


def test_venv_without_pip_gets_pip_under_the_oldest_python(tmp_path, oldest):
    venv = tmp_path / "venv"
    made = run_python(oldest[1], "import venv, sys; venv.main(sys.argv[1:])", "--without-pip", venv)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    assert run_python(python, "import pip").returncode != 0  # what Debian gives a user

    index, wheel, sha256 = write_fake_pip_index(tmp_path / "index")
    done = run_python(python, INSTALL_PIP, TOOLS, index, wheel, sha256)
    assert done.returncode == 0, done.stderr
    where = run_python(python, "import pip; print(pip.__file__, pip.__version__)")
    assert where.stdout.startswith(str(venv / "lib")) and where.stdout.split()[-1] == "0.0.0"

    # no index reachable (nothing listens on the discard port): one line naming the way out
    env = BARE_ENV | {"PIP_INDEX_URL": "http://127.0.0.1:9/simple/"}
    offline = subprocess.run(
        [str(python), str(TOOLS / "bootstrap_pip.py")],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert offline.returncode == 2
    [line] = offline.stderr.splitlines()
    assert line.startswith("error: bootstrap_pip: cannot fetch pip-")
    assert "PIP_INDEX_URL" in line and "python3-venv" in line


def test_project_sources_compile_under_the_oldest_python(oldest):
    sources = [p for d in ("pretrain", "transfer", "launcher", "benchmarks", "tools", "tests")
               for p in sorted((REPO / d).rglob("*.py"))] + [REPO / "setup.py"]  # fmt: skip
    code = "import sys\nfor p in sys.argv[1:]: compile(open(p, 'rb').read(), p, 'exec')"
    done = run_python(oldest[1], code, *sources)
    assert done.returncode == 0, done.stderr[-2000:]


def test_setup_refuses_a_python_older_than_setup_py_admits(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # only what setup_env.sh needs up to its Python check: no apt-get, dpkg or pip to reach
    for tool in ("bash", "cat", "cut", "dirname", "sed", "sha256sum"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    old = bin_dir / "python3"
    # answers the version check as a Python 3.10.0 would (a real one is rarely at hand)
    old.write_text('#!/bin/sh\ncase "$*" in *platform*) echo 3.10.0 ;; *) exit 1 ;; esac\n')
    old.chmod(0o755)
    # nothing inherited (a PYTHON set by the caller would replace the stand-in)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "VENV": str(tmp_path / "venv")}
    env["RINGNCE_CACHE"] = str(tmp_path / "cache")
    done = subprocess.run(
        ["bash", str(TOOLS / "setup_env.sh")], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 2, done.stderr
    floor = ".".join(map(str, FLOOR))
    assert done.stderr.splitlines() == [
        f"error: setup_env: python3 is Python 3.10.0; ring-nce needs {floor} or newer: "
        "set PYTHON=/path/to/python3.11"
    ]
    assert not (tmp_path / "venv").exists() and done.stdout == ""
