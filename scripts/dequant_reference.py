#!/usr/bin/env python3
"""Reference data for `src/gguf/quant.rs`, from the PyPI `gguf` package (gguf-py).

Two modes:

* Test vectors (default): for each ggml type that quant.rs decodes, write
  `<type>.bin` (raw tensor bytes: a few blocks) and `<type>.f32` (the values
  `gguf.quants.dequantize` gives for them, little-endian f32) into
  `tests/data/dequant/`. Blocks come from `gguf.quants.quantize` of random
  normal data where gguf-py can quantize the type (f16, bf16, q4_0, q4_1,
  q5_0, q5_1, q8_0), plus blocks of random bytes (valid for every one of these formats
  once the f16 scale fields are finite), which exercise every bit pattern.
  Deterministic (fixed seed); about 90 KB in all.

* Model dump (`--model FILE.gguf --dump-dir DIR`): write every tensor of a
  GGUF file, dequantized by gguf-py, to `DIR/<tensor name>.f32`, for the
  `real_model_tensors_match_reference_dumps` test (PIPE_TEST_GGUF=FILE
  PIPE_TEST_GGUF_REF=DIR cargo test real_model).

With `--ggml-lib DIR` (a folder holding libggml-base.so of a llama.cpp
build), every reference array is also checked against ggml's own C
`to_float` for the type, so the files are tied to ggml and not only to
gguf-py.

Usage:
    pip install gguf numpy
    python3 scripts/dequant_reference.py [--out-dir tests/data/dequant] [--ggml-lib DIR]
    python3 scripts/dequant_reference.py --model M.gguf --dump-dir /tmp/dumps [--ggml-lib DIR]
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

# File stem (ggml's type name, as GgmlKind::name in quant.rs) -> type.
TYPES: dict[str, T] = {
    "f32": T.F32,
    "f16": T.F16,
    "bf16": T.BF16,
    "q4_0": T.Q4_0,
    "q4_1": T.Q4_1,
    "q8_0": T.Q8_0,
    "q4_K": T.Q4_K,
    "q5_K": T.Q5_K,
    "q6_K": T.Q6_K,
    # Added later: last, so the earlier types' random draws (and files) stay the same.
    "q5_0": T.Q5_0,
    "q5_1": T.Q5_1,
}

# Byte offsets of the f16 scale fields inside one block, per type.
F16_FIELDS: dict[T, tuple[int, ...]] = {
    T.Q4_0: (0,),
    T.Q4_1: (0, 2),
    T.Q5_0: (0,),
    T.Q5_1: (0, 2),
    T.Q8_0: (0,),
    T.Q4_K: (0, 2),
    T.Q5_K: (0, 2),
    T.Q6_K: (208,),
}

# gguf-py has quantize() for these.
QUANTIZABLE = {T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0}


def random_blocks(rng: np.random.Generator, qtype: T, n_blocks: int) -> np.ndarray:
    """`n_blocks` blocks of random bytes, with finite f16 scale fields."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if qtype == T.F32:
        vals = rng.normal(0, 10, n_blocks).astype(np.float32)
        return vals.view(np.uint8).reshape(n_blocks, 4)
    if qtype == T.F16:
        bits = rng.integers(0, 1 << 16, n_blocks, dtype=np.uint16)
        bits[(bits & 0x7C00) == 0x7C00] &= 0xBFFF  # no inf/NaN: clear an exponent bit
        return bits.view(np.uint8).reshape(n_blocks, 2)
    if qtype == T.BF16:
        bits = rng.integers(0, 1 << 16, n_blocks, dtype=np.uint16)
        bits[(bits & 0x7F80) == 0x7F80] &= 0xBFFF
        return bits.view(np.uint8).reshape(n_blocks, 2)
    blocks = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        # Scales of either sign over a wide range, subnormals and zero included.
        scale = rng.normal(0, 1, n_blocks) * np.exp2(rng.integers(-20, 8, n_blocks))
        scale[0] = 0.0
        blocks[:, off : off + 2] = scale.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return blocks


