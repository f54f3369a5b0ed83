#!/usr/bin/env python3
"""Builds the tiny byte-level BPE tokenizer the integration tests use (no network needed).

Trains a ByteLevel BPE (vocab ~1000) on the text fields of pipelines/data/fortune.jsonl
(Chinese + English) with the special tokens <|endoftext|>, <|im_start|>, <|im_end|>, and writes

  tests/data/tiny-tokenizer/tokenizer.json
  tests/data/tiny-tokenizer/tokenizer_config.json   (eos <|im_end|>, pad <|endoftext|>, no bos, ChatML template)

Deterministic: the training corpus is read in file order and training is single-threaded.
Usage: pip install tokenizers && python3 scripts/make_test_tokenizer.py
"""

import json
import os
import re
import sys

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "pipelines", "data", "fortune.jsonl")
OUT = os.path.join(ROOT, "tests", "data", "tiny-tokenizer")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 1000

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def corpus():
    """Every string value of every line of the (deliberately damaged) training file."""
    texts = []
    with open(DATA, encoding="utf-8") as f:
        for line in f:
            # Damaged lines are not valid JSON; take the quoted strings out of them instead.
            for s in re.findall(r'"((?:[^"\\]|\\.)*)"', line):
                if s in ("instruction", "input", "output") or not s:
                    continue
                try:
                    texts.append(json.loads('"' + s + '"'))
                except json.JSONDecodeError:
                    texts.append(s)
    # The prompt scaffolding of both formats, so it gets merged tokens too.
    texts += ["User: ", "Assistant: ", "\n\n", "system", "user", "assistant"] * 20
    return texts


def main():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    os.makedirs(OUT, exist_ok=True)
    tok.save(os.path.join(OUT, "tokenizer.json"), pretty=False)
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 2048,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "chat_template": CHATML,
    }
    with open(os.path.join(OUT, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=2)
        f.write("\n")
    print(f"vocab {tok.get_vocab_size()} -> {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
