//! Dequantization of GGML tensor data to `f32`.
//!
//! # What
//!
//! [`dequantize`] turns the raw bytes of one GGUF tensor into `f32` values,
//! for the element types that llama.cpp's converters and quantizers write
//! for Llama-family models ([`GgmlKind`]): the plain floats F32, F16 and
//! BF16; the 32-element block quants Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0; and the
//! 256-element "K-quant" super-blocks Q4_K, Q5_K and Q6_K.
//!
//! # How
//!
//! A tensor is a run of blocks; each block of [`GgmlKind::type_size`] bytes
//! decodes to [`GgmlKind::block_size`] consecutive values (row-major, a row
//! never shares a block with the next one, so the flat order is the tensor's
//! order). The layouts, little-endian, `f16` meaning an IEEE half:
//!
//! ```text
//! Q4_0   18 B / 32:  d: f16, qs: [u8; 16]      x[j] = (lo(qs[j]) - 8) * d,  x[j+16] = (hi(qs[j]) - 8) * d
//! Q4_1   20 B / 32:  d: f16, m: f16, qs: [u8; 16]   x[j] = lo(qs[j]) * d + m, x[j+16] = hi(qs[j]) * d + m
//! Q5_0   22 B / 32:  d: f16, qh: u32, qs: [u8; 16]  as Q4_0 with bit j of qh as bit 4 of value j, offset 16
//! Q5_1   24 B / 32:  d: f16, m: f16, qh: u32, qs: [u8; 16]  as Q4_1 with the fifth bit from qh
//! Q8_0   34 B / 32:  d: f16, qs: [i8; 32]       x[j] = qs[j] * d
//! Q4_K  144 B / 256: d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]
//! Q5_K  176 B / 256: d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]
//! Q6_K  210 B / 256: ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16
//! ```
//!
//! * Q4_K / Q5_K: 8 sub-blocks of 32 values, each with a 6-bit scale `sc`
//!   and a 6-bit min `m` packed into `scales` (bytes 0..4 hold the low 6
//!   bits of the scales of sub-blocks 0..4, bytes 4..8 those of the mins,
//!   bytes 8..12 the low nibbles of sub-blocks 4..8's scale (low nibble) and
//!   min (high nibble), whose top 2 bits sit in the top 2 bits of bytes
//!   0..8). Value = `(d * sc) * q - (dmin * m)`. Each 32 bytes of `qs`
//!   serve two sub-blocks: low nibbles the first, high nibbles the second.
//!   Q5_K adds a fifth bit: bit `s` of `qh[l]` for value `l` of sub-block `s`.
//! * Q6_K: 16 sub-blocks of 16 values with a signed 8-bit scale each;
//!   value = `(d * scale) * (q - 32)` where `q` is 4 bits from `ql` plus 2
//!   bits from `qh`. Each half (128 values) uses 64 bytes of `ql` (low
//!   nibbles then high nibbles) and 32 bytes of `qh` (2 bits per quarter).
//!
//! The arithmetic is done in `f32` in the same order as ggml's reference
//! `dequantize_row_*` in `ggml-quants.c` (and gguf-py's numpy port), with no
//! fused multiply-add, so results are bit-identical to both (the tests check
//! this against files written by `scripts/dequant_reference.py`).
//!
//! Tensors of at least [`PARALLEL_MIN_ELEMENTS`] values are split into
//! groups of whole blocks and decoded on the rayon pool.
//!
//! # Limits
//!
//! * Only the types in [`GgmlKind`]; any other ggml type id is
//!   [`QuantError::UnsupportedType`] (see [`dequantize_id`]).
//! * Input is validated, never trusted: a byte length that does not match
//!   the element count, or an element count that is not whole blocks, is an
//!   error. Any bytes of the right length decode (NaN/inf scales give NaN/inf
//!   values, as in ggml).

use std::fmt;

use half::{bf16, f16};
use rayon::prelude::*;

/// Smallest element count that is dequantized on the rayon pool; smaller
/// tensors (norms, biases, test blocks) are decoded on the calling thread.
pub const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;

/// Values per rayon task: enough to amortise the task overhead, small
/// enough to balance a 50k x 576 embedding over many cores.
const VALUES_PER_TASK: usize = 1 << 14;

/// Values per K-quant super-block (`QK_K` in ggml).
const QK_K: usize = 256;