def quantized_blocks(rng: np.random.Generator, qtype: T, n_blocks: int) -> np.ndarray:
    """Blocks made by gguf-py's quantizer from random normal rows."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    x = (rng.normal(0, 1, (n_blocks, block_size)) * rng.uniform(0.01, 4, (n_blocks, 1))).astype(np.float32)
    if block_size > 1:
        x[0] = 0.0  # an all-zero block (d = 0)
    q = gguf.quants.quantize(x, qtype)
    return np.ascontiguousarray(q).view(np.uint8).reshape(n_blocks, type_size)


def reference(blocks: np.ndarray, qtype: T) -> np.ndarray:
    out = gguf.quants.dequantize(blocks, qtype)
    return np.ascontiguousarray(out, dtype=np.float32).reshape(-1)


class Ggml:
    """ggml's C dequantizers (`ggml_get_type_traits(type)->to_float`) via ctypes."""

    class Traits(ctypes.Structure):
        _fields_ = [
            ("type_name", ctypes.c_char_p),
            ("blck_size", ctypes.c_int64),
            ("blck_size_interleave", ctypes.c_int64),
            ("type_size", ctypes.c_size_t),
            ("is_quantized", ctypes.c_bool),
            ("to_float", ctypes.c_void_p),
            ("from_float_ref", ctypes.c_void_p),
        ]

    TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)

    def __init__(self, lib_dir: str):
        self.lib = ctypes.CDLL(str(Path(lib_dir) / "libggml-base.so"))
        self.lib.ggml_get_type_traits.restype = ctypes.POINTER(Ggml.Traits)
        self.lib.ggml_get_type_traits.argtypes = [ctypes.c_int]

    def dequantize(self, raw: np.ndarray, qtype: T) -> np.ndarray:
        traits = self.lib.ggml_get_type_traits(int(qtype)).contents
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        assert (traits.blck_size, traits.type_size) == (block_size, type_size), qtype.name
        raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
        n = raw.size // type_size * block_size
        if qtype == T.F32:
            return raw.view(np.float32).copy()
        out = np.empty(n, dtype=np.float32)
        Ggml.TO_FLOAT(traits.to_float)(raw.ctypes.data, out.ctypes.data, n)
        return out


def check_against_ggml(ggml: Ggml | None, raw: np.ndarray, qtype: T, ref: np.ndarray, what: str) -> None:
    if ggml is None:
        return
    c = ggml.dequantize(raw, qtype)
    same = c.view(np.uint32) == ref.view(np.uint32)
    if not same.all():
        i = int(np.argmin(same))
        sys.exit(f"{what}: gguf-py and ggml differ at element {i}: {ref[i]} vs {c[i]}")


def write_test_vectors(out_dir: Path, ggml: Ggml | None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240607)
    total = 0
    for stem, qtype in TYPES.items():
        block_size, _ = GGML_QUANT_SIZES[qtype]
        # ~512-2048 values per type: a few blocks of each kind.
        n_blocks = {1: 512, 32: 32, 256: 8}[block_size]
        parts = [random_blocks(rng, qtype, n_blocks)]
        if qtype in QUANTIZABLE:
            parts.append(quantized_blocks(rng, qtype, n_blocks))
        raw = np.concatenate(parts, axis=0)
        ref = reference(raw, qtype)
        assert np.isfinite(ref).all(), stem
        check_against_ggml(ggml, raw, qtype, ref, stem)
        (out_dir / f"{stem}.bin").write_bytes(raw.tobytes())
        (out_dir / f"{stem}.f32").write_bytes(ref.astype("<f4").tobytes())
        size = raw.nbytes + ref.nbytes
        total += size
        print(f"{stem:5} {raw.shape[0]:4} blocks  {ref.size:5} values  {size:6} bytes")
    print(f"wrote {out_dir} ({total} bytes){' (checked against ggml)' if ggml else ''}")


def dump_model(model: Path, dump_dir: Path, ggml: Ggml | None) -> None:
    dump_dir.mkdir(parents=True, exist_ok=True)
    reader = gguf.GGUFReader(model)
    counts: dict[str, int] = {}
    for t in reader.tensors:
        qtype = T(t.tensor_type)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
        ref = reference(t.data, qtype)
        assert ref.size == t.n_elements, t.name
        check_against_ggml(ggml, np.asarray(t.data).view(np.uint8), qtype, ref, t.name)
        (dump_dir / f"{t.name}.f32").write_bytes(ref.astype("<f4").tobytes())
    print(f"{model}: {len(reader.tensors)} tensors {counts} -> {dump_dir}"
          f"{' (gguf-py == ggml on every tensor)' if ggml else ''}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parent.parent
    ap.add_argument("--out-dir", type=Path, default=root / "tests" / "data" / "dequant")
    ap.add_argument("--model", type=Path, help="GGUF file to dump instead of writing test vectors")
    ap.add_argument("--dump-dir", type=Path, help="where --model's tensors go (<name>.f32)")
    ap.add_argument("--ggml-lib", help="folder with libggml-base.so: also check against ggml's C dequantizers")
    args = ap.parse_args()
    ggml = Ggml(args.ggml_lib) if args.ggml_lib else None
    if args.model:
        if not args.dump_dir:
            ap.error("--model needs --dump-dir")
        dump_model(args.model, args.dump_dir, ggml)
    else:
        write_test_vectors(args.out_dir, ggml)


if __name__ == "__main__":
    main()
