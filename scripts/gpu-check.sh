#!/usr/bin/env bash
# The GPU suite and GPU benchmarks, for a machine with an NVIDIA GPU (CUDA 13 driver) and, for the
# baseline comparison, PyTorch + transformers + peft. Uses binaries built elsewhere with
# `--features cuda` (see the README's CUDA section) and copied into BIN (default bin-cuda/):
# pipe, tiny_model, pipe-bench-train, ops_check. The peft baseline script is taken from
# PEFT_BASELINE (default BIN/peft_baseline.py). Results go to OUT (default $OUT, else
# ./gpu-results): ops_check.txt, gpu_lora.txt, sanitize.txt, repeat.txt, parity.txt,
# peft-parity.txt, bench.txt (raw lines) and bench.md (the table).
#
#   scripts/gpu-check.sh [BIN] [OUT]
#
# Each part can be skipped: OPS_CHECK=0 (every kernel against the CPU reference, outputs poisoned
# with NaN), GPU_LORA=0 (the LoRA kernels compiled here with nvcc, scripts/kernel-emu/gpu_lora.cu),
# SANITIZE=0 (compute-sanitizer's memcheck, synccheck, racecheck and initcheck over pipe's kernels:
# scripts/gpu-sanitize.sh), REPEAT=0 (REPEAT runs, default 20, of the same training steps from the
# same state must give bit-identical losses and adapters, for REPEAT_SHAPES, default
# "smollm2-135m deepseek-7b"), PARITY=0 (CPU/CUDA loss curves), PEFT_PARITY=0, SHAPES="" (no
# benchmarks).
# SHAPES (default "smollm2-135m tinyllama-1.1b deepseek-7b") and CKPTS (default "1 0") narrow
# the benchmark grid; PIPE_STEPS / PIPE_WARMUP set pipe's timed and warm-up steps (3 / 2).
# Each run has a timeout (RUN_TIMEOUT seconds, default 180), so one hang costs one cell.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-bin-cuda}
OUT=${2:-${OUT:-gpu-results}}
PEFT_BASELINE=${PEFT_BASELINE:-$BIN/peft_baseline.py}
SHAPES=${SHAPES-smollm2-135m tinyllama-1.1b deepseek-7b}
CKPTS=${CKPTS:-1 0}
PIPE_STEPS=${PIPE_STEPS:-3}
PIPE_WARMUP=${PIPE_WARMUP:-2}
RUN_TIMEOUT=${RUN_TIMEOUT:-180}
mkdir -p "$OUT"
fail=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

# 0. The fused ops' kernels against the CPU reference, no timings; every output buffer starts as
# NaN (ops_check sets PIPE_CUDA_POISON=1), so an unwritten output fails.
if [ "${OPS_CHECK:-1}" = 1 ]; then
  timeout 300 "$BIN/ops_check" --no-time > "$OUT/ops_check.txt" 2>&1 || { echo "ops_check FAILED (see ops_check.txt)"; fail=1; }
  grep -E ' FAIL$|ERROR' "$OUT/ops_check.txt" | head -20
  tail -1 "$OUT/ops_check.txt"
fi

# 0b. The LoRA kernels built from source with this machine's nvcc, checked against f64 loops with
# the position of every wrong output (a partly filled column tile shows up here first).
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
if [ "${GPU_LORA:-1}" = 1 ] && [ -x "$NVCC" ]; then
  "$NVCC" -O3 -std=c++17 -arch=sm_90 -I src/model/ops/kernels scripts/kernel-emu/gpu_lora.cu -o "$OUT/.gpu_lora" \
    && timeout 300 "$OUT/.gpu_lora" > "$OUT/gpu_lora.txt" 2>&1 || { echo "gpu_lora FAILED (see gpu_lora.txt)"; fail=1; }
  rm -f "$OUT/.gpu_lora"
  grep -A2 ' FAIL' "$OUT/gpu_lora.txt" | head -12
  tail -1 "$OUT/gpu_lora.txt"
fi

# 0c. compute-sanitizer over pipe's kernels (any error in them fails the suite).
if [ "${SANITIZE:-1}" = 1 ]; then
  scripts/gpu-sanitize.sh "$BIN" "$OUT" || { echo "sanitizer FAILED (see sanitize.txt)"; fail=1; }
fi

