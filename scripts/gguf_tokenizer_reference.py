#!/usr/bin/env python3
"""Reference GGUF tokenizer metadata from llama.cpp's own converter, for pipe's to_gguf tests.

Usage:
    gguf_tokenizer_reference.py LLAMA_CPP_DIR MODEL_DIR [--pre NAME] [--arch ARCH]

Runs the converter's vocabulary code from LLAMA_CPP_DIR (conversion/base.py and, for
--arch LlamaForCausalLM, conversion/llama.py's LlamaModel.set_vocab) on the Hugging Face
folder MODEL_DIR and prints the `tokenizer.*` key/values it writes as JSON:
{"chkhsh": ..., "kv": [[key, value], ...]} in the writer's order. Arrays of more than 64
elements are summarized as {"len": N, "sha256": hex of the JSON of the list}.

The converter module itself imports torch; this script does not need it: it parses the
source with `ast`, takes the methods it needs (get_vocab_base, get_vocab_base_pre,
does_token_look_special, _set_vocab_gpt2, _set_vocab_llama_hf, set_vocab) and runs them
on a stub model object whose gguf_writer is gguf-py's real GGUFWriter (nothing is written
to disk). `_set_vocab_sentencepiece` is replaced by one that raises FileNotFoundError, as
the real one does when there is no tokenizer.model (without needing sentencepiece).
With --pre, get_vocab_base_pre returns NAME instead of failing on an unknown hash.

With --write-gguf PATH it also writes a vocab-only GGUF (tokenizer keys plus the few llama
hyperparameters llama.cpp reads) that `llama-tokenize --vocab-only`-style tools can load.

Needs: transformers, numpy, and gguf-py (LLAMA_CPP_DIR/gguf-py is put on sys.path).
The values must come from llama.cpp's code, never from pipe: this file is the oracle.
"""

import argparse
import ast
import hashlib
import json
import logging
import sys
import textwrap
from pathlib import Path


def methods(path: Path, classname: str, names: set) -> dict:
    src = path.read_text(encoding="utf-8")
    out = {}
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ClassDef) and node.name == classname:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name in names:
                    out[item.name] = textwrap.dedent(ast.get_source_segment(src, item))
    missing = names - out.keys()
    if missing:
        sys.exit(f"{path}: {classname} has no {sorted(missing)}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("llama_cpp_dir", type=Path)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--pre")
    ap.add_argument("--arch", default="")
    ap.add_argument("--write-gguf", type=Path, help="also write a vocab-only GGUF (for llama-tokenize)")
    ap.add_argument("--merge-rank-scores", action="store_true",
                    help="in the written GGUF, replace the converter's -1000.0 scores by -(rank of the merge making "
                         "the token), 0.0 for tokens no merge makes (what pipe writes by default)")
    args = ap.parse_args()
    sys.path.insert(0, str(args.llama_cpp_dir / "gguf-py"))
    import gguf  # noqa: E402

    logging.basicConfig(level=logging.ERROR)
    ns = {"gguf": gguf, "sha256": hashlib.sha256, "logger": logging.getLogger("convert"), "json": json, "Path": Path}
    base = methods(
        args.llama_cpp_dir / "conversion" / "base.py",
        "TextModel",
        {"get_vocab_base", "get_vocab_base_pre", "_set_vocab_gpt2", "_set_vocab_llama_hf"},
    )
    base.update(methods(args.llama_cpp_dir / "conversion" / "base.py", "TextModel", {"does_token_look_special"}))
    for name, src in base.items():
        exec("from __future__ import annotations\n" + src, ns)

    class Stub:
        pass

    model = Stub()
    model.dir_model = args.model_dir
    cfg = args.model_dir / "config.json"
    model.hparams = json.loads(cfg.read_text()) if cfg.is_file() else {}
    model.gguf_writer = gguf.GGUFWriter(path=None, arch="llama")
    model.is_mistral_format = False
    model.origin_hf_arch = args.arch
    for name in base:
        setattr(Stub, name, ns[name])
    chk = {}
    real_pre = ns["get_vocab_base_pre"]

    def get_vocab_base_pre(self, tokenizer):
        chktxt = real_pre.__code__.co_consts  # the text is a constant of the real function
        text = next(c for c in chktxt if isinstance(c, str) and c.startswith("\n \n\n"))
        chk["chkhsh"] = hashlib.sha256(str(tokenizer.encode(text)).encode()).hexdigest()
        if args.pre:
            return args.pre
        return real_pre(self, tokenizer)

    Stub.get_vocab_base_pre = get_vocab_base_pre

    def no_sentencepiece(self, *a, **k):
        raise FileNotFoundError("no tokenizer.model")

    Stub._set_vocab_sentencepiece = no_sentencepiece

    if args.arch == "LlamaForCausalLM":
        llama = methods(args.llama_cpp_dir / "conversion" / "llama.py", "LlamaModel", {"set_vocab"})
        exec("from __future__ import annotations\n" + llama["set_vocab"], ns)
        Stub.set_vocab = ns["set_vocab"]
        model.set_vocab()
    else:
        try:
            model._set_vocab_llama_hf()
        except (FileNotFoundError, TypeError):
            model._set_vocab_gpt2()

    if args.write_gguf:
        w = model.gguf_writer
        if args.merge_rank_scores and "tokenizer.ggml.scores" in w.kv_data[0]:
            merges = json.loads((args.model_dir / "tokenizer.json").read_text())["model"]["merges"]
            rank = {}
            for i, m in enumerate(merges):
                a, b = m.split(" ", 1) if isinstance(m, str) else m
                rank.setdefault(a + b, i)
            toks = w.kv_data[0]["tokenizer.ggml.tokens"].value
            toks = [t.decode("utf-8") if isinstance(t, (bytes, bytearray)) else t for t in toks]
            w.kv_data[0]["tokenizer.ggml.scores"].value = [-float(rank[t]) if t in rank else 0.0 for t in toks]
        w.add_context_length(2048)
        w.add_embedding_length(64)
        w.add_block_count(1)
        w.add_feed_forward_length(128)
        w.add_head_count(1)
        w.add_layer_norm_rms_eps(1e-5)
        w.write_header_to_file(path=args.write_gguf)
        w.write_kv_data_to_file()
        w.close()

    kv = []
    for key, val in model.gguf_writer.kv_data[0].items():
        if not key.startswith("tokenizer."):
            continue
        v = val.value
        if isinstance(v, (list, tuple)):
            v = [x.decode("utf-8") if isinstance(x, (bytes, bytearray)) else (int(x) if hasattr(x, "__index__") and not isinstance(x, bool) else x) for x in v]
            if len(v) > 64:
                v = {"len": len(v), "sha256": hashlib.sha256(json.dumps(v, ensure_ascii=False).encode()).hexdigest()}
        kv.append([key, v, val.type.name])
    json.dump({"chkhsh": chk.get("chkhsh"), "kv": kv}, sys.stdout, ensure_ascii=False, indent=1)
    print()


if __name__ == "__main__":
    main()
