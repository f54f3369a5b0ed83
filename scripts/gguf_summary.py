#!/usr/bin/env python3
"""Prints a GGUF file's metadata (scalars and strings; arrays as their length) and tensors
(type name, shape in GGUF order) as JSON, read with the `gguf` package (llama.cpp's gguf-py),
independently of pipe's own reader. Used by tests/it/export.rs.

Usage: python3 scripts/gguf_summary.py FILE.gguf
"""

import json
import sys

from gguf import GGUFReader, GGUFValueType


def main() -> None:
    r = GGUFReader(sys.argv[1])
    meta = {}
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            continue
        t = field.types[0] if field.types else None
        if t == GGUFValueType.ARRAY:
            meta[name] = {"array_len": len(field.data)}
        elif t == GGUFValueType.STRING:
            meta[name] = bytes(field.parts[field.data[0]]).decode("utf-8")
        else:
            v = field.parts[field.data[0]][0]
            meta[name] = v.item() if hasattr(v, "item") else v
    tensors = {t.name: {"type": t.tensor_type.name, "shape": [int(d) for d in t.shape]} for t in r.tensors}
    json.dump({"metadata": meta, "tensors": tensors}, sys.stdout)


if __name__ == "__main__":
    main()
