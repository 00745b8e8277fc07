#!/usr/bin/env bash
# Dev-only: packs what `python -m bench.gpu` needs on the team's GPU machine and does not find in its image
# (onnxruntime-gpu built for CUDA 13, which the image's CUDA libraries are; pydantic), as parts small enough to
# travel one per call beside the repository (docs/development.md, "The GPU benchmark").
#
#   scripts/gpu_parts.sh            # -> .gpu/site.tar.xz.part-aa, -ab, ... (each at most PART_MB)
#
# The image runs Python 3.12, so the packages are installed for it here (pip's --python-version) into one
# folder, packed with xz (the CUDA library inside the wheel shrinks about tenfold; the wheel's zip, 255 MB,
# barely), and split.
set -euo pipefail
cd "$(dirname "$0")/.."
PART_MB=${PART_MB:-25}
ORT_GPU=${ORT_GPU:-onnxruntime-gpu==1.31.1}
PY=${PY:-.venv/bin/python}
pins() { grep -iE "^($1)==" requirements/local.txt | cut -d' ' -f1; }

rm -rf .gpu && mkdir -p .gpu/site
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
# shellcheck disable=SC2046  # one pin per word
"$PY" -m pip install -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --target .gpu/site "$ORT_GPU" $(pins 'pydantic|pydantic-core|annotated-types|typing-inspection')
tar -C .gpu -cf - site | xz -T0 -6 | split -b "${PART_MB}M" - .gpu/site.tar.xz.part-
rm -rf .gpu/site
ls -l .gpu
echo "$(find .gpu -name 'site.tar.xz.part-*' | wc -l) parts: on the device, PARTS=<that> scripts/gpu_device_run.sh (8 by default)"
