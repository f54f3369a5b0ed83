#!/usr/bin/env python3
"""Checks that pipe's GGUF and llama.cpp's GGUF of the same model are comparable: the same
tensors (names, shapes in GGUF order, types) and how many of them hold identical bytes, plus the
metadata keys only one side writes and the file sizes. Read with llama.cpp's gguf-py
(GGUFReader), independently of pipe's reader, as scripts/gguf_summary.py does.

usage: export_compare.py LABEL PIPE.gguf LLAMA.gguf [LABEL PIPE.gguf LLAMA.gguf ...] --json OUT
Exit status 1 when a pair differs in tensor count, names, shapes or types.
"""
import json
import os
import sys

import numpy as np
from gguf import GGUFReader


def tensors(r):
    return {t.name: t for t in r.tensors}


def compare(label, a_path, b_path):
    a, b = GGUFReader(a_path), GGUFReader(b_path)
    ta, tb = tensors(a), tensors(b)
    common = sorted(set(ta) & set(tb))
    shape_or_type = []
    identical = 0
    max_abs = {}
    for n in common:
        x, y = ta[n], tb[n]
        if x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape):
            shape_or_type.append(f"{n}: {x.tensor_type.name}{list(x.shape)} vs {y.tensor_type.name}{list(y.shape)}")
            continue
        xb, yb = np.asarray(x.data).view(np.uint8), np.asarray(y.data).view(np.uint8)
        if xb.tobytes() == yb.tobytes():
            identical += 1
        elif x.tensor_type.name in ("F16", "F32"):
            d = np.abs(np.asarray(x.data, dtype=np.float32) - np.asarray(y.data, dtype=np.float32)).max()
            max_abs[n] = float(d)
    types = {}
    for t in ta.values():
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    meta = lambda r: {k for k in r.fields if not k.startswith("GGUF.")}
    res = {
        "label": label,
        "pipe": a_path,
        "llama": b_path,
        "tensors_pipe": len(ta),
        "tensors_llama": len(tb),
        "only_pipe": sorted(set(ta) - set(tb)),
        "only_llama": sorted(set(tb) - set(ta)),
        "shape_or_type_differs": shape_or_type,
        "types_pipe": types,
        "identical_bytes": identical,
        "compared": len(common) - len(shape_or_type),
        "float_max_abs_diff": max_abs,
        "metadata_only_pipe": sorted(meta(a) - meta(b)),
        "metadata_only_llama": sorted(meta(b) - meta(a)),
        "bytes_pipe": os.path.getsize(a_path),
        "bytes_llama": os.path.getsize(b_path),
    }
    res["same_tensors"] = not (res["only_pipe"] or res["only_llama"] or shape_or_type) and len(ta) == len(tb)
    return res


def main():
    args = sys.argv[1:]
    out = None
    if "--json" in args:
        i = args.index("--json")
        out = args[i + 1]
        del args[i : i + 2]
    if len(args) % 3:
        sys.exit(__doc__)
    results = [compare(*args[i : i + 3]) for i in range(0, len(args), 3)]
    for r in results:
        print(
            f"{r['label']}: {r['tensors_pipe']} vs {r['tensors_llama']} tensors, same names/shapes/types: "
            f"{r['same_tensors']}, {r['identical_bytes']}/{r['compared']} byte-identical, types {r['types_pipe']}, "
            f"{r['bytes_pipe']} vs {r['bytes_llama']} bytes",
            file=sys.stderr,
        )
    if out:
        json.dump(results, open(out, "w"), indent=1)
    sys.exit(0 if all(r["same_tensors"] for r in results) else 1)


if __name__ == "__main__":
    main()