# 0d. Determinism: the same training steps from the same state, REPEAT times, bit-identical.
REPEAT=${REPEAT:-20}
if [ "$REPEAT" != 0 ]; then
  : > "$OUT/repeat.txt"
  for shape in ${REPEAT_SHAPES:-smollm2-135m deepseek-7b}; do
    PIPE_BENCH_DEVICE=cuda PIPE_BENCH_DTYPE=bf16 PIPE_BENCH_MODEL=$shape PIPE_BENCH_CKPT=1 PIPE_BENCH_REPEAT=$REPEAT \
      PIPE_BENCH_STEPS=2 PIPE_BENCH_WARMUP=0 timeout "$RUN_TIMEOUT" "$BIN/pipe-bench-train" 2>/dev/null | tee -a "$OUT/repeat.txt" \
      | grep -q PASS || { echo "repeat $shape FAILED"; fail=1; }
  done
fi

# 1. Correctness: the same tiny LoRA training on cuda:0 and on the CPU gives the same loss curve,
# in f32 and in bf16. Hidden 256 (head dim 64), so the GPU runs every fused kernel, attention's
# included. bf16 curves differ by rounding (matmul accumulation order, kernel vs composition),
# so their bound is looser.
if [ "${PARITY:-1}" = 1 ]; then
W=$(mktemp -d)
cp -r pipelines/data "$W/data"
"$BIN/tiny_model" "$W/model" tests/data/tiny-tokenizer llama 256
: > "$OUT/parity.txt"
for dtype in f32 bf16; do
  for dev in cpu cuda; do
    cat > "$W/$dev-$dtype.yaml" <<YAML
name: gpu-parity-$dev-$dtype
nodes:
  fix: { kind: fix-json, inputs: { records: data/fortune.jsonl } }
  tok: { kind: tokenize, inputs: { records: fix.records, tokenizer: model }, params: { max_length: 64 } }
  train:
    kind: lora-train
    device: $dev
    inputs: { model: model, dataset: tok.dataset }
    params: { max_steps: 20, batch_size: 8, grad_accum: 2, lr: 0.01, r: 8, dropout: 0.1, logging_steps: 1, dtype: $dtype }
YAML
    timeout 300 "$BIN/pipe" -q run "$W/$dev-$dtype.yaml" --cache "$W/cache" || fail=1
    p=$("$BIN/pipe" show "$W/$dev-$dtype.yaml" train --cache "$W/cache" --json | python3 -c 'import sys,json; print(json.load(sys.stdin)["outputs"]["log"]["path"])')
    cp "$p" "$OUT/tiny-$dev-$dtype.jsonl"
  done
  # Step 1 compares the kernels themselves (same weights, same batch, same dropout masks). Later
  # steps also carry AdamW's amplification of rounding differences: at lr 0.01 a 1e-7 difference
  # in step 1 grows about 3x per step (measured on an H100: f32 1.3e-7, 3.5e-6, 8.8e-6 in steps
  # 1-3, ~2e-3 by step 13), so the first three steps get the tight bound and the whole curve a
  # loose one. A wrong kernel or mask shows at step 1 or 2.
  early=$([ $dtype = f32 ] && echo 1e-4 || echo 5e-3)
  bound=$([ $dtype = f32 ] && echo 1e-2 || echo 3e-2)
  python3 - "$OUT/tiny-cpu-$dtype.jsonl" "$OUT/tiny-cuda-$dtype.jsonl" $dtype $early $bound <<'PY' | tee -a "$OUT/parity.txt" || fail=1
