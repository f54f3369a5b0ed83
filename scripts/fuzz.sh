#!/usr/bin/env bash
# Runs one fuzz target of fuzz/ (cargo-fuzz: libFuzzer with AddressSanitizer, on the nightly
# toolchain; installs cargo-fuzz if missing) for SECONDS, starting from the committed seeds in
# fuzz/corpus/TARGET. What it finds that is new goes to fuzz/target/corpus/TARGET (not
# committed), crashes, timeouts and OOMs to fuzz/artifacts/TARGET/. An input over 1 s or a
# process over 2 GiB is a finding. Overflow checks are on, as in the dev profile.
# Usage: scripts/fuzz.sh TARGET SECONDS [libFuzzer args] | scripts/fuzz.sh list
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
if [ "${1:-}" = list ]; then
  for f in fuzz_targets/*.rs; do basename "$f" .rs; done
  exit 0
fi
if [ $# -lt 2 ] || [ ! -f "fuzz_targets/$1.rs" ]; then
  echo "usage: scripts/fuzz.sh TARGET SECONDS [libFuzzer args]   (targets: scripts/fuzz.sh list)" >&2
  exit 2
fi
TARGET=$1 SECONDS_=$2
shift 2
command -v cargo-fuzz > /dev/null || cargo +nightly install cargo-fuzz --locked
# mold, where installed, links the (large, instrumented) target binaries in a fraction of the time.
if command -v mold > /dev/null; then
  export RUSTFLAGS="${RUSTFLAGS:-} -Clink-arg=-fuse-ld=mold"
fi
mkdir -p "target/corpus/$TARGET" "artifacts/$TARGET"
# 16 codegen units: the pipe crate builds in minutes instead of tens of minutes, for a little speed.
cargo +nightly fuzz run --debug-assertions --codegen-units 16 "$TARGET" "target/corpus/$TARGET" "corpus/$TARGET" -- \
  -max_total_time="$SECONDS_" -rss_limit_mb=2048 -timeout=1 -print_final_stats=1 \
  -artifact_prefix="artifacts/$TARGET/" "$@"
