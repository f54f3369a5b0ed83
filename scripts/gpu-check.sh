#!/usr/bin/env bash
# The GPU suite and GPU benchmarks, for a machine with an NVIDIA GPU (CUDA 13 driver) and, for the
# baseline comparison, PyTorch + transformers + peft. Uses binaries built elsewhere with
# `--features cuda` (see the README's CUDA section) and copied into BIN (default bin-cuda/):
# pipe, tiny_model, pipe-bench-train. The peft baseline script is taken from PEFT_BASELINE
# (default bin-cuda/peft_baseline.py). Results go to OUT (default ./gpu-results).
#
#   scripts/gpu-check.sh [BIN] [OUT]
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-bin-cuda}
OUT=${2:-${OUT:-gpu-results}}
PEFT_BASELINE=${PEFT_BASELINE:-$BIN/peft_baseline.py}
mkdir -p "$OUT"
fail=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

# 1. Correctness: the same tiny LoRA training on cuda:0 and on the CPU gives the same loss curve.
W=$(mktemp -d)
cp -r pipelines/data "$W/data"
"$BIN/tiny_model" "$W/model" tests/data/tiny-tokenizer llama
for dev in cpu cuda; do
  cat > "$W/$dev.yaml" <<YAML
name: gpu-parity-$dev
nodes:
  fix: { kind: fix-json, inputs: { records: data/fortune.jsonl } }
  tok: { kind: tokenize, inputs: { records: fix.records, tokenizer: model }, params: { max_length: 64 } }
  train:
    kind: lora-train
    device: $dev
    inputs: { model: model, dataset: tok.dataset }
    params: { max_steps: 20, batch_size: 8, grad_accum: 2, lr: 0.01, r: 8, dropout: 0.0, logging_steps: 1 }
YAML
  "$BIN/pipe" -q run "$W/$dev.yaml" --cache "$W/cache" || fail=1
  p=$("$BIN/pipe" show "$W/$dev.yaml" train --cache "$W/cache" --json | python3 -c 'import sys,json; print(json.load(sys.stdin)["outputs"]["log"]["path"])')
  cp "$p" "$OUT/tiny-$dev.jsonl"
done
python3 - "$OUT/tiny-cpu.jsonl" "$OUT/tiny-cuda.jsonl" <<'PY' | tee "$OUT/parity.txt" || fail=1
import json, sys
a = [json.loads(l)["loss"] for l in open(sys.argv[1])]
b = [json.loads(l)["loss"] for l in open(sys.argv[2])]
worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
print(f"tiny Llama, 20 steps, f32: cpu {a[0]:.5f} -> {a[-1]:.5f}, cuda {b[0]:.5f} -> {b[-1]:.5f}, worst relative loss difference {worst:.2e}")
sys.exit(0 if len(a) == len(b) == 20 and worst < 1e-3 else 1)
PY
rm -rf "$W"

# 2. Benchmarks: pipe's step and the peft baseline, same card, same call.
peak() {  # run a command while sampling GPU memory; prints the peak in MiB after its output
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$OUT/mem.log" 2>/dev/null &
  local mon=$!
  "$@"
  local rc=$?
  kill $mon 2>/dev/null; wait $mon 2>/dev/null
  echo "peak GPU memory: $(sort -n "$OUT/mem.log" | tail -1) MiB"
  return $rc
}
for shape in smollm2-135m; do
  for ckpt in 1 0; do
    PIPE_BENCH_DEVICE=cuda PIPE_BENCH_MODEL=$shape PIPE_BENCH_CKPT=$ckpt PIPE_BENCH_STEPS=5 peak "$BIN/pipe-bench-train" 2>&1 | tail -2 | tee -a "$OUT/bench.txt"
    flag=$([ $ckpt = 1 ] && echo --ckpt)
    [ -f "$PEFT_BASELINE" ] && python3 "$PEFT_BASELINE" --shape $shape --batch 8 --seq 384 $flag 2>&1 | tail -1 | tee -a "$OUT/bench.txt"
  done
done
exit $fail
