"""Put pip into a virtualenv made with ``python -m venv --without-pip``, from PyPI alone.

Debian's python3 ships without ensurepip unless root installed python3.X-venv, so an ordinary
user's ``python3 -m venv`` fails there. tools/setup_env.sh then makes the venv without pip and
runs this script with the venv's interpreter: it fetches one pinned pip wheel from the package
index (``PIP_INDEX_URL``, default PyPI; ``https_proxy`` and ``PIP_CERT`` are honoured), checks
its sha256, and lets pip install itself from that wheel (pip runs from its own wheel, which is
how ensurepip does it). Standard library only.
"""

import hashlib
import html.parser
import os
import ssl
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

PIP_VERSION = "26.2.1"
PIP_WHEEL = f"pip-{PIP_VERSION}-py3-none-any.whl"
PIP_SHA256 = "71138adf1f4ca900cdb7d289c21b7494329f2332b6d85f0e1c42108c0384ed3e"  # PyPI's
DEFAULT_INDEX = "https://pypi.org/simple/"
ROOT_ROUTE = "or ask an administrator for Debian's python3-venv (apt-get install python3-venv)"


class BootstrapError(Exception):
    """pip could not be fetched or installed (one line: why, and what to do instead)."""


class LinkParser(html.parser.HTMLParser):
    """The ``<a href>`` targets of a PEP 503 simple-index page."""

    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.links.append(href)


def read(url):
    cafile = os.environ.get("PIP_CERT")
    context = ssl.create_default_context(cafile=cafile) if url.startswith("https:") else None
    with urllib.request.urlopen(url, timeout=120, context=context) as response:
        return response.read()


def wheel_url(index, wheel):
    """Where the index's page for pip links ``wheel`` (relative links resolved)."""
    page = urllib.parse.urljoin(index.rstrip("/") + "/", "pip/")
    if page.startswith("file:"):  # a local index, as pip reads one: the folder's index.html
        page += "index.html"
    parser = LinkParser()
    parser.feed(read(page).decode("utf-8", "replace"))
    for href in parser.links:
        url = urllib.parse.urljoin(page, href)
        if urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1] == wheel:
            return url.split("#", 1)[0]
    raise BootstrapError(f"{page} lists no {wheel}")


def fetch_wheel(index, wheel, sha256, dest):
    """``wheel`` downloaded from ``index`` into ``dest``, refused unless its sha256 matches."""
    data = read(wheel_url(index, wheel))
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise BootstrapError(f"{wheel} from {index} has sha256 {digest}, expected {sha256}")
    path = Path(dest) / wheel
    path.write_bytes(data)
    return path


def install_pip(index=None, wheel=PIP_WHEEL, sha256=PIP_SHA256):
    index = index or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = fetch_wheel(index, wheel, sha256, tmp)
        except OSError as error:  # URLError, timeouts, refused connections, TLS failures
            raise BootstrapError(
                f"cannot fetch {wheel} from {index} ({error}); set PIP_INDEX_URL to a reachable "
                f"index, {ROOT_ROUTE}"
            ) from None
        # pip runs from its own wheel (a zip on sys.path) and installs that wheel
        command = [sys.executable, str(path / "pip"), "install", "-q", "--no-index", str(path)]
        if subprocess.run(command).returncode != 0:
            raise BootstrapError(f"installing {wheel} into {sys.prefix} failed (see pip above)")


def main():
    try:
        if sys.prefix == sys.base_prefix:
            raise BootstrapError("run it with the new virtualenv's python, not the system one")
        install_pip()
    except BootstrapError as error:
        print(f"error: bootstrap_pip: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"[bootstrap_pip] pip {PIP_VERSION} installed into {sys.prefix}")


if __name__ == "__main__":
    main()
