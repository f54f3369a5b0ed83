#!/usr/bin/env python3
"""Reference data for `src/gguf/ftype.rs`: the type `llama-quantize` gives
each tensor, for several model shapes and every file type pipe supports.

For each model shape below, writes a GGUF (F32 tensors) whose tensor data is
a sparse hole (only the header is real, so a 1B-parameter shape costs no disk),
runs `llama-quantize --dry-run in.gguf FTYPE` for each file type, and records
the type printed for every tensor. The result, one line per (file type, tensor
name pattern) with the types of layers 0.. run-length encoded, goes to
`tests/data/quantize/ftype_reference.txt`, which the test
`gguf::ftype::tests::matches_llama_quantize_dry_runs` reads.

Usage (needs the `gguf` package and a llama.cpp build):
    python3 scripts/ftype_reference.py --llama-quantize /path/to/llama-quantize [--out FILE]

The committed file was made with /work/llamacpp/venv/bin/python and
/work/llamacpp/build/bin/llama-quantize, the llama.cpp vendored by
llama-cpp-python 0.3.36.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import gguf

FTYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
          "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"]


@dataclass
class Model:
    name: str
    arch: str  # "llama" or "qwen2"
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    tied: bool

    def tensors(self) -> list[tuple[str, list[int]]]:
        """(name, GGUF dims: row length first), with blk.N. for layer tensors."""
        hd = self.n_embd // self.n_head
        e, q, kv, f = self.n_embd, self.n_head * hd, self.n_head_kv * hd, self.n_ff
        out = [("token_embd.weight", [e, self.n_vocab]), ("output_norm.weight", [e])]
        if not self.tied:
            out.append(("output.weight", [e, self.n_vocab]))
        layer = [
            ("attn_norm.weight", [e]),
            ("attn_q.weight", [e, q]),
            ("attn_k.weight", [e, kv]),
            ("attn_v.weight", [e, kv]),
            ("attn_output.weight", [q, e]),
            ("ffn_norm.weight", [e]),
            ("ffn_gate.weight", [e, f]),
            ("ffn_up.weight", [e, f]),
            ("ffn_down.weight", [f, e]),
        ]
        if self.arch == "qwen2":
            layer += [("attn_q.bias", [q]), ("attn_k.bias", [kv]), ("attn_v.bias", [kv])]
        return out + [(f"blk.N.{n}", d) for n, d in layer]


MODELS = [
    # Real shapes (hidden sizes not multiples of 256 exercise the fallbacks).
    Model("smollm2-135m", "llama", 30, 576, 1536, 9, 3, 49152, tied=True),
    Model("smollm2-360m", "llama", 32, 960, 2560, 15, 5, 49152, tied=True),
    Model("qwen2.5-0.5b", "qwen2", 24, 896, 4864, 14, 2, 151936, tied=True),
    Model("tinyllama-1.1b", "llama", 22, 2048, 5632, 32, 4, 32000, tied=False),
    # 80 layers: llama.cpp's "70B" rule (Llama with GQA, any Qwen2), narrow to stay small.
    Model("llama-80-layers-gqa", "llama", 80, 256, 512, 8, 2, 1000, tied=False),
    Model("llama-80-layers-mha", "llama", 80, 256, 512, 8, 8, 1000, tied=False),
    Model("qwen2-80-layers", "qwen2", 80, 256, 512, 8, 8, 1000, tied=True),
    # Rows that fit no block type (80 % 32 != 0) and a 32-but-not-256 FFN.
    Model("odd-widths", "llama", 8, 80, 96, 2, 1, 100, tied=False),
]


def expand(m: Model) -> list[tuple[str, list[int]]]:
    out = []
    for name, dims in m.tensors():
        if name.startswith("blk.N."):
            out += [(name.replace("blk.N.", f"blk.{i}."), dims) for i in range(m.n_layer)]
        else:
            out.append((name, dims))
    return out


def write_sparse_gguf(m: Model, path: Path) -> None:
    w = gguf.GGUFWriter(path, m.arch)
    a = m.arch
    w.add_uint32(f"{a}.context_length", 2048)
    w.add_uint32(f"{a}.embedding_length", m.n_embd)
    w.add_uint32(f"{a}.block_count", m.n_layer)
    w.add_uint32(f"{a}.feed_forward_length", m.n_ff)
    w.add_uint32(f"{a}.attention.head_count", m.n_head)
    w.add_uint32(f"{a}.attention.head_count_kv", m.n_head_kv)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_float32(f"{a}.rope.freq_base", 10000.0)
    w.add_uint32(f"{a}.vocab_size", m.n_vocab)
    w.add_file_type(0)
    total = 0
    for name, dims in expand(m):
        nbytes = 4 * int(np.prod(dims))
        w.add_tensor_info(name, list(reversed(dims)), np.dtype(np.float32), nbytes)
        total += gguf.GGUFWriter.ggml_pad(nbytes, w.data_alignment)
    w.open_output_file()
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    w.write_padding(fout, fout.tell())
    fout.truncate(fout.tell() + total)
    w.close()


LINE = re.compile(r"\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[[^\]]*\], type =\s+(\S+), size =\s+[\d.]+ MiB(?: ->\s+[\d.]+ MiB \((\S+)\))?")


def dry_run(quantize: str, path: Path, ftype: str) -> dict[str, str]:
    p = subprocess.run([quantize, "--dry-run", str(path), ftype], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"llama-quantize {ftype} {path} failed:\n{p.stdout}\n{p.stderr}")
    types = {}
    for line in (p.stdout + p.stderr).splitlines():
        if mt := LINE.search(line):
            name, cur, new = mt.groups()
            types[name] = new or cur
    return types


def rle(xs: list[str]) -> str:
    out, i = [], 0
    while i < len(xs):
        j = i
        while j < len(xs) and xs[j] == xs[i]:
            j += 1
        out.append(xs[i] if j - i == 1 else f"{xs[i]}*{j - i}")
        i = j
    return " ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parent.parent
    ap.add_argument("--llama-quantize", required=True)
    ap.add_argument("--out", type=Path, default=root / "tests" / "data" / "quantize" / "ftype_reference.txt")
    args = ap.parse_args()
    lines = [
        "# llama-quantize --dry-run: the type of every tensor; written by scripts/ftype_reference.py.",
        "# model NAME ARCH n_layer=N n_head=H n_head_kv=K tied=0|1",
        "# FTYPE TENSOR DIMS TYPES  (blk.N. tensors: one type per layer 0.., `t*k` = k times t)",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for m in MODELS:
            path = Path(tmp) / f"{m.name}.gguf"
            write_sparse_gguf(m, path)
            lines.append(f"model {m.name} {m.arch} n_layer={m.n_layer} n_head={m.n_head} "
                         f"n_head_kv={m.n_head_kv} tied={int(m.tied)}")
            for ftype in FTYPES:
                types = dry_run(args.llama_quantize, path, ftype)
                assert len(types) == len(expand(m)), (m.name, ftype, len(types))
                for name, dims in m.tensors():
                    if name.startswith("blk.N."):
                        ts = [types[name.replace("blk.N.", f"blk.{i}.")] for i in range(m.n_layer)]
                    else:
                        ts = [types[name]]
                    lines.append(f"{ftype} {name} {','.join(map(str, dims))} {rle(ts)}")
            path.unlink()
            print(f"{m.name}: {len(FTYPES)} file types")
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
