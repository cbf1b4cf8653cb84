#!/usr/bin/env bash
# Set up everything ring-nce needs on a fresh machine, idempotently: the project virtualenv
# (.venv: torch, Detectron2, test tools), the project itself in editable mode, Debian packages
# (Fashion-MNIST; the Slurm/MariaDB packages for the local test cluster) and the labelme COCO
# fixture. Without root, Fashion-MNIST's package is unpacked into $CACHE instead, and the Slurm
# tests skip. A second run finds its stamp up to date and returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
CACHE=${RINGNCE_CACHE:-$PWD/.cache}
STAMP=$VENV/.ringnce-setup
APT_PACKAGES="dataset-fashion-mnist munge slurmctld slurmd slurm-client slurmdbd mariadb-server"
LABELME=labelme==6.3.1
# the stamp changes whenever something this script installs changes
WANT=$(cat requirements.txt setup.py tools/setup_env.sh tools/fetch_fashion_mnist.sh tools/install_detectron2.py | sha256sum | cut -c1-16)

FMNIST=usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# where pretrain/data.py looks when the package is not installed system-wide
FMNIST_CACHE=$CACHE/debian/dataset-fashion-mnist
have_fashion_mnist() { [ -f "/$FMNIST" ] || [ -f "$FMNIST_CACHE/$FMNIST" ]; }

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -d "$CACHE/fixtures/labelme_coco" ] \
  && have_fashion_mnist; then
  exit 0
fi
log() { echo "[setup_env] $*"; }

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
      || log "not root: Debian packages$slurm_missing missing; the Slurm tests skip (they need root and them)"
  fi
fi

[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
if [ "${RINGNCE_BYO_TORCH:-0}" = 1 ]; then
  # bring your own torch (+ compiled Detectron2): keep the environment's torch and torchvision
  log "RINGNCE_BYO_TORCH=1: keeping $("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)')"
  grep -vE '^(torch|torchvision)==' requirements.txt > "$VENV/.ringnce-requirements.txt"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$VENV/.ringnce-requirements.txt"
else
  log "pip install -r requirements.txt (torch is large: ~2 min the first time)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt
fi
"$VENV/bin/python" tools/install_detectron2.py
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