import json, sys
a = [json.loads(l)["loss"] for l in open(sys.argv[1])]
b = [json.loads(l)["loss"] for l in open(sys.argv[2])]
early, bound = float(sys.argv[4]), float(sys.argv[5])
rel = [abs(x - y) / abs(x) for x, y in zip(a, b)]
ok = len(a) == len(b) == 20 and max(rel[:3]) < early and max(rel) < bound
print(f"tiny Llama (hidden 256), 20 steps, dropout 0.1, {sys.argv[3]}: cpu {a[0]:.5f} -> {a[-1]:.5f}, cuda {b[0]:.5f} -> {b[-1]:.5f}, "
      f"relative loss difference steps 1-3 {' '.join(f'{r:.1e}' for r in rel[:3])} (bound {early:g}), worst {max(rel):.2e} (bound {bound:g}) "
      f"{'PASS' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
done
rm -rf "$W"
fi

# 1b. Parity with peft on the GPU (PEFT_PARITY=0 skips): the same LoRA trained by peft and by
# pipe from the same base weights, LoRA init and batches, dropout 0, 50 steps; the loss curves
# and the trained adapter's logits in peft are compared (scripts/peft_train_parity.py). Needs
# torch, transformers and peft.
if [ "${PEFT_PARITY:-1}" = 1 ] && python3 -c 'import torch, peft, transformers' 2>/dev/null; then
  : > "$OUT/peft-parity.txt"
  for shape in ${PARITY_SHAPES:-tiny smollm2-135m}; do
    for dtype in f32 bf16; do
      timeout 600 python3 scripts/peft_train_parity.py --pipe "$BIN/pipe" --device cuda --dtype $dtype --shape $shape \
        > "$OUT/peft-parity-$shape-$dtype.log" 2>&1 || { echo "peft parity $shape $dtype FAILED"; fail=1; }
      grep -E '^\{|parity|PASS|FAIL' "$OUT/peft-parity-$shape-$dtype.log" | tail -3 | sed "s/^/$shape $dtype: /" | tee -a "$OUT/peft-parity.txt"
    done
  done
fi

# 2. Benchmarks: pipe's bf16 step and the peft baseline, same card, same call, batch 8 x 384.
peak() {  # run a command while nvidia-smi samples GPU memory; prints the peak in MiB after its output
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$OUT/mem.log" 2>/dev/null &
  local mon=$!
  "$@"
  local rc=$?
  kill $mon 2>/dev/null; wait $mon 2>/dev/null
  echo "nvidia-smi peak GPU memory: $(sort -n "$OUT/mem.log" | tail -1) MiB"
  return $rc
}
echo "| shape | ckpt | pipe tok/s | pipe ms/step | pipe peak GPU mem (GiB) | peft tok/s | peft ms/step | peft peak mem (GiB, max_memory_allocated) | pipe / peft |" > "$OUT/bench.md"
echo "|---|---|---|---|---|---|---|---|---|" >> "$OUT/bench.md"
for shape in $SHAPES; do
  for ckpt in $CKPTS; do
    log="$OUT/pipe-$shape-ckpt$ckpt.log"
    PIPE_BENCH_DEVICE=cuda PIPE_BENCH_DTYPE=bf16 PIPE_BENCH_MODEL=$shape PIPE_BENCH_CKPT=$ckpt \
      PIPE_BENCH_STEPS=$PIPE_STEPS PIPE_BENCH_WARMUP=$PIPE_WARMUP \
      peak timeout "$RUN_TIMEOUT" "$BIN/pipe-bench-train" > "$log" 2>&1 || echo "pipe bench $shape ckpt=$ckpt failed (rc $?)" >> "$log"
    tail -3 "$log" | tee -a "$OUT/bench.txt"
    flag=$([ $ckpt = 1 ] && echo --ckpt)
    plog="$OUT/peft-$shape-ckpt$ckpt.log"
    if [ -f "$PEFT_BASELINE" ]; then
      timeout "$RUN_TIMEOUT" python3 "$PEFT_BASELINE" --shape $shape --batch 8 --seq 384 $flag > "$plog" 2>&1 || echo "peft $shape ckpt=$ckpt failed (rc $?)" >> "$plog"
      tail -1 "$plog" | tee -a "$OUT/bench.txt"
    fi
    python3 - "$log" "$plog" $shape $ckpt <<'PY' >> "$OUT/bench.md"
import json, re, sys
pipe_log, peft_log, shape, ckpt = sys.argv[1:5]
txt = open(pipe_log).read()
tok = re.search(r"\| ([\d.]+) tok/s \| ([\d.]+) ms/step", txt)
smi = re.search(r"nvidia-smi peak GPU memory: (\d+) MiB", txt)
own = re.search(r"peak device mem (\d+) MiB", txt)
mem = int(smi.group(1)) if smi else (int(own.group(1)) if own else None)
peft = None
try:
    for line in open(peft_log):
        if line.startswith("{"):
            peft = json.loads(line)
except OSError:
    pass
f = lambda x, fmt: (fmt.format(x) if x is not None else "n/a")
pt = float(tok.group(1)) if tok else None
pm = float(tok.group(2)) if tok else None
ratio = f"{pt / peft['tokens_per_s']:.2f}x" if pt and peft else "n/a"
print(f"| {shape} | {'on' if ckpt == '1' else 'off'} | {f(pt, '{:,.0f}')} | {f(pm, '{:.1f}')} | {f(mem / 1024 if mem else None, '{:.2f}')} | "
      f"{f(peft and peft['tokens_per_s'], '{:,.0f}')} | {f(peft and peft['step_ms'], '{:.1f}')} | {f(peft and peft['peak_mem_gib'], '{:.2f}')} | {ratio} |")
PY
  done
done
cat "$OUT/bench.md"
exit $fail
