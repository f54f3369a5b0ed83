#!/usr/bin/env python3
"""Python baseline for the tokenize benchmark: the tutorial's `datasets.map(process_func)`.

Times only `ds.map(process_func, remove_columns=ds.column_names)` (the tutorial's default
single-process map) over the same records file pipe tokenizes, with a
`PreTrainedTokenizerFast(tokenizer_file=...)` built from the tokenizer.json that pipe exported
from the GGUF model. Loading the records into a Dataset and loading the tokenizer are not timed.

With --pipe-dataset it also checks that pipe's `tokenize` output (the PIPETOK binary file) has
the same input_ids and labels as the Python map for every record (or --sample of them).

usage: tokenize_python.py --tokenizer T.json --records R.json [--eos '<|im_end|>'] [--reps 3]
                          [--pipe-dataset FILE] [--sample N] [--json OUT]
"""
import argparse
import json
import statistics
import struct
import sys
import time

import datasets
from datasets import Dataset
from transformers import PreTrainedTokenizerFast


def read_pipetok(path):
    """The PIPETOK layout from src/dataset/mod.rs: header, offsets (u64), ids (u32), trained (u8)."""
    import numpy as np

    b = open(path, "rb").read()
    assert b[:8] == b"PIPETOK\0", "not a pipe token dataset"
    version, _flags, n_rec, n_tok = struct.unpack_from("<IIQQ", b, 8)
    assert version == 1
    off = 32
    offsets = np.frombuffer(b, dtype="<u8", count=n_rec + 1, offset=off)
    off += 8 * (n_rec + 1)
    ids = np.frombuffer(b, dtype="<u4", count=n_tok, offset=off)
    off += 4 * n_tok
    trained = np.frombuffer(b, dtype="u1", count=n_tok, offset=off)
    return offsets, ids, trained


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--records", required=True)
    ap.add_argument("--eos", default="<|im_end|>")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pipe-dataset")
    ap.add_argument("--sample", type=int, default=0, help="check only N evenly spaced records (0: all)")
    ap.add_argument("--json")
    args = ap.parse_args()

    datasets.disable_progress_bar()
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=args.tokenizer, eos_token=args.eos)
    assert tokenizer.eos_token_id is not None, "eos token not in the vocabulary"
    records = json.load(open(args.records, encoding="utf-8"))
    ds = Dataset.from_list(records)

    # The tutorial's function, verbatim.
    def process_func(example):
        MAX_LENGTH = 384
        instruction = tokenizer(f"User: {example['instruction']+example['input']}\n\n", add_special_tokens=False)
        response = tokenizer(f"Assistant: {example['output']}", add_special_tokens=False)
        input_ids = instruction["input_ids"] + response["input_ids"] + [tokenizer.eos_token_id]
        attention_mask = instruction["attention_mask"] + response["attention_mask"] + [1]
        labels = [-100] * len(instruction["input_ids"]) + response["input_ids"] + [tokenizer.eos_token_id]
        if len(input_ids) > MAX_LENGTH:
            input_ids = input_ids[:MAX_LENGTH]; attention_mask = attention_mask[:MAX_LENGTH]; labels = labels[:MAX_LENGTH]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    times = []
    out = None
    for _ in range(args.reps):
        t = time.perf_counter()
        out = ds.map(process_func, remove_columns=ds.column_names)
        times.append(time.perf_counter() - t)
        print(f"python datasets.map: {times[-1]*1e3:.0f} ms", file=sys.stderr)

    # Context (not the baseline): the same Rust tokenizer called from Python without datasets,
    # sequentially and batched (encode_batch uses all cores), and the tokenizer's load time.
    from tokenizers import Tokenizer

    t = time.perf_counter()
    raw = Tokenizer.from_file(args.tokenizer)
    load_ms = (time.perf_counter() - t) * 1e3
    texts = []
    for r in records:
        texts.append(f"User: {r['instruction']+r['input']}\n\n")
        texts.append(f"Assistant: {r['output']}")
    t = time.perf_counter()
    for s in texts:
        raw.encode(s, add_special_tokens=False)
    seq_ms = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    raw.encode_batch(texts, add_special_tokens=False)
    batch_ms = (time.perf_counter() - t) * 1e3
    print(f"context: tokenizer load {load_ms:.0f} ms, encode loop {seq_ms:.0f} ms, encode_batch {batch_ms:.0f} ms", file=sys.stderr)

    result = {
        "records": len(records),
        "tokenizer_load_ms": load_ms,
        "encode_loop_ms": seq_ms,
        "encode_batch_ms": batch_ms,
        "eos_token_id": tokenizer.eos_token_id,
        "map_ms": [t * 1e3 for t in times],
        "map_ms_median": statistics.median(times) * 1e3,
        "map_ms_min": min(times) * 1e3,
        "versions": {
            "python": sys.version.split()[0],
            "datasets": datasets.__version__,
            "transformers": __import__("transformers").__version__,
            "tokenizers": __import__("tokenizers").__version__,
        },
    }

    if args.pipe_dataset:
        offsets, ids, trained = read_pipetok(args.pipe_dataset)
        n = len(records)
        assert len(offsets) - 1 == n, f"pipe wrote {len(offsets)-1} records, python has {n}"
        idx = range(n) if args.sample <= 0 else sorted({round(i * (n - 1) / max(args.sample - 1, 1)) for i in range(args.sample)})
        py_ids = out["input_ids"]
        py_labels = out["labels"]
        mismatches = []
        for r in idx:
            a, b = int(offsets[r]), int(offsets[r + 1])
            p_ids = ids[a:b].tolist()
            p_labels = [int(i) if t else -100 for i, t in zip(ids[a:b], trained[a:b])]
            if p_ids != py_ids[r] or p_labels != py_labels[r]:
                mismatches.append(r)
        result["checked_records"] = len(idx)
        result["mismatched_records"] = len(mismatches)
        result["first_mismatches"] = mismatches[:10]
        if mismatches:
            r = mismatches[0]
            a, b = int(offsets[r]), int(offsets[r + 1])
            print(f"MISMATCH record {r}: pipe {ids[a:b].tolist()[:40]} python {py_ids[r][:40]}", file=sys.stderr)
        print(f"sanity: {len(idx) - len(mismatches)}/{len(idx)} records identical (input_ids and labels)", file=sys.stderr)

    text = json.dumps(result)
    if args.json:
        open(args.json, "w").write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
