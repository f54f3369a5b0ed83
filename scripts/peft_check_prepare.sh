#!/usr/bin/env bash
# Prepares .device/peft/<case>/ for scripts/peft_check.py: tiny random Llama and Qwen2 models,
# an adapter trained by pipe on the fortune data, the merged model, and pipe's logits.
# Usage: scripts/peft_check_prepare.sh [OUT=.device/peft]   (then, where torch and peft exist:
#        python3 scripts/peft_check.py .device/peft)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-.device/peft}
cargo build --release --bin pipe --example tiny_model --example logits -q
rm -rf "$OUT" && mkdir -p "$OUT"
W=$(mktemp -d)
cp -r pipelines/data "$W/data"
for arch in llama qwen2; do
  target/release/examples/tiny_model "$W/model-$arch" tests/data/tiny-tokenizer "$arch"
  cat > "$W/$arch.yaml" <<YAML
name: peft-check-$arch
nodes:
  fix: { kind: fix-json, inputs: { records: data/fortune.jsonl } }
  tok: { kind: tokenize, inputs: { records: fix.records, tokenizer: model-$arch }, params: { max_length: 64 } }
  train:
    kind: lora-train
    inputs: { model: model-$arch, dataset: tok.dataset }
    params: { max_steps: 6, batch_size: 4, grad_accum: 1, lr: 0.01, r: 4, alpha: 16, dropout: 0.0 }
  base: { kind: merge, inputs: { model: model-$arch } }
  merged: { kind: merge, inputs: { model: model-$arch, adapter: train.adapter } }
YAML
  target/release/pipe -q run "$W/$arch.yaml" --cache "$W/cache"
  C="$OUT/$arch"; mkdir -p "$C"
  for n in base merged; do
    p=$(target/release/pipe show "$W/$arch.yaml" $n --cache "$W/cache" --json | python3 -c 'import sys,json; print(json.load(sys.stdin)["outputs"]["model"]["path"])')
    cp -r "$p" "$C/$n"; chmod -R u+w "$C/$n"
  done
  p=$(target/release/pipe show "$W/$arch.yaml" train --cache "$W/cache" --json | python3 -c 'import sys,json; print(json.load(sys.stdin)["outputs"]["adapter"]["path"])')
  cp -r "$p" "$C/adapter"; chmod -R u+w "$C/adapter"
  IDS=1,17,254,3,99,512,7,42,300,11
  target/release/examples/logits "$C/base" $IDS > "$C/pipe_base.json"
  target/release/examples/logits "$C/merged" $IDS > "$C/pipe_merged.json"
done
rm -rf "$W"
du -sh "$OUT"
