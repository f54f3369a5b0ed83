#!/usr/bin/env bash
# Installs a CUDA 13.0 build toolchain from Python wheels (no GPU, no system CUDA needed) and prints
# the environment to build candle's CUDA backend with. Usage:
#   scripts/setup-cuda-toolkit.sh [PREFIX]      # default PREFIX: $HOME/.cache/cuda13-wheels
#   source PREFIX/env.sh && cargo build --release --features cuda
# Run `cargo fetch` in the project first: the libcuda link stub is generated from cudarc's own bindings.
set -euo pipefail
P=${1:-$HOME/.cache/cuda13-wheels}
mkdir -p "$P"
[ -x "$P/venv/bin/pip" ] || python3 -m venv "$P/venv"
"$P/venv/bin/pip" install -q nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.88 nvidia-cuda-cccl==13.0.85 \
  nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14
CU=$(echo "$P"/venv/lib/python3*/site-packages/nvidia/cu13)
cat > "$P/env.sh" <<ENV
export CU=$CU
export PATH=\$CU/bin:\$PATH
export CUDA_ROOT=\$CU CUDA_PATH=\$CU CUDA_HOME=\$CU
export CUDA_COMPUTE_CAP=90
ENV
cd "$CU/lib"
for l in cudart nvrtc cublas cublasLt; do ln -sf lib$l.so.13 lib$l.so; done
ln -sf libcurand.so.10 libcurand.so
# Link-time stub for libcuda (SONAME libcuda.so.1): one empty function per cu* symbol in cudarc's driver
# bindings. Only the linker sees it; on a GPU machine the real driver library is loaded.
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-*/src/driver/sys/mod.rs 2>/dev/null | sort -V | tail -1)
[ -n "$src" ] || { echo "cudarc source not found: run 'cargo fetch' in the project first" >&2; exit 1; }
mkdir -p stubs
grep -oP '^pub unsafe fn \Kcu\w+' "$src" | sort -u | awk '{print "void "$1"(void){}"}' > stubs/libcuda_stub.c
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o stubs/libcuda.so stubs/libcuda_stub.c
echo "ready: source $P/env.sh"
