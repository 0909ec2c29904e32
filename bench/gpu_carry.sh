#!/usr/bin/env bash
# Before a GPU session's device call, on this machine: build/gpu-carry/ holds what that machine lacks
# (it has torch and CUDA but not datasets, gguf, trl or our transformers, and no network): the wheels of the engine's pins it does not have, and the embedded model's config,
# tokenizer and chat template (its weights do not fit in a call: bench/gpu.py builds a random-init stand-in
# from these). build/ is ignored by git, so the folder travels only as `carry: ["build/gpu-carry"]` (about 20 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CARRY=build/gpu-carry
mkdir -p "$CARRY/whl"
"$PY" bench/gpu.py --pack "$CARRY/embedded"
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$CARRY/whl" \
    transformers==5.23.0 datasets==5.2.0 dill==0.4.0 multiprocess==0.70.18 gguf==0.19.0 trl==1.16.0
du -sh "$CARRY"
