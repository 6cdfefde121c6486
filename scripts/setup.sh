#!/usr/bin/env bash
# Create .venv (if missing) and install tunesmith into it, CPU build of torch first.
# Installing torch first matters: a bare `torch` requirement with no torch present pulls a
# multi-GB CUDA build. Set TORCH_SPEC to choose another build (e.g. TORCH_SPEC=torch for CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
say() { echo "[setup $(date +%H:%M:%S)] $*" >&2; }
[ -x .venv/bin/python ] || { say "creating .venv"; "$PY" -m venv .venv; }
say "updating pip"
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
say "installing ${TORCH_SPEC:-torch==2.13.0} (the CPU build)"
.venv/bin/python -m pip install -q --disable-pip-version-check "${TORCH_SPEC:-torch==2.13.0}"
say "installing tunesmith and its dependencies (transformers, peft, ...)"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
say "done"
