#!/usr/bin/env python3
"""An independent reference for the `tokenize` node's `seed` format, with the Python `tokenizers`.

Mirrors the tutorial's process_func:

    prompt   = enc("User: " + instruction + input + "\\n\\n", add_special_tokens=False)
    response = enc("Assistant: " + output, add_special_tokens=False)
    ids      = prompt + response + [eos_id]
    labels   = [-100] * len(prompt) + response + [eos_id]
    both truncated at max_length

Usage: tokenize_reference.py TOKENIZER_JSON RECORDS_JSON MAX_LENGTH [EOS_TOKEN]
RECORDS_JSON is a JSON array of {"instruction", "input", "output"} records. EOS_TOKEN defaults to
the `eos_token` of the tokenizer_config.json beside the tokenizer. Prints a JSON array of
{"ids": [...], "labels": [...]} on stdout, one per record, in order.
"""

import json
import os
import sys

from tokenizers import Tokenizer


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    tok_path, records_path, max_length = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tok = Tokenizer.from_file(tok_path)
    if len(sys.argv) == 5:
        eos = sys.argv[4]
    else:
        with open(os.path.join(os.path.dirname(tok_path), "tokenizer_config.json"), encoding="utf-8") as f:
            eos = json.load(f)["eos_token"]
            if isinstance(eos, dict):
                eos = eos["content"]
    eos_id = tok.token_to_id(eos)
    if eos_id is None:
        sys.exit(f"{eos!r} is not a token")
    with open(records_path, encoding="utf-8") as f:
        records = json.load(f)
    out = []
    for r in records:
        prompt = tok.encode("User: " + r["instruction"] + r.get("input", "") + "\n\n", add_special_tokens=False).ids
        response = tok.encode("Assistant: " + r["output"], add_special_tokens=False).ids
        ids = prompt + response + [eos_id]
        labels = [-100] * len(prompt) + response + [eos_id]
        out.append({"ids": ids[:max_length], "labels": labels[:max_length]})
    json.dump(out, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
