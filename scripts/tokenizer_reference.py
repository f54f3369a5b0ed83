#!/usr/bin/env python3
"""Reference token ids from llama.cpp's own tokenizer, for pipe's GGUF tokenizer tests.

Usage:
    tokenizer_reference.py MODEL.gguf /path/to/llama-tokenize [-o OUT.json]

For each sample text below it runs

    llama-tokenize -m MODEL.gguf -f TEXTFILE --ids --log-disable --no-bos --no-escape

and writes JSON: [{"text": ..., "ids": [...]}, ...] (to stdout, or to -o).

Why -f and --no-escape instead of -p TEXT: `-p` runs escape processing
(`\\n` -> newline) and cannot take texts that start with `-`; `-f` with
`--no-escape` hands llama.cpp the exact UTF-8 bytes. llama-tokenize parses
special tokens (`<|im_start|>`) by default, which is what pipe's tokenizer does.

The ids must come from llama.cpp, never from pipe: this file is the oracle.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

SAMPLES = [
    # Chinese fortune-telling
    "你今年的运势很好，事业上会有贵人相助。",
    "算命先生说：明年财运亨通，但要注意身体健康。",
    "属龙的人在2024年桃花运旺盛，宜守不宜攻。",
    "2024年3月14日，圆周率约为3.14159。",
    # English
    "Hello, world! This is a simple English sentence.",
    "It's a dog's life, isn't it? We'll see... they're here, I'd say I'm sure you've WON'T",
    # digits
    "The year 2024 and pi = 3.14159; call 555-0123.",
    "Numbers: 1 12 123 1234 12345 0.001 1e10 -42 +7 1,000,000",
    # punctuation
    "Mixed punctuation!!! ??? ... --- *** (parens) [brackets] {braces} \"quotes\" 'single' @#$%^&",
    # newlines, tabs, spaces
    "Line one\nLine two\n\nParagraph after a blank line.\n",
    "multiple    internal     spaces\n\n\n\nfour newlines   \n  ",
    "   leading spaces and trailing spaces   ",
    " single leading space",
    "def f(x):\n    return x ** 2  # comment\n\tindented with tab\r\nwindows line",
    "unicode spaces:\u00a0nbsp,\u3000ideographic,\u2003em",
    # emoji and other scripts
    "Emoji: 😀🎉👍🏽 and a flag 🇨🇳 and ❤️!",
    "ÀÉÎÕÜ ñ ß Ωμέγα Привет мир 日本語のテキスト、カタカナ。한국어도 있습니다.",
    # special tokens in text
    "<|im_start|>user\n今天的运势如何？<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a fortune teller.<|im_end|>",
    "text<|im_end|>more<|endoftext|>",
    "URL https://example.com/path?q=1&x=2 and email test@example.org",
]


def tokenize(binary: str, model: str, text: str) -> list[int]:
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text.encode("utf-8"))
        name = f.name
    try:
        out = subprocess.run(
            [binary, "-m", model, "-f", name, "--ids", "--log-disable", "--no-bos", "--no-escape"],
            check=True,
            capture_output=True,
        )
    finally:
        os.unlink(name)
    # The ids are the last line of stdout: "[1, 2, 3]".
    lines = [l for l in out.stdout.decode("utf-8").splitlines() if l.strip()]
    if not lines or not lines[-1].startswith("["):
        raise SystemExit(f"unexpected llama-tokenize output for {text!r}: {out.stdout!r} {out.stderr!r}")
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", help="GGUF model file")
    ap.add_argument("llama_tokenize", help="path to llama.cpp's llama-tokenize binary")
    ap.add_argument("-o", "--out", help="write JSON here instead of stdout")
    args = ap.parse_args()

    result = [{"text": t, "ids": tokenize(args.llama_tokenize, args.gguf, t)} for t in SAMPLES]
    # One sample per line: readable diffs when the reference is regenerated.
    text = "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in result) + "\n]\n"
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
