"""tools/install_detectron2.py's safe unpacking (issue 26): the hand-written check that stands in
for tarfile's "data" filter on Pythons older than 3.11.4 refuses every malicious member with a
one-line error and writes nothing outside the destination, as the filter does where it exists.
test_setup_oldest_python.py runs the same archives under the oldest Python on the machine."""

import os
import sys
from pathlib import Path

import pytest
from crafted_archives import MALICIOUS, SDIST_LIKE, TOP, write_archive

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))  # as when run as a script
import install_detectron2  # noqa: E402
from install_detectron2 import UnsafeArchive, extract_safely, unpacked_source  # noqa: E402

ROUTES = [pytest.param(False, id="hand-written check")]
if install_detectron2.HAS_DATA_FILTER:
    ROUTES.append(pytest.param(True, id="data filter"))


def files_outside(root, dest):
    """Everything under ``root`` that is not ``dest`` or inside it."""
    return [p for p in root.rglob("*") if p != dest and dest not in p.parents]


@pytest.mark.parametrize("use_filter", ROUTES)
@pytest.mark.parametrize("case", list(MALICIOUS))
def test_malicious_member_is_refused_with_one_line(tmp_path, case, use_filter):
    members, reason = MALICIOUS[case]
    archive = write_archive(tmp_path / "evil.tar.gz", members)
    dest = tmp_path / "out" / "dest"
    try:
        extract_safely(archive, dest, use_filter=use_filter)
    except UnsafeArchive as error:
        message = str(error)
        assert "\n" not in message and message
        if not use_filter:
            assert reason in message and repr(members[-1].name) in message
    else:
        # the filter strips the leading "/" of an absolute name, extracting it inside instead
        assert use_filter and case == "absolute path", f"{case} was extracted"
        assert (dest / "tmp" / "ringnce-evil").is_file()
    assert files_outside(tmp_path / "out", dest) == []
    assert not Path("/tmp/ringnce-evil").exists()


@pytest.mark.parametrize("use_filter", ROUTES)
def test_modes_are_made_safe_and_owned_by_the_extractor(tmp_path, use_filter):
    dest = tmp_path / "dest"
    extract_safely(write_archive(tmp_path / "a.tar.gz", SDIST_LIKE), dest, use_filter=use_filter)
    script, readme = dest / TOP / "dev" / "run.sh", dest / TOP / "README.md"
    assert oct(script.stat().st_mode & 0o7777) == oct(0o755)  # no setuid, no group/other write
    assert oct(readme.stat().st_mode & 0o7777) == oct(0o644)
    assert script.stat().st_uid == os.getuid()
    assert (dest / TOP / "LICENSE").read_text() == "detectron2\n"  # the link inside is kept


def test_unpacked_source_replaces_the_build_files_and_names_the_archive(tmp_path):
    src = unpacked_source(write_archive(tmp_path / "a.tar.gz", SDIST_LIKE), tmp_path / "src")
    assert src == tmp_path / "src" / TOP
    assert (src / "setup.py").read_text() == install_detectron2.MINIMAL_SETUP
    assert not (src / "setup.cfg").exists() and not (src / "pyproject.toml").exists()
    assert (src / "detectron2/model_zoo/configs/Base-RCNN-FPN.yaml").is_file()

    evil = write_archive(tmp_path / "evil.tar.gz", MALICIOUS["dot-dot"][0])
    with pytest.raises(UnsafeArchive, match=r"^evil\.tar\.gz: .*; refusing to install from it$"):
        unpacked_source(evil, tmp_path / "evil-src")
