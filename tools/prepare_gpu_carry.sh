#!/usr/bin/env bash
# Builds .carry/: everything tools/gpu_check.py needs on the device machine beyond what it has
# (Python 3.12 with its own torch 2.11 / torchvision 0.26, numpy, scipy, matplotlib,
# tensorboard, tqdm, pyyaml, tabulate, pillow; no registry), then prints the `run` call.
#
#   bash tools/prepare_gpu_carry.sh            # here, with the project's .venv set up
#
# .carry/wheels   cp312 manylinux or pure-Python wheels of Detectron2 v0.6's runtime needs and
#                 ours, plus detectron2-0.6 built as tools/install_detectron2.py builds it
#                 (its Python code, no _C; transfer/detectron2_env.py backs _C), patched for
#                 Pillow >= 10 (no cp312 Pillow < 10 exists: Image.LINEAR -> Image.BILINEAR)
# .carry/data     Fashion-MNIST's four .gz files (the study)
# .carry/cache    the fixtures (RINGNCE_CACHE): the labelme COCO photos are fetched through pip
#                 at set-up time and cannot be fetched there
# The whole working tree that travels must stay under 64 MiB: checked at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CARRY=.carry
FMNIST=${FMNIST:-/usr/share/datasets/fashion-mnist}
LIMIT_MIB=64

rm -rf "$CARRY"
mkdir -p "$CARRY/wheels" "$CARRY/data/fashion-mnist" "$CARRY/cache"

# Wheels for the device's interpreter, at the versions the project's .venv runs its tests with
# (requirements.txt); packages the device already has (numpy, pyyaml, portalocker,
# cloudpickle, pyparsing, typing-extensions, packaging, ...) are left to it. One version of
# each, so that one install step takes them all.
NAMES=(
  fvcore iopath pycocotools faster-coco-eval omegaconf hydra-core antlr4-python3-runtime yacs
  termcolor pydot future setuptools submitit
)
PACKAGES=()
for name in "${NAMES[@]}"; do
  version=$("$PY" -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
  [[ -n $version ]] || { echo "error: $name is not installed in $PY's environment; run make setup" >&2; exit 1; }
  PACKAGES+=("$name==$version")
done
LOGS=$CARRY/download-logs
mkdir -p "$LOGS"
wheel_name() { local name=${1%%=*}; echo "${name//-/_}"; }  # as a wheel's file name spells it
for package in "${PACKAGES[@]}"; do
  # a cp312 / pure-Python wheel if PyPI has one, else (fvcore, antlr4: sdists of pure Python)
  # a wheel built here from the sdist; the download's output is kept for the check below
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$CARRY/wheels" "$package" >"$LOGS/$(wheel_name "$package").log" 2>&1 ||
    "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$CARRY/wheels" "$package"
done

# Detectron2 v0.6 as a pure-Python wheel (tools/install_detectron2.py's minimal setup)
"$PY" - "$CARRY/wheels" <<'EOF'
import sys, tempfile
from pathlib import Path

# tools/ as a namespace package: this runs from the repository root (the cd above)
from tools.install_detectron2 import pip, prepared_source

out = Path(sys.argv[1]).resolve()
with tempfile.TemporaryDirectory() as tmp:
    src = prepared_source(tmp)
    # Pillow 10 removed Image.LINEAR (an alias of BILINEAR); the device has no older Pillow
    for path in (src / "detectron2").rglob("*.py"):
        text = path.read_text()
        if "Image.LINEAR" in text:
            path.write_text(text.replace("Image.LINEAR", "Image.BILINEAR"))
    pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src))
EOF

# a wheel built here (sdists, Detectron2) is for this Python (3.11): fail now, naming the
# package, unless every wheel is cp312, abi3 or py3-none-any
"$PY" tools/carry_wheels.py "$CARRY/wheels" --log-dir "$LOGS"
rm -rf "$LOGS"

cp "$FMNIST"/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz "$CARRY/data/fashion-mnist/"
"$PY" -c "from transfer.fixtures import labelme_coco_dir; labelme_coco_dir()"  # present here
mkdir -p "$CARRY/cache/fixtures"
cp -r .cache/fixtures/labelme_coco "$CARRY/cache/fixtures/"

# what travels: tracked + untracked-not-ignored files, plus .carry
tree_bytes=$( (git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null || true) | awk 'END {print $1}')
carry_bytes=$(du -sb "$CARRY" | cut -f1)
total_mib=$(( (tree_bytes + carry_bytes) / 1048576 ))
echo "working tree $((tree_bytes / 1048576)) MiB + .carry $((carry_bytes / 1048576)) MiB = ${total_mib} MiB (limit ${LIMIT_MIB})"
if (( total_mib >= LIMIT_MIB )); then
  echo "error: what travels is ${total_mib} MiB, over the ${LIMIT_MIB} MiB limit; drop files from .carry" >&2
  exit 1
fi
ls "$CARRY/wheels"

cat <<'EOF'

The device check, as one call of the device tool's `run`:
  carry:     [".carry"]
  timeout_s: 480
  command:   bash tools/gpu_device_run.sh
and, only if 8 minutes of device time remain after it, the study:
  carry:     [".carry"]
  timeout_s: 500
  command:   bash tools/gpu_device_run.sh --study
EOF
