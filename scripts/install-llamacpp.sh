#!/usr/bin/env bash
# Builds a real llama.cpp (the tools the export-gguf gate and its tests use, and llama-server for
# `pipe serve`) from the sources vendored in the llama-cpp-python sdist on PyPI: no prebuilt
# binaries, no git clone. 2 cores: about 4 minutes for the gate's tools, 2 more for llama-server.
# Idempotent: what is built is reused.
# Usage: scripts/install-llamacpp.sh [DIR [TOOL...]]   (default target/llamacpp, every tool: the
# gate's llama-tokenize, llama-simple and llama-perplexity, and llama-server); prints the bin
# folder, which is what PIPE_LLAMA_CPP takes.
set -euo pipefail
VERSION=0.3.36
DIR=${1:-target/llamacpp}
shift || true
TOOLS=("$@")
if [ ${#TOOLS[@]} -eq 0 ]; then TOOLS=(llama-tokenize llama-simple llama-perplexity llama-server); fi
PY=${PYTHON:-python3}
if [[ "$PY" == */* ]]; then PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"; fi
mkdir -p "$DIR" && cd "$DIR"
BIN="$PWD/build/bin"
built() { [ -f "$PWD/.built-$VERSION-o1-$1" ]; }
missing=()
for t in "${TOOLS[@]}"; do built "$t" || missing+=("$t"); done
if [ ${#missing[@]} -eq 0 ]; then echo "$BIN"; exit 0; fi
if ! command -v cmake >/dev/null; then
  "$PY" -m pip install -q --disable-pip-version-check cmake >&2
fi
SRC="llama_cpp_python-$VERSION"
if [ ! -d "$SRC/vendor/llama.cpp" ]; then
  "$PY" -m pip download -q --disable-pip-version-check --no-cache-dir --no-deps --no-binary llama-cpp-python \
    "llama-cpp-python==$VERSION" -d . >&2
  tar xzf "$SRC.tar.gz"
fi
# Configured once (a folder configured by an older version of this script, without the server,
# is configured again).
if ! grep -qs 'LLAMA_BUILD_SERVER:BOOL=ON' build/CMakeCache.txt; then
  # ggml (the kernels the tools compute with) keeps -O3; the rest (libllama, common, the tools:
  # most of the C++, none of it hot in the tests) builds at -O1, which compiles about 40% faster.
  # CMake includes this file right after ggml's own `project()`, in ggml's directory scope.
  cat > ggml-release-flags.cmake <<'CMAKE'
set(CMAKE_C_FLAGS_RELEASE "-O3 -DNDEBUG")
set(CMAKE_CXX_FLAGS_RELEASE "-O3 -DNDEBUG")
CMAKE
  cmake -S "$SRC/vendor/llama.cpp" -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
    -DCMAKE_C_FLAGS_RELEASE="-O1 -DNDEBUG" -DCMAKE_CXX_FLAGS_RELEASE="-O1 -DNDEBUG" \
    -DCMAKE_PROJECT_ggml_INCLUDE="$PWD/ggml-release-flags.cmake" \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_CURL=OFF -DGGML_CCACHE=OFF >cmake-configure.log 2>&1 || { rm -f build/CMakeCache.txt; tail -20 cmake-configure.log >&2; exit 1; }
fi
cmake --build build -j"$(nproc)" --target "${missing[@]}" >>cmake-build.log 2>&1 || { tail -30 cmake-build.log >&2; exit 1; }
for t in "${missing[@]}"; do touch "$PWD/.built-$VERSION-o1-$t"; done
echo "$BIN"
