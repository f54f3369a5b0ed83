#!/usr/bin/env bash
# Writes tests/data/quantize/: reference bytes from llama.cpp's quantizers for
# the bit-exactness tests of src/gguf/quantize.rs (`cargo test --lib gguf::quantize`).
#
# Usage:
#   scripts/quantize_reference.sh LLAMA_CPP_DIR [GGML_LIB_DIR]
#
#   LLAMA_CPP_DIR  a llama.cpp source tree (or set $LLAMA_CPP_DIR); only its
#                  ggml/include/ggml.h is read when GGML_LIB_DIR is given.
#   GGML_LIB_DIR   a folder holding libggml-base.so built from that tree (or set
#                  $GGML_LIB_DIR). Without it, ggml-base is built from
#                  LLAMA_CPP_DIR with cmake (Release, GGML_NATIVE=OFF; ggml-base
#                  gets no -march flags either way) in a temporary folder.
#   $OUT_DIR       where the files go (default: tests/data/quantize in this repo).
#
# scripts/quantize_reference.c holds the inputs and the list of types; it calls
# ggml_quantize_chunk with no importance matrix, as llama-quantize does.
#
# The committed files were made on x86-64 (gcc 12.2, Debian 12) with
#   scripts/quantize_reference.sh \
#       /work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp /work/llamacpp/build/bin
# i.e. the llama.cpp vendored by llama-cpp-python 0.3.36 (ggml 0.25.3), whose
# libggml-base.so is a Release build with GGML_NATIVE=OFF; building ggml-base
# from that tree (no GGML_LIB_DIR) gives the same files. Note: ggml-base is
# compiled without -march flags, so on x86-64 no multiply-add is fused; an
# aarch64 build (where gcc fuses a*b+c by default) can differ in the last bit
# of K-quant scales.
set -euo pipefail

src=${1:-${LLAMA_CPP_DIR:-}}
lib=${2:-${GGML_LIB_DIR:-}}
if [[ -z "$src" || ! -f "$src/ggml/include/ggml.h" ]]; then
    echo "usage: $0 LLAMA_CPP_DIR [GGML_LIB_DIR]  (no ggml/include/ggml.h under '${src}')" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT_DIR:-$here/../tests/data/quantize}
cc=${CC:-cc}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [[ -z "$lib" ]]; then
    echo "building ggml-base of $src ..." >&2
    # The whole tree, everything but ggml switched off: llama.cpp's vendored
    # ggml/ does not configure on its own.
    cmake -S "$src" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=ON \
        -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF >/dev/null
    cmake --build "$tmp/build" --target ggml-base -j "$(nproc)" >/dev/null
    lib=$(dirname "$(find "$tmp/build" -name 'libggml-base.so' | head -n 1)")
fi
if [[ ! -f "$lib/libggml-base.so" ]]; then
    echo "no libggml-base.so in '$lib'" >&2
    exit 2
fi

"$cc" -O2 -std=gnu11 -Wall -Wextra -I"$src/ggml/include" "$here/quantize_reference.c" \
    -L"$lib" -lggml-base -Wl,-rpath,"$lib" -lm -o "$tmp/quantize_reference"
mkdir -p "$out"
"$tmp/quantize_reference" "$out"
