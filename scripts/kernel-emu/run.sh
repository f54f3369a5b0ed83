#!/usr/bin/env bash
# Runs the fused-op CUDA kernels (src/model/ops/kernels/*.cu) on the CPU, without a GPU or nvcc:
# emu.h maps each CUDA thread to a std::thread (one block at a time, barriers for __syncthreads
# and warp shuffles) and fake/ stands in for the bf16/f16 headers. test.cpp launches the f32
# kernels (bf16 too for RMS norm and LoRA) with the same grids as src/model/ops/cuda.rs and compares them with
# naive f64 loops. It checks kernel logic (indexing, tiling, masking, reductions, aliasing), not
# the Rust launchers or GPU timing; examples/ops_check.rs does those on a GPU. About a minute.
#
#   scripts/kernel-emu/run.sh
set -euo pipefail
cd "$(dirname "$0")"
out=$(mktemp -d)
g++ -std=c++20 -O2 -fno-strict-aliasing -pthread -Ifake -I../../src/model/ops/kernels -include emu.h test.cpp -o "$out/kernel-emu"
"$out/kernel-emu"
