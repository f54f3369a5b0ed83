#!/usr/bin/env python3
"""Builds the small Hugging Face tokenizer folders under tests/data/to-gguf/ and, for each,
the converter's reference metadata (scripts/gguf_tokenizer_reference.py) as expected.json.

Usage:
    make_to_gguf_fixtures.py LLAMA_CPP_DIR

Reference for tests/data/tiny-tokenizer (a 1000-token byte-level BPE) as tiny-expected.json;
its chkhsh is unknown, so the reference runs with --pre gpt-2. Folders derived from it:
  llama3ish/ Llama 3 shaped: ignore_merges, Llama 3 regex, TemplateProcessing with a BOS,
             special / user-defined / non-normalized / non-ASCII added tokens, merges as pairs,
             config.json with vocab_size beyond the vocabulary ([PAD] ids), an eos list, a pad id
  spmbpe/    SentencePiece-style BPE (byte fallback, Sequence decoder): the converter's "llama"
             route through LlamaHfVocab
Needs: tokenizers, transformers, numpy.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "to-gguf"
TINY = ROOT / "tests" / "data" / "tiny-tokenizer"
LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def write(folder: Path, name: str, obj) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    text = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, indent=1)
    (folder / name).write_text(text + "\n", encoding="utf-8")


def added(id_, content, special, normalized=False):
    return {"id": id_, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": normalized, "special": special}


def llama3ish() -> None:
    t = json.loads((TINY / "tokenizer.json").read_text())
    n = len(t["model"]["vocab"])
    t["model"]["ignore_merges"] = True
    t["model"]["merges"] = [m.split(" ") if isinstance(m, str) else m for m in t["model"]["merges"]]
    extra = [
        ("<|begin_of_text|>", True, False),
        ("<|eot_id|>", True, False),
        ("<|start_header_id|>", True, False),
        ("<|end_header_id|>", True, False),
        ("<tool>", False, False),
        ("你好", False, False),
        ("\u2581x\u2581", False, True),
        ("[SPECIAL]", True, False),
    ]
    for i, (content, special, normalized) in enumerate(extra):
        t["added_tokens"].append(added(n + i, content, special, normalized))
    t["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
    ]}
    bos = n
    t["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing",
         "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                  {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [bos], "tokens": ["<|begin_of_text|>"]}}},
    ]}
    d = OUT / "llama3ish"
    write(d, "tokenizer.json", t)
    write(d, "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": {"__type": "AddedToken", "content": "<|eot_id|>", "lstrip": False, "normalized": False,
                      "rstrip": False, "single_word": False, "special": True},
        "clean_up_tokenization_spaces": True,
        "add_prefix_space": False,
        "chat_template": LLAMA3_TEMPLATE,
    })
    write(d, "config.json", {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": n + len(extra) + 4,
        "bos_token_id": bos,
        "eos_token_id": [n + 1, 2],
        "pad_token_id": 0,
    })


def spmbpe() -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers
    from tokenizers.processors import TemplateProcessing

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in "\u2581abcdefghijklmnopqrstuvwxyz,.!?":
        vocab[c] = len(vocab)
    # Merges whose rank order differs from left-to-right order ("bc" before "ab", "er" before
    # "we"), where llama.cpp's SentencePiece merging depends on the scores.
    merges = [("b", "c"), ("e", "r"), ("\u2581", "t"), ("h", "e"), ("\u2581t", "he"), ("i", "n"), ("\u2581", "a"),
              ("\u2581", "w"), ("o", "r"), ("a", "b"), ("w", "e")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    from tokenizers import AddedToken
    tok.add_special_tokens([AddedToken("<unk>", normalized=False), AddedToken("<s>", normalized=False),
                            AddedToken("</s>", normalized=False)])
    tok.add_tokens([AddedToken("<|user|>", normalized=False, special=False),
                    AddedToken("<|assistant|>", normalized=False, special=False)])
    d = OUT / "spmbpe"
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    write(d, "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "additional_special_tokens": ["<|user|>"],
        "chat_template": "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + eos_token + '\\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
    })
    write(d, "config.json", {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                             "vocab_size": tok.get_vocab_size(), "bos_token_id": 1, "eos_token_id": 2})


def reference(llama_cpp: Path, folder: Path, out: Path, *extra: str) -> None:
    text = subprocess.run([sys.executable, str(ROOT / "scripts" / "gguf_tokenizer_reference.py"), str(llama_cpp),
                           str(folder), *extra], check=True, capture_output=True, text=True).stdout
    out.write_text(text, encoding="utf-8")


def main() -> None:
    llama_cpp = Path(sys.argv[1])
    llama3ish()
    spmbpe()
    reference(llama_cpp, TINY, OUT / "tiny-expected.json", "--pre", "gpt-2")
    reference(llama_cpp, OUT / "llama3ish", OUT / "llama3ish" / "expected.json", "--pre", "llama-bpe",
              "--arch", "LlamaForCausalLM")
    reference(llama_cpp, OUT / "spmbpe", OUT / "spmbpe" / "expected.json", "--arch", "LlamaForCausalLM")


if __name__ == "__main__":
    main()
