#!/usr/bin/env python3
"""Checks that pipe's artifacts load in the tools people use: transformers and peft.

For each case folder under DIR (made by scripts/peft_check_prepare.sh):
  base/     a Hugging Face folder (pipe's merge without an adapter)
  adapter/  pipe's LoRA adapter (adapter_model.safetensors + adapter_config.json)
  merged/   pipe's merge of base + adapter
  pipe_base.json, pipe_merged.json   pipe's own logits for the same ids

it checks, in float32 on the CPU:
  1. transformers' logits for base/ equal pipe's (max |diff| / max |logit| < 1e-4);
  2. PeftModel.from_pretrained(base, adapter/) loads and its logits equal transformers' on merged/;
  3. transformers' logits for merged/ equal pipe's.
Exits 1 if any check fails.
"""
import json
import sys
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def main(root):
    ok = True
    rows = []
    for case in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        pb = json.loads((case / "pipe_base.json").read_text())
        pm = json.loads((case / "pipe_merged.json").read_text())
        ids = pb["ids"]
        base = AutoModelForCausalLM.from_pretrained(case / "base", torch_dtype=torch.float32)
        hf_base = logits(base, ids)
        r1 = rel(torch.tensor(pb["logits"]), hf_base)
        peft_model = PeftModel.from_pretrained(base, case / "adapter")
        peft_logits = logits(peft_model, ids)
        merged = AutoModelForCausalLM.from_pretrained(case / "merged", torch_dtype=torch.float32)
        hf_merged = logits(merged, ids)
        r2 = rel(peft_logits, hf_merged)
        r3 = rel(torch.tensor(pm["logits"]), hf_merged)
        moved = rel(hf_base, hf_merged)
        good = r1 < 1e-4 and r2 < 1e-4 and r3 < 1e-4 and moved > 1e-3
        ok &= good
        rows.append((case.name, r1, r2, r3, moved, "ok" if good else "FAIL"))
    print("| case | pipe vs transformers (base) | peft(base+adapter) vs transformers(merged) | pipe vs transformers (merged) | adapter effect | |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.2e} | {r[2]:.2e} | {r[3]:.2e} | {r[4]:.2e} | {r[5]} |")
    return 0 if ok and rows else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
