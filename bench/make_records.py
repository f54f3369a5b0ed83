#!/usr/bin/env python3
"""Build the tokenize benchmark's records: a JSON array of >= N records.

Source: every line of pipelines/data/fortune.jsonl that parses on its own as an object with
string `instruction`, `input` and `output` (the deliberately damaged lines are skipped), then
pipelines/data/heldout.jsonl, cycled until N records. Both pipe and the Python baseline read the
same file, so they tokenize exactly the same records in the same order.

usage: make_records.py OUT.json [N=30000]
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load(path):
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip().rstrip(",")
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and all(isinstance(rec.get(k), str) for k in ("instruction", "input", "output")):
            out.append({k: rec[k] for k in ("instruction", "input", "output")})
    return out


def main():
    out = Path(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 30000
    base = load(ROOT / "pipelines/data/fortune.jsonl") + load(ROOT / "pipelines/data/heldout.jsonl")
    records = [base[i % len(base)] for i in range(n)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    chars = sum(len(r["instruction"]) + len(r["input"]) + len(r["output"]) for r in records)
    print(f"{out}: {n} records ({len(base)} distinct, cycled), {chars} characters of text", file=sys.stderr)


if __name__ == "__main__":
    main()
