#!/usr/bin/env bash
# Wall time of the README quickstart on a fresh clone with an empty model cache and no .venv.
# (pip's own download cache is whatever the machine has.) Usage: bash bench/quickstart_walltime.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
git clone -q "$repo" "$work/tunesmith"
# The example configs read ../shared/data; give the clone the same neighbour when it exists.
[ -d "$repo/../shared" ] && ln -s "$repo/../shared" "$work/shared"
start=$(date +%s)
( cd "$work/tunesmith" && TUNESMITH_CACHE="$work/cache" bash scripts/quickstart.sh ) | tee "$work/out.txt"
elapsed=$(( $(date +%s) - start ))
python3 - "$work/tunesmith/runs/quickstart/tunesmith.json" "$elapsed" "$work/out.txt" \
  "$work/tunesmith/runs/quickstart/eval/metrics.json" \
  > "$repo/bench/results/quickstart.json" <<'PY'
import json, sys
card = json.load(open(sys.argv[1], encoding="utf-8"))
out = open(sys.argv[3], encoding="utf-8").read()
answers = out[out.find("Q: "):out.find("quickstart finished")].strip()
persona = json.load(open(sys.argv[4], encoding="utf-8"))["persona"]
print(json.dumps({"wall_s": int(sys.argv[2]), "metrics": card["metrics"],
                  "persona": persona["models"], "calibration": persona["calibration"],
                  "answers": answers}, ensure_ascii=False, indent=2))
PY
echo "wall time ${elapsed}s -> bench/results/quickstart.json"
rm -rf "$work"
