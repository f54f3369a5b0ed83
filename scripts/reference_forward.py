#!/usr/bin/env python3
"""Independent numpy reference forward pass of a Llama, Qwen2 or Qwen3 GGUF model.

No torch, no transformers, no tokenizer: the GGUF file is read with the PyPI
`gguf` package, every tensor is dequantized with `gguf.quants.dequantize`
and promoted to float64, and the model is built from the `{arch}.*` metadata.
All arithmetic is float64; only the written logits are rounded to float32.

The model, as llama.cpp builds LLM_ARCH_LLAMA, LLM_ARCH_QWEN2 and
LLM_ARCH_QWEN3 (src/models/llama.cpp, qwen2.cpp, qwen3.cpp):

    x = token_embd[ids]
    per block:  h = rms_norm(x) * attn_norm
                q, k, v = h Wq^T, h Wk^T, h Wv^T       (+ optional biases)
                q, k = rms_norm(q) * attn_q_norm, rms_norm(k) * attn_k_norm
                                                        (qwen3: per head, over head_dim)
                q, k = rope(q), rope(k)                 (per head, see below)
                x = x + softmax(q k^T / sqrt(head_dim) + causal mask) v  Wo^T
                h = rms_norm(x) * ffn_norm
                x = x + (silu(h Wg^T) * (h Wu^T)) Wd^T
    logits = (rms_norm(x) * output_norm) W_out^T        (W_out = token_embd if output.weight is absent)

RoPE: for `llama`, GGUF files converted from Hugging Face by llama.cpp store
the rows of attn_q / attn_k permuted so that llama.cpp's "normal" rope (mode
0, GPT-J style) is right for them: the adjacent pairs (x[2i], x[2i+1]) of
each head are rotated by pos * theta_i, theta_i = freq_base^(-2i/n_rot).
This script does exactly that on the weights as stored (no un-permuting).
`qwen2` and `qwen3` keep Hugging Face's row order and llama.cpp rotates them
in NEOX mode: the pairs (x[i], x[i + n_rot/2]). Grouped-query attention:
query head h reads kv head h // (n_head / n_head_kv).

Supported extras: `llama.rope.dimension_count` < head_dim (only the first
n_rot dims rotate), linear rope scaling, `rope_freqs.weight` (Llama 3 freq
factors), `llama.attention.scale`, optional bias tensors. Not supported
(errors out): mixture of experts, fused attn_qkv, YaRN/LongRoPE scaling.

Output (--out FILE, JSON):
    {"gguf": ..., "ids": [...], "n_vocab": V,
     "last_logits": [V float32 values of the last position],
     "argmax": [argmax token id per position],
     "argmax_logit": [the float32 logit at that argmax, per position],
     "config": {...}}

Usage:
    pip install gguf numpy
    python3 scripts/reference_forward.py --gguf model.gguf --ids 1,2,3 --out ref.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import gguf

# llama.cpp's rope mode per architecture (LLAMA_ROPE_TYPE_NORM / _NEOX).
ROPE_MODE = {"llama": "normal", "qwen2": "neox", "qwen3": "neox"}


def field_value(field):
    """A metadata value as a Python scalar, string or list (gguf-py version agnostic)."""
    if hasattr(field, "contents"):
        return field.contents()
    # Older gguf-py: decode by hand.
    types = field.types
    if types[0] == gguf.GGUFValueType.ARRAY:
        if types[1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if types[0] == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return field.parts[field.data[0]].tolist()[0]


@dataclass
class Config:
    arch: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_rot: int
    rope_freq_base: float
    rope_freq_scale: float
    rms_eps: float
    n_ctx: int
    kq_scale: float
    n_vocab: int
    tied_embeddings: bool


class Model:
    def __init__(self, path: Path):
        reader = gguf.GGUFReader(path)
        self.meta = {name: field_value(f) for name, f in reader.fields.items() if not name.startswith("GGUF.")}
        arch = self.meta.get("general.architecture")
        if arch not in ROPE_MODE:
            sys.exit(f"{path}: general.architecture is {arch!r}, this reference handles {sorted(ROPE_MODE)} only")

        self.tensors: dict[str, np.ndarray] = {}
        for t in reader.tensors:
            qtype = gguf.GGMLQuantizationType(t.tensor_type)
            w = gguf.quants.dequantize(t.data, qtype)
            # GGUF dims are [ne0, ne1, ...] with ne0 contiguous: numpy shape is the reverse.
            shape = tuple(int(d) for d in reversed(list(t.shape)))
            self.tensors[t.name] = np.asarray(w, dtype=np.float32).reshape(shape).astype(np.float64)
        self.types = sorted({gguf.GGMLQuantizationType(t.tensor_type).name for t in reader.tensors})

        m = lambda k, default=None: self.meta.get(f"{arch}.{k}", default)  # noqa: E731
        need = lambda k: m(k) if m(k) is not None else sys.exit(f"{path}: missing metadata {arch}.{k}")  # noqa: E731
        n_embd = int(need("embedding_length"))
        n_head = int(need("attention.head_count"))
        n_head_kv = int(m("attention.head_count_kv", n_head))
        head_dim = int(m("attention.key_length", n_embd // n_head))
        if int(m("attention.value_length", head_dim)) != head_dim:
            sys.exit("attention.value_length != key_length is not supported")
        scaling = m("rope.scaling.type", "none")
        freq_scale = 1.0
        if scaling == "linear":
            freq_scale = 1.0 / float(m("rope.scaling.factor", 1.0))
        elif scaling not in ("none", None):
            sys.exit(f"rope scaling {scaling!r} is not supported")
        if m("expert_count", 0):
            sys.exit("mixture-of-experts models are not supported")
        if "blk.0.attn_qkv.weight" in self.tensors:
            sys.exit("fused attn_qkv tensors are not supported")
        scale = float(m("attention.scale", 0.0) or 0.0)
        self.cfg = Config(
            arch=arch,
            n_layer=int(need("block_count")),
            n_embd=n_embd,
            n_ff=int(need("feed_forward_length")),
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            n_rot=int(m("rope.dimension_count", head_dim)),
            rope_freq_base=float(m("rope.freq_base", 10000.0)),
            rope_freq_scale=freq_scale,
            rms_eps=float(need("attention.layer_norm_rms_epsilon")),
            n_ctx=int(need("context_length")),
            kq_scale=scale if scale else 1.0 / math.sqrt(head_dim),
            n_vocab=self.tensors["token_embd.weight"].shape[0],
            tied_embeddings="output.weight" not in self.tensors,
        )
        if n_head % n_head_kv:
            sys.exit(f"head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")

    def w(self, name: str) -> np.ndarray:
        return self.tensors[name]

    def opt(self, name: str) -> np.ndarray | None:
        return self.tensors.get(name)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    y = x @ w.T
    return y if b is None else y + b


def rope(x: np.ndarray, pos: np.ndarray, cfg: Config, freq_factors: np.ndarray | None) -> np.ndarray:
    """llama.cpp's rope of x (T, heads, head_dim): mode 0 ("normal") rotates (x[2i], x[2i+1]) of
    each head, NEOX mode (x[i], x[i + n_rot/2]), both by pos * theta_i."""
    n_rot = cfg.n_rot
    i = np.arange(n_rot // 2, dtype=np.float64)
    inv_freq = cfg.rope_freq_base ** (-2.0 * i / n_rot)
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors
    theta = (pos.astype(np.float64) * cfg.rope_freq_scale)[:, None] * inv_freq[None, :]  # (T, n_rot/2)
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    out = x.copy()
    if ROPE_MODE[cfg.arch] == "normal":
        first, second = slice(0, n_rot, 2), slice(1, n_rot, 2)
    else:
        first, second = slice(0, n_rot // 2), slice(n_rot // 2, n_rot)
    x0, x1 = x[..., first], x[..., second]
    out[..., first] = x0 * cos - x1 * sin
    out[..., second] = x0 * sin + x1 * cos
    return out


def forward(model: Model, ids: list[int]) -> np.ndarray:
    """Logits (T, n_vocab), float64, for token ids at positions 0..T-1."""
    cfg = model.cfg
    n_tok = len(ids)
    pos = np.arange(n_tok)
    emb = model.w("token_embd.weight")
    x = emb[np.asarray(ids)]
    group = cfg.n_head // cfg.n_head_kv
    mask = np.triu(np.full((n_tok, n_tok), -np.inf), k=1)
    freq_factors = model.opt("rope_freqs.weight")
    for il in range(cfg.n_layer):
        p = f"blk.{il}."
        h = rms_norm(x, model.w(p + "attn_norm.weight"), cfg.rms_eps)
        q = linear(h, model.w(p + "attn_q.weight"), model.opt(p + "attn_q.bias"))
        k = linear(h, model.w(p + "attn_k.weight"), model.opt(p + "attn_k.bias"))
        v = linear(h, model.w(p + "attn_v.weight"), model.opt(p + "attn_v.bias"))
        q = q.reshape(n_tok, cfg.n_head, cfg.head_dim)
        k = k.reshape(n_tok, cfg.n_head_kv, cfg.head_dim)
        if (q_norm := model.opt(p + "attn_q_norm.weight")) is not None:
            q = rms_norm(q, q_norm, cfg.rms_eps)
        if (k_norm := model.opt(p + "attn_k_norm.weight")) is not None:
            k = rms_norm(k, k_norm, cfg.rms_eps)
        q = rope(q, pos, cfg, freq_factors)
        k = rope(k, pos, cfg, freq_factors)
        v = v.reshape(n_tok, cfg.n_head_kv, cfg.head_dim)
        k = np.repeat(k, group, axis=1)
        v = np.repeat(v, group, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) * cfg.kq_scale + mask
        scores = scores - scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        attn = np.einsum("hts,shd->thd", probs, v).reshape(n_tok, cfg.n_head * cfg.head_dim)
        x = x + linear(attn, model.w(p + "attn_output.weight"), model.opt(p + "attn_output.bias"))

        h = rms_norm(x, model.w(p + "ffn_norm.weight"), cfg.rms_eps)
        gate = linear(h, model.w(p + "ffn_gate.weight"), model.opt(p + "ffn_gate.bias"))
        up = linear(h, model.w(p + "ffn_up.weight"), model.opt(p + "ffn_up.bias"))
        act = gate / (1.0 + np.exp(-gate)) * up
        x = x + linear(act, model.w(p + "ffn_down.weight"), model.opt(p + "ffn_down.bias"))

    x = rms_norm(x, model.w("output_norm.weight"), cfg.rms_eps)
    out_w = emb if cfg.tied_embeddings else model.w("output.weight")
    return x @ out_w.T


def parse_ids(text: str) -> list[int]:
    try:
        ids = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        sys.exit(f"--ids must be comma-separated integers, got {text!r}")
    if not ids:
        sys.exit("--ids is empty")
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, required=True, help="GGUF file of a llama, qwen2 or qwen3 model")
    ap.add_argument("--ids", required=True, help="comma-separated token ids, e.g. 1,2,3")
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = ap.parse_args()

    ids = parse_ids(args.ids)
    t0 = time.time()
    model = Model(args.gguf)
    cfg = model.cfg
    if len(ids) > cfg.n_ctx:
        sys.exit(f"{len(ids)} ids exceed the context length {cfg.n_ctx}")
    bad = [i for i in ids if not 0 <= i < cfg.n_vocab]
    if bad:
        sys.exit(f"token ids out of range 0..{cfg.n_vocab}: {bad[:5]}")
    t1 = time.time()
    logits = forward(model, ids)
    t2 = time.time()

    last = logits[-1].astype(np.float32)
    argmax = logits.argmax(axis=-1)
    result = {
        "gguf": str(args.gguf),
        "ids": ids,
        "n_vocab": cfg.n_vocab,
        "tensor_types": model.types,
        "config": asdict(cfg),
        "argmax": [int(a) for a in argmax],
        "argmax_logit": [float(np.float32(logits[t, a])) for t, a in enumerate(argmax)],
        # float(np.float32) is exact: each value parses back to the same float32.
        "last_logits": [float(v) for v in last],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result))
    print(
        f"{args.gguf.name}: {len(ids)} tokens, load {t1 - t0:.1f}s, forward {t2 - t1:.1f}s; "
        f"next token {int(argmax[-1])} (logit {float(logits[-1, argmax[-1]]):.4f}) -> {args.out}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
