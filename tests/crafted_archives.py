"""Small archives built member by member for the set-up tests: tar.gz ones shaped like the
pb1-detectron2 sdist and malicious ones tools/install_detectron2.py must refuse, and a stand-in
pip wheel in a local index for tools/bootstrap_pip.py."""

import hashlib
import io
import tarfile
import zipfile
from dataclasses import dataclass


@dataclass
class Member:
    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644


def write_archive(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type, info.linkname, info.mode = member.type, member.linkname, member.mode
            info.size = len(member.data)
            tar.addfile(info, io.BytesIO(member.data) if member.type == tarfile.REGTYPE else None)
    return path


TOP = "pb1-detectron2-0.6"
SDIST_LIKE = [
    Member(TOP, tarfile.DIRTYPE, mode=0o777),
    Member(f"{TOP}/setup.py", data=b"raise SystemExit('would build detectron2._C')\n"),
    Member(f"{TOP}/setup.cfg", data=b"[metadata]\nname = pb1-detectron2\n"),
    Member(f"{TOP}/pyproject.toml", data=b"[build-system]\nrequires = ['torch']\n"),
    Member(f"{TOP}/detectron2/__init__.py", data=b"__version__ = '0.6'\n"),
    Member(f"{TOP}/detectron2/model_zoo/configs/Base-RCNN-FPN.yaml", data=b"MODEL: {}\n"),
    # setuid and group/other-writable: both extraction routes clear those bits
    Member(f"{TOP}/dev/run.sh", data=b"#!/bin/sh\n", mode=0o4777),
    Member(f"{TOP}/README.md", data=b"detectron2\n", mode=0o666),
    Member(f"{TOP}/LICENSE", tarfile.SYMTYPE, linkname="README.md"),  # a link inside: allowed
]

EVIL = "ringnce-evil"
# id -> (members, what the hand-written check says); every one would write or point outside
# the destination, or create a device
MALICIOUS = {
    "absolute path": ([Member(f"/tmp/{EVIL}", data=b"x")], "has an absolute path"),
    "dot-dot": ([Member(f"pkg/../../{EVIL}", data=b"x")], "outside the destination"),
    "symlink outside": (
        [Member("pkg/up", tarfile.SYMTYPE, linkname="../..")],
        "points outside the destination",
    ),
    "absolute symlink": (
        [Member("pkg/etc", tarfile.SYMTYPE, linkname="/etc")],
        "points to the absolute path '/etc'",
    ),
    "hard link outside": (
        [Member("pkg/hard", tarfile.LNKTYPE, linkname=f"../{EVIL}")],
        "points outside the destination",
    ),
    # each link alone stays inside; the second, created through the first, does not
    "chained symlinks": (
        [
            Member("pkg/here", tarfile.SYMTYPE, linkname=".."),
            Member("pkg/here/up", tarfile.SYMTYPE, linkname=".."),
        ],
        "points outside the destination",
    ),
    "character device": ([Member("pkg/null", tarfile.CHRTYPE)], "is a device file or fifo"),
    "fifo": ([Member("pkg/pipe", tarfile.FIFOTYPE)], "is a device file or fifo"),
}


# Stands in for pip when tools/bootstrap_pip.py runs it from its wheel: "install -q --no-index
# WHEEL" unpacks WHEEL into the running environment, which is all the bootstrap needs of it.
FAKE_PIP_MAIN = """
import sys, sysconfig, zipfile
assert sys.argv[1:4] == ["install", "-q", "--no-index"], sys.argv
zipfile.ZipFile(sys.argv[4]).extractall(sysconfig.get_paths()["purelib"])
"""


def write_fake_pip_index(root):
    """A PEP 503 index under ``root`` (a file:// URL, as pip reads one) whose pip page links a
    stand-in pip wheel by a relative URL with its sha256: (index URL, wheel name, sha256)."""
    wheel = "pip-0.0.0-py3-none-any.whl"
    files, page = root / "files", root / "simple" / "pip"
    files.mkdir(parents=True)
    page.mkdir(parents=True)
    with zipfile.ZipFile(files / wheel, "w") as archive:
        archive.writestr("pip/__init__.py", "__version__ = '0.0.0'\n")
        archive.writestr("pip/__main__.py", FAKE_PIP_MAIN)
    sha256 = hashlib.sha256((files / wheel).read_bytes()).hexdigest()
    link = f'<a href="../../files/{wheel}#sha256={sha256}">{wheel}</a>'
    (page / "index.html").write_text(f"<!DOCTYPE html><html><body>{link}</body></html>\n")
    return (root / "simple").as_uri() + "/", wheel, sha256
