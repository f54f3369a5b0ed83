"""What bitsandbytes makes of known weights, for the NF4 tests (src/model/base_quant/nf4.rs).

Runs on a GPU machine with torch and bitsandbytes (the CUDA kernels are the reference: they are
what transformers' BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
bnb_4bit_use_double_quant=True) runs). Writes one safetensors file:

- `dynamic_map`: bitsandbytes' signed dynamic 8-bit map (create_dynamic_map(signed=True)), f32.
- for each case (`w`: a [64, 2048] bf16 matrix, std 0.02; `tail`: 1000 bf16 values, std 0.5,
  a last block of 40): `.input` (bf16), `.packed` (u8), `.qabsmax` (u8), `.absmax2` (f32),
  `.offset` (f32, one value), `.dequant_f32` and `.dequant_bf16` (dequantize_4bit's output).

    python3 scripts/nf4_reference.py tests/fixtures/nf4/bnb.safetensors
"""
import sys

import torch
import bitsandbytes
import bitsandbytes.functional as F
from safetensors.torch import save_file

out = sys.argv[1]
g = torch.Generator().manual_seed(0)
cases = {
    "w": (torch.randn(64, 2048, generator=g) * 0.02).to(torch.bfloat16),
    "tail": (torch.randn(1000, generator=g) * 0.5).to(torch.bfloat16),
}
tensors = {"dynamic_map": F.create_dynamic_map(signed=True).float().contiguous()}
for name, x in cases.items():
    q, st = F.quantize_4bit(x.cuda(), blocksize=64, compress_statistics=True, quant_type="nf4")
    tensors[f"{name}.input"] = x.contiguous()
    tensors[f"{name}.packed"] = q.flatten().cpu().contiguous()
    tensors[f"{name}.qabsmax"] = st.absmax.cpu().contiguous()
    tensors[f"{name}.absmax2"] = st.state2.absmax.cpu().float().contiguous()
    tensors[f"{name}.code8"] = st.state2.code.cpu().float().contiguous()
    tensors[f"{name}.offset"] = st.offset.reshape(1).cpu().float().contiguous()
    st.dtype = torch.float32
    tensors[f"{name}.dequant_f32"] = F.dequantize_4bit(q, st).flatten().cpu().contiguous()
    st.dtype = torch.bfloat16
    tensors[f"{name}.dequant_bf16"] = F.dequantize_4bit(q, st).flatten().cpu().contiguous()
    assert torch.equal(tensors[f"{name}.code8"], tensors["dynamic_map"])
save_file(tensors, out)
print(f"bitsandbytes {bitsandbytes.__version__}, torch {torch.__version__}: wrote {out}", {k: tuple(v.shape) for k, v in tensors.items()})
