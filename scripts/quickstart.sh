#!/usr/bin/env bash
# Set up, fine-tune the packaged Gemma 3 270M on the example Zhen Huan records, then ask both the
# base model and the fine-tuned one 60 held-out questions and print how often each answers in
# character, on topic, stops and loops, with a few answers side by side. Offline-safe: the model
# comes from the Python package index, nothing is fetched from a model hub.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh
.venv/bin/tunesmith train examples/quickstart.yaml train.overwrite=true
.venv/bin/tunesmith eval runs/quickstart --persona examples/data/zhenhuan_questions.jsonl --samples 8
echo "quickstart finished in $(( $(date +%s) - start )) s; chat on with: .venv/bin/tunesmith chat runs/quickstart"