/// The ggml tensor element types this module can dequantize.
///
/// A subset of ggml's `enum ggml_type`; [`GgmlKind::id`] is the id stored in
/// GGUF tensor descriptions.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlKind {
    /// 32-bit IEEE float (id 0).
    F32,
    /// 16-bit IEEE half float (id 1).
    F16,
    /// bfloat16: the top 16 bits of an `f32` (id 30).
    BF16,
    /// 4-bit, one `f16` scale per 32 values, offset 8 (id 2).
    Q4_0,
    /// 4-bit, `f16` scale and min per 32 values (id 3).
    Q4_1,
    /// 5-bit, one `f16` scale per 32 values, offset 16 (id 6).
    Q5_0,
    /// 5-bit, `f16` scale and min per 32 values (id 7).
    Q5_1,
    /// 8-bit signed, one `f16` scale per 32 values (id 8).
    Q8_0,
    /// K-quant 4-bit: 256-value super-blocks, 6-bit sub-block scales and mins (id 12).
    Q4_K,
    /// K-quant 5-bit: as [`GgmlKind::Q4_K`] plus one high bit per value (id 13).
    Q5_K,
    /// K-quant 6-bit: 256-value super-blocks, 8-bit scales per 16 values (id 14).
    Q6_K,
}

impl GgmlKind {
    /// Every supported kind, in ggml id order.
    pub const ALL: [GgmlKind; 11] = [
        GgmlKind::F32,
        GgmlKind::F16,
        GgmlKind::Q4_0,
        GgmlKind::Q4_1,
        GgmlKind::Q5_0,
        GgmlKind::Q5_1,
        GgmlKind::Q8_0,
        GgmlKind::Q4_K,
        GgmlKind::Q5_K,
        GgmlKind::Q6_K,
        GgmlKind::BF16,
    ];

    /// The kind for a ggml type id, `None` for ids this module cannot decode.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlKind::F32,
            1 => GgmlKind::F16,
            2 => GgmlKind::Q4_0,
            3 => GgmlKind::Q4_1,
            6 => GgmlKind::Q5_0,
            7 => GgmlKind::Q5_1,
            8 => GgmlKind::Q8_0,
            12 => GgmlKind::Q4_K,
            13 => GgmlKind::Q5_K,
            14 => GgmlKind::Q6_K,
            30 => GgmlKind::BF16,
            _ => return None,
        })
    }

    /// The ggml type id (as stored in a GGUF tensor description).
    pub fn id(self) -> u32 {
        match self {
            GgmlKind::F32 => 0,
            GgmlKind::F16 => 1,
            GgmlKind::Q4_0 => 2,
            GgmlKind::Q4_1 => 3,
            GgmlKind::Q5_0 => 6,
            GgmlKind::Q5_1 => 7,
            GgmlKind::Q8_0 => 8,
            GgmlKind::Q4_K => 12,
            GgmlKind::Q5_K => 13,
            GgmlKind::Q6_K => 14,
            GgmlKind::BF16 => 30,
        }
    }

    /// The ggml name (`"f32"`, `"q4_0"`, `"q4_K"`...).
    pub fn name(self) -> &'static str {
        match self {
            GgmlKind::F32 => "f32",
            GgmlKind::F16 => "f16",
            GgmlKind::BF16 => "bf16",
            GgmlKind::Q4_0 => "q4_0",
            GgmlKind::Q4_1 => "q4_1",
            GgmlKind::Q5_0 => "q5_0",
            GgmlKind::Q5_1 => "q5_1",
            GgmlKind::Q8_0 => "q8_0",
            GgmlKind::Q4_K => "q4_K",
            GgmlKind::Q5_K => "q5_K",
            GgmlKind::Q6_K => "q6_K",
        }
    }

    /// Values per block (1 for the plain float types).
    pub fn block_size(self) -> usize {
        match self {
            GgmlKind::F32 | GgmlKind::F16 | GgmlKind::BF16 => 1,
            GgmlKind::Q4_0 | GgmlKind::Q4_1 | GgmlKind::Q5_0 | GgmlKind::Q5_1 | GgmlKind::Q8_0 => 32,
            GgmlKind::Q4_K | GgmlKind::Q5_K | GgmlKind::Q6_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            GgmlKind::F32 => 4,
            GgmlKind::F16 | GgmlKind::BF16 => 2,
            GgmlKind::Q4_0 => 18,
            GgmlKind::Q4_1 => 20,
            GgmlKind::Q5_0 => 22,
            GgmlKind::Q5_1 => 24,
            GgmlKind::Q8_0 => 34,
            GgmlKind::Q4_K => 144,
            GgmlKind::Q5_K => 176,
            GgmlKind::Q6_K => 210,
        }
    }

    /// Bytes that `n_elements` values of this kind take.
    ///
    /// Errors when `n_elements` is not whole blocks or the size overflows `usize`.
    pub fn byte_len(self, n_elements: usize) -> Result<usize, QuantError> {
        let block_size = self.block_size();
        if !n_elements.is_multiple_of(block_size) {
            return Err(QuantError::NotBlockMultiple { kind: self, n_elements, block_size });
        }
        (n_elements / block_size).checked_mul(self.type_size()).ok_or(QuantError::TooLarge { kind: self, n_elements })
    }

    /// The block decoder: reads one block of `type_size()` bytes, writes
    /// `block_size()` values.
    fn decoder(self) -> fn(&[u8], &mut [f32]) {
        match self {
            GgmlKind::F32 => block_f32,
            GgmlKind::F16 => block_f16,
            GgmlKind::BF16 => block_bf16,
            GgmlKind::Q4_0 => block_q4_0,
            GgmlKind::Q4_1 => block_q4_1,
            GgmlKind::Q5_0 => block_q5_0,
            GgmlKind::Q5_1 => block_q5_1,
            GgmlKind::Q8_0 => block_q8_0,
            GgmlKind::Q4_K => block_q4_k,
            GgmlKind::Q5_K => block_q5_k,
            GgmlKind::Q6_K => block_q6_k,
        }
    }
}

