#!/usr/bin/env python3
"""How often llama.cpp tokenizes like Hugging Face for a SentencePiece-style BPE tokenizer.json,
with the converter's placeholder scores and with pipe's merge-rank scores.

Usage:
    spm_scores_check.py LLAMA_CPP_DIR LLAMA_TOKENIZE MODEL_DIR [N]

Writes both vocab-only GGUFs with scripts/gguf_tokenizer_reference.py, tokenizes N random texts
(words of 1 to 6 letters drawn from the letters the merges use) with llama-tokenize and with
`tokenizers`, and prints the number of texts whose ids differ for each.
"""

import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from tokenizers import Tokenizer


def main() -> None:
    llama_cpp, llama_tokenize, model_dir = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 300
    ref = Path(__file__).resolve().parent / "gguf_tokenizer_reference.py"
    hf = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    merges = json.loads((model_dir / "tokenizer.json").read_text())["model"]["merges"]
    letters = sorted({c for m in merges for c in "".join(m if isinstance(m, list) else m.split(" ")) if c.isalpha()})
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        ggufs = {}
        for name, extra in [("converter scores", []), ("merge-rank scores", ["--merge-rank-scores"])]:
            path = Path(tmp) / (name.split()[0] + ".gguf")
            subprocess.run([sys.executable, str(ref), str(llama_cpp), str(model_dir), "--arch", "LlamaForCausalLM",
                            "--write-gguf", str(path), *extra], check=True, capture_output=True)
            ggufs[name] = path
        bad = dict.fromkeys(ggufs, 0)
        text_file = Path(tmp) / "t.txt"
        for _ in range(n):
            text = " ".join("".join(rng.choice(letters) for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 6)))
            text_file.write_text(text, encoding="utf-8")
            want = hf.encode(text, add_special_tokens=False).ids
            for name, path in ggufs.items():
                out = subprocess.run([llama_tokenize, "-m", str(path), "-f", str(text_file), "--ids", "--log-disable",
                                      "--no-bos", "--no-escape"], capture_output=True, text=True, check=True).stdout
                if json.loads(out.strip().splitlines()[-1]) != want:
                    bad[name] += 1
    for name, count in bad.items():
        print(f"{name}: {count} of {n} texts tokenize differently in llama.cpp")


if __name__ == "__main__":
    main()
