#!/usr/bin/env bash
# compute-sanitizer over pipe's own CUDA kernels, driven by ops_check (every kernel against the CPU
# reference). Fails when any tool reports an error in a pipe kernel, or when ops_check itself fails
# under a tool. Part of the GPU suite (scripts/gpu-check.sh runs it with SANITIZE=1).
#
#   scripts/gpu-sanitize.sh [BIN] [OUT]
#
# BIN holds ops_check (built with --features cuda; default bin-cuda/). Logs go to
# OUT/sanitize-TOOL-WHAT.txt, one summary line per run to OUT/sanitize.txt.
#
# - memcheck and synccheck: the whole of ops_check (no timings), outputs poisoned with NaN.
# - racecheck: one run per op group on the small shapes (`--small --only OP`): the tool is slow, and
#   the small shapes reach every kernel and every partial-tile edge.
# - initcheck: without poisoning (so a kernel reading memory nothing wrote is seen). It fails on
#   reports in pipe's kernels only: initcheck does not see the stores of cuBLAS's Hopper GEMM
#   kernels and reports every later copy of their outputs to the host (a plain PyTorch bf16 matmul
#   gets the same report); those are counted as "host copies" and do not fail. An output a pipe
#   kernel leaves unwritten is caught by the poisoned runs (ops_check compares NaN).
# Every tool instruments every kernel (no --kernel-regex filter), candle's and cuBLAS's included.
#
# The fused LoRA kernels run (PIPE_FUSED_LORA=on, the default: every width) unless the caller says off. OPS_ARGS adds
# ops_check arguments to every run (e.g. "--only lora"); RACE_OPS lists racecheck's op groups;
# SAN_TIMEOUT bounds each run (seconds, default 900).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-bin-cuda}
OUT=${2:-${OUT:-gpu-results}}
CS=${COMPUTE_SANITIZER:-/usr/local/cuda/bin/compute-sanitizer}
TIMEOUT=${SAN_TIMEOUT:-900}
# The names of pipe's kernels (src/model/ops/kernels/*.cu), for attributing reports.
PIPE_KERNELS='rms_norm_(fwd|bwd)_|rope_(f32|bf16|f16)|swiglu_|ce_|dropout_(f32|bf16|f16)|attn_|lora_'
export PIPE_FUSED_LORA=${PIPE_FUSED_LORA:-on}
mkdir -p "$OUT"
: > "$OUT/sanitize.txt"
fail=0
"$CS" --version | tail -1 | tee -a "$OUT/sanitize.txt"

# run TOOL WHAT POISON [ops_check args...]
run() {
  local tool=$1 what=$2 poison=$3
  shift 3
  local log="$OUT/sanitize-$tool-$what.txt" t0=$SECONDS rc
  PIPE_CUDA_POISON=$poison timeout "$TIMEOUT" "$CS" --tool "$tool" --error-exitcode 99 --print-limit 1000 \
    "$BIN/ops_check" --no-time ${OPS_ARGS:-} "$@" > "$log" 2>&1
  rc=$?
  local summary ours host checks
  # memcheck/synccheck/initcheck: "ERROR SUMMARY: N errors"; racecheck: "RACECHECK SUMMARY: N
  # hazards displayed (E errors, W warnings)" (a warning is a hazard too: it counts).
  summary=$(grep -oE 'ERROR SUMMARY: [0-9]+ error' "$log" | tail -1 | grep -oE '[0-9]+')
  [ -n "$summary" ] || summary=$(grep -oE 'RACECHECK SUMMARY: [0-9]+ hazard' "$log" | tail -1 | grep -oE '[0-9]+')
  # Reports attributed to a pipe kernel (the frame under each device-side report names it), and
  # host-side reports (copies out of memory no kernel initialized: cuBLAS's outputs for initcheck).
  ours=$(grep -E '^=========[[:space:]]+at ' "$log" | grep -cE "at ($PIPE_KERNELS)")
  host=$(grep -c 'Host API memory access error' "$log")
  checks=$(grep -cE ' (PASS|FAIL)$' "$log")
  local verdict=PASS bad
  if [ "$tool" = initcheck ]; then bad=$ours; else bad=${summary:-x}; fi
  if [ "$rc" = 124 ]; then verdict="TIMEOUT after ${TIMEOUT}s"; fi
  if [ "$rc" != 0 ] && [ "$rc" != 99 -o "$tool" != initcheck ] || [ "$bad" != 0 ] || [ "$ours" != 0 ]; then
    [ "$verdict" = PASS ] && verdict=FAIL
    fail=1
  fi
  printf '%-10s %-14s poison=%s  %3d checks  reports %s (in pipe kernels %s, host copies %s)  rc %s  %ds  %s\n' \
    "$tool" "$what" "$poison" "$checks" "${summary:-?}" "$ours" "$host" "$rc" $((SECONDS - t0)) "$verdict" | tee -a "$OUT/sanitize.txt"
  grep -E ' FAIL$|ERROR ' "$log" | head -5
}

# FULL_TOOLS (default: memcheck synccheck initcheck) run over all of ops_check; the others over
# the small shapes only.
FULL_TOOLS=${FULL_TOOLS-memcheck synccheck initcheck}
scope() { case " $FULL_TOOLS " in *" $1 "*) echo all ;; *) echo small ;; esac; }
args() { [ "$(scope "$1")" = small ] && echo --small; }
run memcheck "$(scope memcheck)" 1 $(args memcheck)
run synccheck "$(scope synccheck)" 1 $(args synccheck)
for op in ${RACE_OPS:-rms_norm rope swiglu cross_entropy dropout attention lora}; do
  run racecheck "$op" 1 --small --only "$op"
done
run initcheck "$(scope initcheck)" 0 $(args initcheck)
exit $fail
