#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the Python packages the reference tests
# compare against (into target/pyenv, nothing global), then runs every Rust test.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=target/pyenv
if [ ! -x "$PY/bin/python3" ]; then
  python3 -m venv "$PY"
fi
"$PY/bin/python3" -m pip install -q --disable-pip-version-check -r scripts/test-requirements.txt
export PATH="$PWD/$PY/bin:$PATH"
export PIPE_REQUIRE_PYTHON=1
cargo test --locked "$@"
