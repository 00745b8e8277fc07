#!/usr/bin/env bash
# Dev-only, on the team's GPU machine (docs/development.md, "The GPU benchmark"): keeps the part this call carried,
# and once all of them are there unpacks them and runs `python -m bench.gpu` with the arguments given, its log and
# JSON left in $OUT. Every call of the sequence runs the same command:
#
#   scripts/gpu_device_run.sh --seconds 3
set -uo pipefail
cd "$(dirname "$0")/.."
PARTS=${PARTS:-8}
mkdir -p /tmp/parts
cp .gpu/site.tar.xz.part-* /tmp/parts/ 2>/dev/null
have=$(find /tmp/parts -name 'site.tar.xz.part-*' | wc -l)
echo "parts here: $have of $PARTS"
[ "$have" -lt "$PARTS" ] && exit 0
if [ ! -d /tmp/site ]; then
    cat /tmp/parts/site.tar.xz.part-* |
        python3 -c 'import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode="r|xz").extractall("/tmp")' || exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -m bench.gpu "$@" 2>&1 | tee "${OUT:-/tmp}/gpu.log"
status=${PIPESTATUS[0]}
cp bench/results/gpu.json "${OUT:-/tmp}/" 2>/dev/null
exit "$status"
