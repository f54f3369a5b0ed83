"""A QLoRA adapter trained by pipe, in peft over bitsandbytes' 4-bit base, against pipe's merge.

pipe trained ADAPTER with `base_quant: nf4` over the Hugging Face folder BASE and merged it
(MERGED: the NF4 base dequantized, plus the adapter's delta, f32). This loads
- BASE with transformers' BitsAndBytesConfig(load_in_4bit, nf4, double quantization, bf16
  compute) and ADAPTER on it with peft (what a peft user of the adapter runs),
- MERGED in f32 (pipe's result),
- BASE in bf16 with ADAPTER and no quantization (the same adapter on the unquantized base),
- MERGED in bf16 (the bf16 floor: how far any bf16 forward of this function is from f32),
and prints one JSON line: the largest logit difference of each against MERGED in f32, relative
to the largest logit, on a fixed batch of token ids. peft's QLoRA model must be within twice the
bf16 floor (the same function up to bf16 compute) and at least 4 times closer than the adapter
on the unquantized base (which shows the quantized values are the same ones).

    python3 scripts/qlora_parity.py BASE ADAPTER MERGED
"""
import json
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

base, adapter, merged = sys.argv[1:4]
torch.manual_seed(0)
cfg = json.load(open(f"{base}/config.json"))
ids = torch.randint(0, cfg["vocab_size"], (2, 48)).cuda()


def logits(model):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


bnb = BitsAndBytesConfig(
    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16
)
q = AutoModelForCausalLM.from_pretrained(base, quantization_config=bnb, dtype=torch.bfloat16, device_map={"": 0})
qlora = logits(PeftModel.from_pretrained(q, adapter))
ref = logits(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).cuda())
plain = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).cuda(), adapter))
# The bf16 floor: pipe's own merged weights, computed in bf16. Any bf16 forward of this function
# is about this far from the f32 one.
floor = logits(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.bfloat16).cuda())
scale = ref.abs().max().item()
rel = lambda x: (x - ref).abs().max().item() / scale
out = {
    "peft_qlora_vs_pipe_merged": rel(qlora),
    "unquantized_base_vs_pipe_merged": rel(plain),
    "pipe_merged_in_bf16_vs_f32": rel(floor),
    "argmax_agreement_qlora": (qlora.argmax(-1) == ref.argmax(-1)).float().mean().item(),
    "max_abs_logit": scale,
}
print(json.dumps(out))
# Within twice the bf16 floor, and much closer than the same adapter on the unquantized base.
ok = (
    out["peft_qlora_vs_pipe_merged"] <= 2 * out["pipe_merged_in_bf16_vs_f32"]
    and out["peft_qlora_vs_pipe_merged"] * 4 < out["unquantized_base_vs_pipe_merged"]
)
print("qlora parity", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
