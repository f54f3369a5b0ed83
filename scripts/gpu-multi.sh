#!/usr/bin/env bash
# Multi-GPU lora-train checks and benchmark, for a host with 2 (or more) NVIDIA GPUs, NCCL and the
# binaries of scripts/gpu-check.sh in BIN (default bin-cuda/: pipe, tiny_model, pipe-bench-train).
# Results go to OUT (default ./gpu-results).
#
#   scripts/gpu-multi.sh [BIN] [OUT]
#
# 1. The tiny model trained with `gpus: 1` and `gpus: 2` at the same global batch (f32 and bf16,
#    dropout on): the loss curves must agree (f32 within 1e-4, bf16 within 2e-2, relative).
# 2. Kill and resume: a `gpus: 2` run killed (SIGKILL) after a checkpoint and rerun ends with the
#    adapter of an uninterrupted `gpus: 2` run.
# 3. The train bench on the 7B shape (random weights, bf16, 8x384 per GPU) with 1 and 2 GPUs:
#    tokens/s of each and the ratio (target: >= 1.9).
#
# libnccl.so.2 is opened at run time: set PIPE_NCCL_LIB or put its folder on LD_LIBRARY_PATH
# (found here from PyTorch's nvidia-nccl wheel when python3 has it).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-bin-cuda}
OUT=${2:-${OUT:-gpu-results}}
mkdir -p "$OUT"
fail=0
# NVLink SHARP multicast stays off in every process started here (pipe also sets it when unset).
export NCCL_NVLS_ENABLE=0
if [ -z "${PIPE_NCCL_LIB:-}" ]; then
  NCCL_DIR=$(python3 -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__))' 2>/dev/null)
  [ -n "$NCCL_DIR" ] && export LD_LIBRARY_PATH="$NCCL_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"
[ "$(nvidia-smi -L | wc -l)" -ge 2 ] || { echo "needs 2 GPUs"; exit 2; }

W=$(mktemp -d)
cp -r pipelines/data "$W/data"
"$BIN/tiny_model" "$W/model" tests/data/tiny-tokenizer llama
pipeline() {  # name gpus dtype max_steps save_steps
  cat > "$W/$1.yaml" <<YAML
name: $1
nodes:
  fix: { kind: fix-json, inputs: { records: data/fortune.jsonl } }
  tok: { kind: tokenize, inputs: { records: fix.records, tokenizer: model }, params: { max_length: 64 } }
  train:
    kind: lora-train
    gpus: $2
    inputs: { model: model, dataset: tok.dataset }
    params: { max_steps: $4, batch_size: 8, grad_accum: 2, lr: 0.01, r: 8, dropout: 0.1, logging_steps: 1, dtype: $3, save_steps: $5 }
YAML
}
output() {  # yaml cache output
  "$BIN/pipe" show "$W/$1.yaml" train --cache "$2" --json | python3 -c "import sys,json; print(json.load(sys.stdin)['outputs']['$3']['path'])"
}

# 1. Loss curves, 1 vs 2 GPUs.
for dtype in f32 bf16; do
  for g in 1 2; do
    pipeline "g$g-$dtype" $g $dtype 30 0
    "$BIN/pipe" -q run "$W/g$g-$dtype.yaml" --cache "$W/cache" || fail=1
    cp "$(output "g$g-$dtype" "$W/cache" log)" "$OUT/tiny-gpus$g-$dtype.jsonl"
  done
  tol=$([ $dtype = f32 ] && echo 1e-4 || echo 2e-2)
  python3 - "$OUT/tiny-gpus1-$dtype.jsonl" "$OUT/tiny-gpus2-$dtype.jsonl" $dtype $tol <<'PY' | tee -a "$OUT/multi-parity.txt" || fail=1
import json, sys
a = [json.loads(l)["loss"] for l in open(sys.argv[1])]
b = [json.loads(l)["loss"] for l in open(sys.argv[2])]
worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
print(f"tiny Llama, 30 steps, {sys.argv[3]}, dropout 0.1: gpus 1 {a[0]:.5f} -> {a[-1]:.5f}, gpus 2 {b[0]:.5f} -> {b[-1]:.5f}, worst relative loss difference {worst:.2e} (limit {sys.argv[4]})")
sys.exit(0 if len(a) == len(b) == 30 and worst < float(sys.argv[4]) else 1)
PY
done

# 2. Kill and resume with 2 GPUs (f32: the resumed adapter must be bit-identical).
pipeline resume 2 f32 400 20
"$BIN/pipe" -q run "$W/resume.yaml" --cache "$W/full" || fail=1
full=$(output resume "$W/full" adapter)
"$BIN/pipe" -q run "$W/resume.yaml" --cache "$W/killed" &
pid=$!
for _ in $(seq 600); do
  sleep 0.5
  [ -n "$(find "$W/killed" -name 'checkpoint-*' -print -quit 2>/dev/null)" ] && break
done
sleep 1; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
echo "killed after $(find "$W/killed" -name 'checkpoint-*' | sed 's/.*checkpoint-//' | sort -n | tail -1) steps" | tee -a "$OUT/multi-parity.txt"
"$BIN/pipe" -q run "$W/resume.yaml" --cache "$W/killed" || fail=1
resumed=$(output resume "$W/killed" adapter)
if cmp -s "$full/adapter_model.safetensors" "$resumed/adapter_model.safetensors"; then
  echo "kill and resume with 2 GPUs: adapter identical to the uninterrupted run" | tee -a "$OUT/multi-parity.txt"
else
  echo "kill and resume with 2 GPUs: adapter DIFFERS from the uninterrupted run" | tee -a "$OUT/multi-parity.txt"; fail=1
fi
rm -rf "$W"

# 3. Throughput on the 7B shape, same per-GPU batch.
for g in 1 2; do
  PIPE_BENCH_DEVICE=cuda PIPE_BENCH_GPUS=$g PIPE_BENCH_MODEL=deepseek-7b PIPE_BENCH_DTYPE=bf16 PIPE_BENCH_STEPS=5 \
    "$BIN/pipe-bench-train" 2>&1 | tail -1 | tee "$OUT/bench-7b-gpus$g.txt"
done
python3 - "$OUT/bench-7b-gpus1.txt" "$OUT/bench-7b-gpus2.txt" <<'PY' | tee -a "$OUT/bench.txt" || fail=1
import re, sys
tps = [float(re.search(r"([\d.]+) tok/s", open(f).read()).group(1)) for f in sys.argv[1:]]
print(f"7B shape, bf16, 8x384 per GPU: 1 GPU {tps[0]:.1f} tok/s, 2 GPUs {tps[1]:.1f} tok/s, ratio {tps[1] / tps[0]:.2f} (target >= 1.9)")
PY
exit $fail
