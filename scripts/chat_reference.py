#!/usr/bin/env python3
"""An independent reference for the `tokenize` node on conversations, with transformers.

For each conversation, transformers renders the tokenizer's chat template and tokenizes it:

    tok.apply_chat_template(messages, tokenize=True, return_dict=True,
                            return_assistant_tokens_mask=True)

The template marks each assistant turn with {% generation %}...{% endgeneration %}, so the
assistant mask is the tokens of those turns (what `train_on: all_assistant` trains).

Usage: chat_reference.py TOKENIZER_DIR RECORDS_JSON
TOKENIZER_DIR holds tokenizer.json and tokenizer_config.json (with the chat template).
RECORDS_JSON is a JSON array of {"messages": [{"role", "content"}, ...]} records.
Prints a JSON array of {"ids": [...], "mask": [...]} on stdout, one per record, in order.
"""

import json
import sys

from transformers import AutoTokenizer


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    tok = AutoTokenizer.from_pretrained(sys.argv[1])
    with open(sys.argv[2], encoding="utf-8") as f:
        records = json.load(f)
    out = []
    for r in records:
        enc = tok.apply_chat_template(
            r["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        out.append({"ids": enc["input_ids"], "mask": enc["assistant_masks"]})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
