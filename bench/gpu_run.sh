#!/usr/bin/env bash
# The device command of a GPU session (bench/gpu.py's docstring): `bash bench/gpu_run.sh` with
# carry ["build/gpu-carry"] (made by bench/gpu_carry.sh). Installs the carried wheels where this run finds them,
# then runs the whole check (about 6 minutes); the report, the figures and the log land in $OUT.
# Extra arguments go to bench/gpu.py (e.g. --only lesson,big to rerun two sections).
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=build/gpu-carry
OUT=${OUT:-/tmp/bench-gpu-out}
mkdir -p "$OUT"
if ls "$CARRY"/whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$CARRY"/whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 bench/gpu.py --stand-in-from "$CARRY/embedded" --report "$OUT/bench-gpu.md" --out "$OUT/bench-gpu.json" \
    "$@" 2>&1 | tee "$OUT/bench-gpu.log"
exit "${PIPESTATUS[0]}"
