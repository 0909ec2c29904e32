#!/usr/bin/env bash
# `make bench`: install the peer libraries the comparison needs (not part of `make setup`:
# a learner never needs them), then run the side-by-side benchmark (two rounds). Takes about 25 minutes on
# a 2-core CPU; run it on a quiet machine (other heavy programs change every figure).
# On a CPU without native bf16 (no avx512_bf16 or amx_bf16) the bf16 work would never end (PyTorch emulates
# bf16 there): compare.py skips the bf16 matmul peak and the bf16 peers (TRL's), so TRL is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
GATE=$("$PY" -c 'from bench.common import bf16_gate; print(bf16_gate() or "")')
if [ -n "$GATE" ]; then
    echo "note: $GATE"
else
    # TRL 1.16.0 works with transformers 5.23 (the engine's pin); pinned so every run compares the same peer.
    "$PY" -m pip install --quiet --disable-pip-version-check "trl==1.16.0"
fi
"$PY" -m tunelab prepare-embedded >/dev/null
exec "$PY" bench/compare.py "$@"