impl fmt::Display for GgmlKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<u32> for GgmlKind {
    type Error = QuantError;

    fn try_from(id: u32) -> Result<Self, QuantError> {
        GgmlKind::from_id(id).ok_or(QuantError::UnsupportedType { id })
    }
}

/// Why a tensor could not be dequantized (or quantized).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    /// The ggml type id is not one of [`GgmlKind`].
    #[error("cannot dequantize ggml type id {id}: supported are f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q4_K, q5_K, q6_K")]
    UnsupportedType {
        /// The ggml type id.
        id: u32,
    },
    /// The element count does not split into whole blocks.
    #[error("{kind}: {n_elements} elements is not a multiple of the block size {block_size}")]
    NotBlockMultiple {
        /// The element type.
        kind: GgmlKind,
        /// Elements asked for.
        n_elements: usize,
        /// Elements per block of `kind`.
        block_size: usize,
    },
    /// The data is not exactly as long as the element count needs.
    #[error("{kind}: {n_elements} elements take {expected} bytes, but the data has {actual}")]
    ByteLength {
        /// The element type.
        kind: GgmlKind,
        /// Elements asked for.
        n_elements: usize,
        /// Bytes that `n_elements` of `kind` take.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// A row length that is not a positive multiple of the block size (only
    /// [`quantize`](super::quantize::quantize) has rows).
    #[error("{kind}: rows of {row_len} values do not split into blocks of {block_size}")]
    RowLength {
        /// The element type.
        kind: GgmlKind,
        /// Values per row asked for.
        row_len: usize,
        /// Elements per block of `kind`.
        block_size: usize,
    },
    /// The values to quantize are not whole rows.
    #[error("{kind}: {n_values} values are not whole rows of {row_len}")]
    PartialRow {
        /// The element type.
        kind: GgmlKind,
        /// Values given.
        n_values: usize,
        /// Values per row.
        row_len: usize,
    },
    /// A NaN or infinite value given to a block quantizer.
    #[error("{kind}: value {index} is NaN or infinite; only f32, f16 and bf16 can store it")]
    NonFinite {
        /// The element type.
        kind: GgmlKind,
        /// Position of the first such value in the input.
        index: usize,
    },
    /// The byte size of the tensor does not fit in `usize`.
    #[error("{kind}: {n_elements} elements is too large a tensor")]
    TooLarge {
        /// The element type.
        kind: GgmlKind,
        /// Elements asked for.
        n_elements: usize,
    },
}

/// Dequantizes `n_elements` values of type `ty` from `data` to `f32`.
///
/// `data` must be exactly [`GgmlKind::byte_len`]`(n_elements)` bytes.
/// Large tensors are decoded in parallel (see [`PARALLEL_MIN_ELEMENTS`]).
pub fn dequantize(ty: GgmlKind, data: &[u8], n_elements: usize) -> Result<Vec<f32>, QuantError> {
    check_len(ty, data, n_elements)?;
    let mut out = vec![0.0f32; n_elements];
    decode(ty, data, &mut out);
    Ok(out)
}

