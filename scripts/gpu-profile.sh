#!/usr/bin/env bash
# Kernel-time breakdown of one training step on a GPU machine: pipe's bench step under
# Nsight Compute (gpu__time_duration per launch, clocks not locked) and peft's step under the
# torch profiler, same shape and settings. Writes $OUT/pipe-ncu.csv and $OUT/peft-prof.txt.
#
#   scripts/gpu-profile.sh BIN OUT [shape=deepseek-7b] [ckpt=0]
set -uo pipefail
BIN=$1; OUT=$2; SHAPE=${3:-deepseek-7b}; CKPT=${4:-0}
NCU=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
mkdir -p "$OUT"
PIPE_BENCH_DEVICE=cuda PIPE_BENCH_DTYPE=bf16 PIPE_BENCH_MODEL=$SHAPE PIPE_BENCH_CKPT=$CKPT \
  PIPE_BENCH_STEPS=1 PIPE_BENCH_WARMUP=0 \
  timeout 400 "$NCU" --clock-control none --metrics gpu__time_duration.sum --csv \
  --log-file "$OUT/pipe-ncu.csv" "$BIN/pipe-bench-train" > "$OUT/pipe-ncu.stdout" 2>&1
echo "ncu rc $?"
flag=""; [[ $CKPT != 0 ]] && flag=--ckpt
cat > /tmp/peft_prof.py <<'PY'
import sys, torch
sys.path.insert(0, sys.argv[1])
import peft_baseline as pb
from peft import LoraConfig, TaskType, get_peft_model
shape, ckpt = sys.argv[2], sys.argv[3] == "1"
torch.manual_seed(0)
model = pb.build(shape, "sdpa")
if ckpt:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=8, lora_alpha=32, lora_dropout=0.05,
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
ids = torch.randint(0, model.config.vocab_size, (8, 384), device="cuda")
def step():
    out = model(input_ids=ids, labels=ids); out.loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
model.train()
for _ in range(3): step()
torch.cuda.synchronize()
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CUDA]) as p:
    step(); torch.cuda.synchronize()
print(p.key_averages().table(sort_by="self_cuda_time_total", row_limit=60, max_name_column_width=90))
PY
timeout 300 python3 /tmp/peft_prof.py "$BIN" "$SHAPE" "$CKPT" > "$OUT/peft-prof.txt" 2>&1
echo "peft prof rc $?"
