#!/usr/bin/env bash
# On the device machine (see tools/prepare_gpu_carry.sh): install the carried wheels beside
# its own torch, point the project at the carried data and fixtures, run tools/gpu_check.py.
#   bash tools/gpu_device_run.sh [--study]      # figures in $OUT/gpu_check[_study].json
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .carry/wheels/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
export RINGNCE_CACHE=$PWD/.carry/cache RINGNCE_FMNIST_ROOT=$PWD/.carry/data/fashion-mnist
name=gpu_check${1:+_study}
out=${OUT:-runs}
mkdir -p "$out"
python3 tools/gpu_check.py --json "$out/$name.json" "$@" 2>&1 | tee "$out/$name.log"