/// Like [`dequantize`], but writes into `out`; the element count is `out.len()`.
///
/// For callers that reuse a buffer (e.g. one layer at a time).
pub fn dequantize_into(ty: GgmlKind, data: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    check_len(ty, data, out.len())?;
    decode(ty, data, out);
    Ok(())
}

/// Like [`dequantize`], for a raw ggml type id as read from a GGUF tensor
/// description; ids outside [`GgmlKind`] give [`QuantError::UnsupportedType`].
pub fn dequantize_id(type_id: u32, data: &[u8], n_elements: usize) -> Result<Vec<f32>, QuantError> {
    dequantize(GgmlKind::try_from(type_id)?, data, n_elements)
}

fn check_len(ty: GgmlKind, data: &[u8], n_elements: usize) -> Result<(), QuantError> {
    let expected = ty.byte_len(n_elements)?;
    if data.len() != expected {
        return Err(QuantError::ByteLength { kind: ty, n_elements, expected, actual: data.len() });
    }
    Ok(())
}

/// Decodes whole blocks; the caller has checked that `data` holds exactly
/// `out.len() / block_size` blocks.
fn decode(ty: GgmlKind, data: &[u8], out: &mut [f32]) {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    let block = ty.decoder();
    let serial = |data: &[u8], out: &mut [f32]| {
        for (src, dst) in data.chunks_exact(ts).zip(out.chunks_exact_mut(bs)) {
            block(src, dst);
        }
    };
    if out.len() < PARALLEL_MIN_ELEMENTS {
        serial(data, out);
        return;
    }
    let blocks_per_task = (VALUES_PER_TASK / bs).max(1);
    data.par_chunks(blocks_per_task * ts).zip(out.par_chunks_mut(blocks_per_task * bs)).for_each(|(src, dst)| serial(src, dst));
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn block_f32(b: &[u8], y: &mut [f32]) {
    y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
}

fn block_f16(b: &[u8], y: &mut [f32]) {
    y[0] = f16_at(b, 0);
}

fn block_bf16(b: &[u8], y: &mut [f32]) {
    y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32();
}

fn block_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    let (lo, hi) = y[..32].split_at_mut(16);
    for j in 0..16 {
        lo[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
        hi[j] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

fn block_q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    let (lo, hi) = y[..32].split_at_mut(16);
    for j in 0..16 {
        lo[j] = (qs[j] & 0x0F) as f32 * d + m;
        hi[j] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// The fifth bits of a Q5_0 / Q5_1 block: bit `j` of the little-endian
/// `u32` at `b[i..i + 4]` belongs to value `j`.
#[inline]
fn qh_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn block_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = qh_at(b, 2);
    let qs = &b[6..22];
    let (lo, hi) = y[..32].split_at_mut(16);
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        lo[j] = (((qs[j] & 0x0F) as u32 | h0) as i32 - 16) as f32 * d;
        hi[j] = (((qs[j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
    }
}

fn block_q5_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = qh_at(b, 4);
    let qs = &b[8..24];
    let (lo, hi) = y[..32].split_at_mut(16);
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        lo[j] = ((qs[j] & 0x0F) as u32 | h0) as f32 * d + m;
        hi[j] = ((qs[j] >> 4) as u32 | h1) as f32 * d + m;
    }
}

fn block_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (dst, &q) in y[..32].iter_mut().zip(&b[2..34]) {
        *dst = q as i8 as f32 * d;
    }
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes of a
/// Q4_K / Q5_K super-block (ggml's `get_scale_min_k4`).
#[inline]
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

fn block_q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    // 4 chunks of 64 values; each uses 32 bytes of qs and two sub-blocks.
    for (c, (q, out)) in qs.chunks_exact(32).zip(y[..QK_K].chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let (lo, hi) = out.split_at_mut(32);
        for l in 0..32 {
            lo[l] = d1 * (q[l] & 0x0F) as f32 - m1;
            hi[l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

fn block_q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (c, (q, out)) in qs.chunks_exact(32).zip(y[..QK_K].chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
        let (lo, hi) = out.split_at_mut(32);
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            lo[l] = d1 * ((q[l] & 0x0F) + h1) as f32 - m1;
            hi[l] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
        }
    }
}

fn block_q6_k(b: &[u8], y: &mut [f32]) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let sc = &b[192..208];
    let d = f16_at(b, 208);
    // Two halves of 128 values: 64 bytes of ql, 32 of qh, 8 scales each.
    for h in 0..2 {
        let (ql, qh, sc) = (&ql[64 * h..64 * h + 64], &qh[32 * h..32 * h + 32], &sc[8 * h..8 * h + 8]);
        let out = &mut y[128 * h..128 * h + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| d * sc[is + k] as i8 as f32;
            out[l] = s(0) * q1 as f32;
            out[l + 32] = s(2) * q2 as f32;
            out[l + 64] = s(4) * q3 as f32;
            out[l + 96] = s(6) * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    /// Packs 32 nibbles (values 0..16) the ggml way: byte j holds value j
    /// in its low nibble and value j + 16 in its high nibble.
    fn pack_nibbles_32(v: &[u8; 32]) -> [u8; 16] {
        std::array::from_fn(|j| v[j] | (v[j + 16] << 4))
    }

    #[test]
    fn ids_sizes_and_names_match_ggml() {
        for kind in GgmlKind::ALL {
            assert_eq!(GgmlKind::from_id(kind.id()), Some(kind));
            assert_eq!(GgmlKind::try_from(kind.id()), Ok(kind));
        }
        let table = [
            (0, 1, 4, "f32"),
            (1, 1, 2, "f16"),
            (2, 32, 18, "q4_0"),
            (3, 32, 20, "q4_1"),
            (6, 32, 22, "q5_0"),
            (7, 32, 24, "q5_1"),
            (8, 32, 34, "q8_0"),
            (12, 256, 144, "q4_K"),
            (13, 256, 176, "q5_K"),
            (14, 256, 210, "q6_K"),
            (30, 1, 2, "bf16"),
        ];
        for (id, bs, ts, name) in table {
            let k = GgmlKind::from_id(id).unwrap();
            assert_eq!((k.block_size(), k.type_size(), k.to_string()), (bs, ts, name.to_string()));
        }
        for id in [4, 5, 9, 10, 11, 15, 16, 31, 39, u32::MAX] {
            assert_eq!(GgmlKind::from_id(id), None);
        }
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let zeros = vec![0u8; 1000];
        assert_eq!(
            dequantize(GgmlKind::Q4_0, &zeros[..18], 31),
            Err(QuantError::NotBlockMultiple { kind: GgmlKind::Q4_0, n_elements: 31, block_size: 32 })
        );
        assert_eq!(
            dequantize(GgmlKind::Q4_0, &zeros[..17], 32),
            Err(QuantError::ByteLength { kind: GgmlKind::Q4_0, n_elements: 32, expected: 18, actual: 17 })
        );
        assert!(matches!(dequantize(GgmlKind::Q6_K, &zeros, 256), Err(QuantError::ByteLength { .. })));
        assert!(matches!(dequantize(GgmlKind::F32, &zeros[..7], 2), Err(QuantError::ByteLength { .. })));
        assert!(matches!(dequantize(GgmlKind::Q4_K, &zeros, 100), Err(QuantError::NotBlockMultiple { .. })));
        assert_eq!(
            dequantize(GgmlKind::F32, &zeros, usize::MAX),
            Err(QuantError::TooLarge { kind: GgmlKind::F32, n_elements: usize::MAX })
        );
        assert_eq!(
            dequantize(GgmlKind::Q8_0, &zeros, usize::MAX / 32 * 32),
            Err(QuantError::TooLarge { kind: GgmlKind::Q8_0, n_elements: usize::MAX / 32 * 32 })
        );
        assert_eq!(dequantize_id(10, &zeros[..84], 256), Err(QuantError::UnsupportedType { id: 10 }));
        let mut out = [0.0f32; 3];
        assert!(dequantize_into(GgmlKind::F16, &zeros[..4], &mut out).is_err());
        // Empty tensors are fine.
        for kind in GgmlKind::ALL {
            assert_eq!(dequantize(kind, &[], 0), Ok(vec![]));
        }
        // Every message names the type and the numbers.
        let msg = dequantize(GgmlKind::Q4_K, &zeros[..10], 256).unwrap_err().to_string();
        assert_eq!(msg, "q4_K: 256 elements take 144 bytes, but the data has 10");
    }

    #[test]
    fn plain_floats_decode_exactly() {
        let vals = [1.5f32, -0.0, f32::INFINITY, 3.0e-38, -65504.0];
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let got = dequantize(GgmlKind::F32, &bytes, 5).unwrap();
        assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), vals.map(f32::to_bits));

        // f16: 1.0 = 0x3c00, -2.0 = 0xc000, smallest subnormal 0x0001 = 2^-24, 65504 = 0x7bff.
        let bytes = [0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00, 0xff, 0x7b];
        assert_eq!(dequantize(GgmlKind::F16, &bytes, 4).unwrap(), vec![1.0, -2.0, 2f32.powi(-24), 65504.0]);

        // bf16 is the top half of an f32: 0x3fc0 = 1.5, 0xc100 = -8.0.
        let bytes = [0xc0, 0x3f, 0x00, 0xc1];
        assert_eq!(dequantize(GgmlKind::BF16, &bytes, 2).unwrap(), vec![1.5, -8.0]);
    }

    #[test]
    fn q4_0_block_with_known_nibbles() {
        let nib: [u8; 32] = std::array::from_fn(|i| (i % 16) as u8);
        let mut block = h(0.5).to_vec();
        block.extend(pack_nibbles_32(&nib));
        let got = dequantize(GgmlKind::Q4_0, &block, 32).unwrap();
        let want: Vec<f32> = (0..32).map(|i| ((i % 16) as f32 - 8.0) * 0.5).collect();
        assert_eq!(got, want);
        assert_eq!(got[0], -4.0);
        assert_eq!(got[31], 3.5);
    }

    #[test]
    fn q4_1_block_with_scale_and_min() {
        let nib: [u8; 32] = std::array::from_fn(|i| (31 - i) as u8 / 2);
        let mut block = h(0.25).to_vec();
        block.extend(h(-1.0));
        block.extend(pack_nibbles_32(&nib));
        let got = dequantize(GgmlKind::Q4_1, &block, 32).unwrap();
        let want: Vec<f32> = nib.iter().map(|&q| q as f32 * 0.25 - 1.0).collect();
        assert_eq!(got, want);
        assert_eq!((got[0], got[31]), (2.75, -1.0));
    }

    #[test]
    fn q5_0_and_q5_1_blocks_use_the_high_bits() {
        let q: [u8; 32] = std::array::from_fn(|i| ((i * 11 + 3) % 32) as u8);
        let nib: [u8; 32] = std::array::from_fn(|i| q[i] & 15);
        let qh = (0..32).fold(0u32, |acc, i| acc | (((q[i] >> 4) as u32) << i));
        let mut block = h(0.5).to_vec();
        block.extend(qh.to_le_bytes());
        block.extend(pack_nibbles_32(&nib));
        let got = dequantize(GgmlKind::Q5_0, &block, 32).unwrap();
        let want: Vec<f32> = q.iter().map(|&v| (v as f32 - 16.0) * 0.5).collect();
        assert_eq!(got, want);
        // i = 1: q = 14 -> -1.0; i = 2: q = 25 (high bit set) -> 4.5.
        assert_eq!((got[1], got[2]), (-1.0, 4.5));

        let mut block = h(0.25).to_vec();
        block.extend(h(-2.0));
        block.extend(qh.to_le_bytes());
        block.extend(pack_nibbles_32(&nib));
        let got = dequantize(GgmlKind::Q5_1, &block, 32).unwrap();
        let want: Vec<f32> = q.iter().map(|&v| v as f32 * 0.25 - 2.0).collect();
        assert_eq!(got, want);
        assert_eq!(got[2], 25.0 * 0.25 - 2.0);
    }

    #[test]
    fn q8_0_blocks_with_signed_values() {
        let mut data = Vec::new();
        for d in [2.0f32, -0.125] {
            data.extend(h(d));
            data.extend((0..32).map(|i: i32| (i * 8 - 128) as i8 as u8));
        }
        let got = dequantize(GgmlKind::Q8_0, &data, 64).unwrap();
        assert_eq!(&got[..3], &[-256.0, -240.0, -224.0]);
        assert_eq!(got[31], 240.0);
        assert_eq!(got[32], 16.0);
        assert_eq!(got[63], -15.0);
    }

    /// Packs 8 six-bit scales and mins into the 12 bytes of a Q4_K/Q5_K block.
    fn pack_scales_k4(sc: [u8; 8], m: [u8; 8]) -> [u8; 12] {
        let mut s = [0u8; 12];
        for j in 0..4 {
            s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            s[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
            s[j + 8] = (sc[j + 4] & 0x0F) | ((m[j + 4] & 0x0F) << 4);
        }
        s
    }

    #[test]
    fn k4_scale_packing_round_trips() {
        let sc = [1, 2, 63, 17, 48, 33, 15, 63];
        let m = [0, 5, 7, 63, 16, 62, 1, 32];
        let s = pack_scales_k4(sc, m);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &s), (sc[j], m[j]), "sub-block {j}");
        }
    }

    #[test]
    fn q4_k_block_with_hand_set_scales() {
        let sc = [1, 2, 3, 4, 40, 50, 60, 63];
        let m = [0, 1, 2, 3, 20, 30, 40, 63];
        let q: [u8; 256] = std::array::from_fn(|i| ((i * 7) % 16) as u8);
        let (d, dmin) = (0.5f32, 0.25f32);
        let mut block = h(d).to_vec();
        block.extend(h(dmin));
        block.extend(pack_scales_k4(sc, m));
        // Sub-block s lives in chunk s / 2 (32 bytes): low nibbles for even s, high for odd.
        for c in 0..4 {
            block.extend((0..32).map(|l| q[64 * c + l] | (q[64 * c + 32 + l] << 4)));
        }
        assert_eq!(block.len(), 144);
        let got = dequantize(GgmlKind::Q4_K, &block, 256).unwrap();
        let want: Vec<f32> = (0..256).map(|i| d * sc[i / 32] as f32 * q[i] as f32 - dmin * m[i / 32] as f32).collect();
        assert_eq!(got, want);
        // Spot values, computed by hand: i = 255 is sub-block 7, q = (255*7) % 16 = 9.
        assert_eq!(got[255], 0.5 * 63.0 * 9.0 - 0.25 * 63.0);
        assert_eq!(got[0], 0.0);
        assert_eq!(got[1], 0.5 * 1.0 * 7.0);
    }

    #[test]
    fn q5_k_block_uses_the_high_bit() {
        let sc = [1, 2, 3, 4, 5, 6, 7, 8];
        let m = [8, 7, 6, 5, 4, 3, 2, 1];
        let q: [u8; 256] = std::array::from_fn(|i| ((i * 13 + (i / 32) * 11 + 5) % 32) as u8);
        let (d, dmin) = (0.125f32, 1.0f32);
        let mut block = h(d).to_vec();
        block.extend(h(dmin));
        block.extend(pack_scales_k4(sc, m));
        // qh[l] bit s = high bit of value l of sub-block s.
        block.extend((0..32).map(|l| (0..8).fold(0u8, |acc, s| acc | ((q[32 * s + l] >> 4) << s))));
        for c in 0..4 {
            block.extend((0..32).map(|l| (q[64 * c + l] & 15) | ((q[64 * c + 32 + l] & 15) << 4)));
        }
        assert_eq!(block.len(), 176);
        let got = dequantize(GgmlKind::Q5_K, &block, 256).unwrap();
        let want: Vec<f32> = (0..256).map(|i| d * sc[i / 32] as f32 * q[i] as f32 - dmin * m[i / 32] as f32).collect();
        assert_eq!(got, want);
        // i = 2: q = 31 (high bit set), sub-block 0: 0.125 * 31 - 8.
        assert_eq!(got[2], 0.125 * 31.0 - 8.0);
    }

    #[test]
    fn q6_k_block_with_hand_set_scales() {
        let scales: [i8; 16] = [1, -1, 2, -2, 3, -3, 4, -4, 127, -128, 10, 20, 30, 40, 50, 60];
        let q: [u8; 256] = std::array::from_fn(|i| ((i * 5 + 3) % 64) as u8);
        let d = 0.5f32;
        // Within each half of 128: value l (0..32) and its quarter k (0..4) at l + 32 k.
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        for hf in 0..2 {
            for l in 0..32 {
                let v = |k: usize| q[128 * hf + 32 * k + l];
                ql[64 * hf + l] = (v(0) & 15) | ((v(2) & 15) << 4);
                ql[64 * hf + l + 32] = (v(1) & 15) | ((v(3) & 15) << 4);
                qh[32 * hf + l] = (v(0) >> 4) | ((v(1) >> 4) << 2) | ((v(2) >> 4) << 4) | ((v(3) >> 4) << 6);
            }
        }
        let mut block = ql.to_vec();
        block.extend(qh);
        block.extend(scales.map(|s| s as u8));
        block.extend(h(d));
        assert_eq!(block.len(), 210);
        let got = dequantize(GgmlKind::Q6_K, &block, 256).unwrap();
        let want: Vec<f32> = (0..256).map(|i| d * scales[i / 16] as f32 * (q[i] as f32 - 32.0)).collect();
        assert_eq!(got, want);
        // i = 0: q = 3, scale 1 -> 0.5 * (3 - 32); i = 144: scale -128, q = (723 % 64) = 19.
        assert_eq!(got[0], -14.5);
        assert_eq!(got[144], 0.5 * -128.0 * (19.0 - 32.0));
    }

    #[test]
    fn parallel_and_serial_paths_agree() {
        // A pseudo-random tensor large enough for the rayon path, with finite f16 scales.
        let n_blocks = 2 * PARALLEL_MIN_ELEMENTS / 256 + 3;
        for kind in GgmlKind::ALL {
            let n = n_blocks * 256;
            let mut state = 0x2545_f491_4f6c_dd1du64 ^ kind.id() as u64;
            let data: Vec<u8> = (0..kind.byte_len(n).unwrap())
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8 & 0x3b // keeps every f16/bf16/f32 finite
                })
                .collect();
            let par = dequantize(kind, &data, n).unwrap();
            let mut ser = vec![0.0; n];
            for (i, (src, dst)) in data.chunks(kind.type_size() * 64).zip(ser.chunks_mut(kind.block_size() * 64)).enumerate() {
                // Small pieces stay under the parallel threshold.
                dequantize_into(kind, src, dst).unwrap_or_else(|e| panic!("{kind} piece {i}: {e}"));
            }
            assert!(par.iter().zip(&ser).all(|(a, b)| a.to_bits() == b.to_bits()), "{kind}");
        }
    }

    fn data_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dequant")
    }

    /// `tests/data/dequant/<type>.bin` holds raw blocks and `<type>.f32` the
    /// values gguf-py's `gguf.quants.dequantize` gives for them (little-endian
    /// f32); written by `scripts/dequant_reference.py`.
    #[test]
    fn matches_gguf_py_reference_bit_for_bit() {
        let mut checked = 0;
        for kind in GgmlKind::ALL {
            let bin = data_dir().join(format!("{}.bin", kind.name()));
            let f32_path = data_dir().join(format!("{}.f32", kind.name()));
            let (Ok(raw), Ok(want)) = (std::fs::read(&bin), std::fs::read(&f32_path)) else {
                panic!("missing {} or its .f32: run scripts/dequant_reference.py", bin.display());
            };
            let want: Vec<u32> = want.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            let got = dequantize(kind, &raw, want.len()).unwrap();
            let bad = got.iter().zip(&want).position(|(g, w)| g.to_bits() != *w);
            if let Some(i) = bad {
                panic!("{kind}: element {i}: got {} want {}", got[i], f32::from_bits(want[i]));
            }
            checked += 1;
        }
        assert_eq!(checked, GgmlKind::ALL.len());
    }

    /// Dequantizes every tensor of the GGUF file named by `PIPE_TEST_GGUF`
    /// (skipped when unset). When `PIPE_TEST_GGUF_REF` names a folder of
    /// `<tensor name>.f32` dumps (see `scripts/dequant_reference.py
    /// --model`), each tensor must match its dump bit for bit.
    #[test]
    fn real_model_tensors_match_reference_dumps() {
        let Some(path) = std::env::var_os("PIPE_TEST_GGUF") else {
            eprintln!("PIPE_TEST_GGUF not set: skipping");
            return;
        };
        let ref_dir = std::env::var_os("PIPE_TEST_GGUF_REF").map(PathBuf::from);
        let file = super::super::GgufFile::open(Path::new(&path)).unwrap();
        let mut kinds = std::collections::BTreeMap::<String, usize>::new();
        let (mut max_abs_diff, mut mismatched, mut compared) = (0.0f64, 0usize, 0usize);
        for t in &file.tensors {
            let kind = GgmlKind::from_id(t.ggml_type.id()).unwrap_or_else(|| panic!("{}: {}", t.name, t.ggml_type));
            *kinds.entry(kind.name().to_string()).or_default() += 1;
            let bytes = file.tensor_bytes(t).unwrap();
            let got = dequantize(kind, &bytes, t.n_elements() as usize).unwrap();
            let Some(dir) = &ref_dir else { continue };
            let want = std::fs::read(dir.join(format!("{}.f32", t.name))).unwrap();
            assert_eq!(want.len(), got.len() * 4, "{}", t.name);
            for (g, w) in got.iter().zip(want.chunks_exact(4)) {
                let w = f32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                max_abs_diff = max_abs_diff.max((*g as f64 - w as f64).abs());
                mismatched += usize::from(g.to_bits() != w.to_bits());
            }
            compared += 1;
        }
        eprintln!(
            "{}: {} tensors, types {kinds:?}; compared {compared} with dumps: {mismatched} values differ, max abs diff {max_abs_diff}",
            path.to_string_lossy(),
            file.tensors.len()
        );
        assert_eq!(mismatched, 0);
    }
}
