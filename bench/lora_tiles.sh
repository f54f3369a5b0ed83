#!/usr/bin/env bash
# The LoRA kernels' tiling constants swept on a GPU machine with nvcc (BENCHMARKS.md section 11):
# bench/lora_tiles.cu times lora_down, lora_up_add, lora_bwd_dy and lora_bwd_x (bf16, r=8) on the
# 7B shapes (3072 rows x 4096 / 11008 columns) for each (LORA_WARPS, LORA_ROWS, LORA_UNROLL,
# LORA_UNROLL_X, LORA_MINB), compiled with -D overrides of lora.cu's defaults.
#
#   bench/lora_tiles.sh        # NVCC=/usr/local/cuda/bin/nvcc by default
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
OUTDIR=$(mktemp -d)
CONFIGS=("8 16 4 2 2" "8 8 4 2 2" "4 16 4 2 4" "8 16 8 4 2" "4 8 4 2 4" "8 4 4 2 2" "4 4 2 2 4" "8 32 4 2 2")
for cfg in "${CONFIGS[@]}"; do
  set -- $cfg
  "$NVCC" -O3 -std=c++17 -arch=sm_90 -I src/model/ops/kernels -DLORA_WARPS=$1 -DLORA_ROWS=$2 -DLORA_UNROLL=$3 \
    -DLORA_UNROLL_X=$4 -DLORA_MINB=$5 bench/lora_tiles.cu -o "$OUTDIR/b_$1_$2_$3_$4_$5" &
done
wait
for cfg in "${CONFIGS[@]}"; do
  set -- $cfg
  echo "== LORA_WARPS=$1 LORA_ROWS=$2 LORA_UNROLL=$3 LORA_UNROLL_X=$4 LORA_MINB=$5"
  "$OUTDIR/b_$1_$2_$3_$4_$5"
done
rm -rf "$OUTDIR"
