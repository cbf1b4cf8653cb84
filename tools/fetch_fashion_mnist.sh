#!/usr/bin/env bash
# Fashion-MNIST without root: the Debian package dataset-fashion-mnist's files, unpacked into the
# project cache ($RINGNCE_CACHE, default .cache) where pretrain/data.py looks when the package is
# not installed system-wide. apt-get download and dpkg -x need no root (they read the apt lists
# an administrator last updated). Idempotent; tools/setup_env.sh calls it when not root.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${RINGNCE_CACHE:-$PWD/.cache}
DEST=$CACHE/debian/dataset-fashion-mnist
FILE=usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
log() { echo "[fetch_fashion_mnist] $*"; }

if [ -f "/$FILE" ] || [ -f "$DEST/$FILE" ]; then exit 0; fi
for tool in apt-get dpkg; do
  command -v $tool >/dev/null || { log "WARNING: no $tool (not Debian): set data.root to a Fashion-MNIST copy"; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! (cd "$tmp" && apt-get download -qq dataset-fashion-mnist) >"$tmp/apt.log" 2>&1; then
  log "WARNING: 'apt-get download dataset-fashion-mnist' failed ($(tail -1 "$tmp/apt.log")); ask an administrator to install it, or set data.root"
  exit 1
fi
mkdir -p "$CACHE/debian"
rm -rf "$DEST.tmp"
dpkg -x "$tmp"/dataset-fashion-mnist_*.deb "$DEST.tmp"
# whole or not at all: a copy cut short by an interruption is never mistaken for a complete one
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
log "Fashion-MNIST unpacked into $DEST"
