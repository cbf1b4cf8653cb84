#!/usr/bin/env bash
# Set up everything ring-nce needs on a fresh machine, idempotently: the project virtualenv
# (.venv: torch, Detectron2, test tools), the project itself in editable mode, Debian packages
# (Fashion-MNIST; the Slurm/MariaDB packages for the local test cluster) and the labelme COCO
# fixture. PYTHON picks the interpreter (default: python3 on PATH; at least setup.py's
# python_requires). Without root: Fashion-MNIST's package is unpacked into $CACHE instead, the
# Slurm tests skip, and a Python without ensurepip (Debian's python3-venv not installed) still
# gets its venv, made without pip and given pip from PyPI (tools/bootstrap_pip.py). A second
# run finds its stamp up to date and returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
CACHE=${RINGNCE_CACHE:-$PWD/.cache}
STAMP=$VENV/.ringnce-setup
APT_PACKAGES="dataset-fashion-mnist munge slurmctld slurmd slurm-client slurmdbd mariadb-server"
LABELME=labelme==6.3.1
# the stamp changes whenever something this script installs changes
WANT=$(cat requirements.txt setup.py tools/setup_env.sh tools/fetch_fashion_mnist.sh \
  tools/install_detectron2.py tools/bootstrap_pip.py | sha256sum | cut -c1-16)

FMNIST=usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# where pretrain/data.py looks when the package is not installed system-wide
FMNIST_CACHE=$CACHE/debian/dataset-fashion-mnist
have_fashion_mnist() { [ -f "/$FMNIST" ] || [ -f "$FMNIST_CACHE/$FMNIST" ]; }

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -d "$CACHE/fixtures/labelme_coco" ] \
  && have_fashion_mnist; then
  exit 0
fi
log() { echo "[setup_env] $*"; }
die() { echo "error: setup_env: $*" >&2; exit 2; }

# setup.py's python_requires is the one place that says which Pythons are supported
MIN_PYTHON=$(sed -n 's/.*python_requires=">=\([0-9.]*\)".*/\1/p' setup.py)
check_python() {  # interpreter, what to do if it is too old
  "$1" -c 'import sys; sys.exit(sys.version_info < tuple(map(int, sys.argv[1].split("."))))' \
    "$MIN_PYTHON" \
    || die "$1 is Python $("$1" -c 'import platform; print(platform.python_version())'); ring-nce needs $MIN_PYTHON or newer: $2"
}
if [ -x "$VENV/bin/python" ]; then
  check_python "$VENV/bin/python" "remove $VENV and rerun with PYTHON=/path/to/python3.11"
else
  command -v "$PYTHON" >/dev/null \
    || die "no '$PYTHON' found: set PYTHON=/path/to/python3.11 (or, as root, apt-get install python3)"
  check_python "$PYTHON" "set PYTHON=/path/to/python3.11"
fi

missing_apt=""
for p in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing_apt="$missing_apt $p"
done
if [ -n "$missing_apt" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "apt-get install:$missing_apt"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing_apt >/dev/null
  else
    case "$missing_apt" in *dataset-fashion-mnist*) RINGNCE_CACHE=$CACHE bash tools/fetch_fashion_mnist.sh || true ;; esac
    slurm_missing=${missing_apt/ dataset-fashion-mnist/}
    [ -z "$slurm_missing" ] \
      || log "skipped apt-get install$slurm_missing: needs root (an administrator can run it, or make setup as root); until then the Slurm tests skip and sweeps use --cluster local"
  fi
fi

# Debian's python3 has no ensurepip unless root installed python3-venv: `-m venv` then fails,
# leaving a venv without pip. So make the venv without pip and fetch pip from PyPI instead.
if ! { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; }; then
  if "$PYTHON" -m ensurepip --version >/dev/null 2>&1; then
    log "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
  else
    log "creating $VENV with $PYTHON, which lacks ensurepip (Debian's python3-venv, which needs root to install): pip comes from PyPI instead"
    "$PYTHON" -m venv --without-pip "$VENV"
    "$VENV/bin/python" tools/bootstrap_pip.py
  fi
fi
if [ "${RINGNCE_BYO_TORCH:-0}" = 1 ]; then
  # bring your own torch (+ compiled Detectron2): keep the environment's torch and torchvision
  log "RINGNCE_BYO_TORCH=1: keeping $("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)')"
  grep -vE '^(torch|torchvision)==' requirements.txt > "$VENV/.ringnce-requirements.txt"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$VENV/.ringnce-requirements.txt"
else
  log "pip install -r requirements.txt (torch is large: ~2 min the first time)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt
fi
RINGNCE_CACHE=$CACHE "$VENV/bin/python" tools/install_detectron2.py
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .

if [ ! -d "$CACHE/fixtures/labelme_coco" ]; then
  # labelme's example photos are GPL-3.0: fetched here through pip, never committed
  log "fetching the labelme COCO fixture ($LABELME source distribution)"
  tmp=$(mktemp -d)
  "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps --no-binary labelme "$LABELME" -d "$tmp"
  tar xzf "$tmp"/labelme-*.tar.gz -C "$tmp" --wildcards '*/examples/instance_segmentation/data_dataset_coco/*'
  mkdir -p "$CACHE/fixtures"
  rm -rf "$CACHE/fixtures/labelme_coco.tmp"
  mv "$tmp"/labelme-*/examples/instance_segmentation/data_dataset_coco "$CACHE/fixtures/labelme_coco.tmp"
  mv "$CACHE/fixtures/labelme_coco.tmp" "$CACHE/fixtures/labelme_coco"
  rm -rf "$tmp"
fi
echo "$WANT" > "$STAMP"
log "environment ready: $VENV"
