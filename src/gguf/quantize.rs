//! Quantization of `f32` values to GGML tensor data, byte-identical to llama.cpp.
//!
//! # What
//!
//! [`quantize`] turns row-major `f32` values into the bytes of a GGUF tensor
//! of one [`GgmlKind`], the inverse of [`dequantize`](super::quant::dequantize).
//! The bytes are exactly those `llama-quantize` writes when it has no
//! importance matrix: it calls `ggml_quantize_chunk` (`ggml/src/ggml.c`), which
//! for every type here runs the reference quantizer `quantize_row_*_ref` of
//! `ggml/src/ggml-quants.c` (for Q4_K, Q5_K and Q6_K the `_ref` path is taken
//! exactly when `quant_weights` is null), `ggml_compute_fp32_to_fp16` for F16
//! and `ggml_compute_fp32_to_bf16` for BF16 (`ggml/src/ggml-impl.h`). Which
//! type each tensor of a file gets is [`super::ftype`]'s business.
//!
//! # How
//!
//! Every block is quantized from its own values alone (ggml keeps no state
//! across blocks), so a tensor of at least [`PARALLEL_MIN_ELEMENTS`] values is
//! cut into runs of whole blocks that are quantized on the rayon pool; the
//! bytes do not depend on the number of threads. Per type (layouts in
//! [`super::quant`]):
//!
//! 1. F16: round to nearest even, by ggml's bit trick; every NaN becomes the
//!    quiet NaN `0x7e00` with the input's sign. BF16: the top half of the
//!    `f32`, rounded to nearest even; a NaN keeps its top half with the quiet
//!    bit forced on.
//! 2. Q8_0: `d = amax / 127`, `q = round(x / d)` (halves away from zero).
//! 3. Q4_0 / Q5_0: `d = m / -8` (`/ -16`) where `m` is the value of largest
//!    magnitude, sign included, so that `m` maps to `q = 0`;
//!    `q = min(15, trunc(x / d + 8.5))` (31 and 16.5).
//! 4. Q4_1 / Q5_1: `d = (max - min) / 15` (31), stored min `m = min`,
//!    `q = trunc((x - min) / d + 0.5)`.
//! 5. Q4_K / Q5_K: per 32-value sub-block, `make_qkx2_quants` fits a scale and
//!    a min by weighted least squares (weights `|x| + rms(sub-block)`) over 21
//!    (Q5_K: 16) candidate scales. The eight scales and mins are stored as 6-bit
//!    multiples of super-block `d = max scale / 63`, `dmin = max min / 63`, and
//!    the values are requantized with the rounded scales.
//! 6. Q6_K: per 16-value sub-block, `make_qx_quants` (weights `x^2`, 19 candidate
//!    scales around `-32 / m`); 8-bit signed scales relative to
//!    `d = -(largest |scale|, signed) / 128`; values requantized against them.
//!
//! The K-quant fits are chains of dependent float additions, slow when run one
//! sub-block at a time as the C does. `make_qkx2_quants_x8` and
//! `make_qx_quants_x16` run the independent sub-blocks of a super-block
//! interleaved instead, each lane doing exactly the C's operations, which is
//! about twice as fast and SIMD-friendly. SmolLM2-135M to Q4_K_M (135M values)
//! takes about 0.8-1.2 s on 2 cores, 1.3-2.4 s on one, a little faster than
//! `llama-quantize` itself.
//!
//! # Bit-exactness
//!
//! * Each float operation is the C one, in the C order (`(w * x) * l`, not
//!   `w * (x * l)`), with no fused multiply-add: Rust never fuses, and
//!   llama.cpp compiles ggml-base without `-march` flags, so on x86-64 gcc has
//!   no FMA to fuse with. (gcc on aarch64 does fuse `a * b + c` by default, so
//!   an ARM build of llama.cpp can differ in the last bit of a K-quant scale,
//!   and then in the bytes.)
//! * ggml's `nearest_int` (add `1.5 * 2^23`, read the mantissa bits) is ported
//!   as is, including what it gives for values past its `2^22` range.
//! * C converts a float to `int8_t`/`uint8_t` through a 32-bit `cvttss2si` on
//!   x86-64, which gives `0x8000_0000` (low byte 0) for NaN and out-of-range
//!   values, where Rust's `as` saturates; `c_to_i32` does what x86-64 does.
//!   This matters when `1 / d` overflows to infinity (values below about
//!   `1e-36`), a case the tests cover.
//!
//! The tests compare against files written by
//! `scripts/quantize_reference.sh`, which runs `ggml_quantize_chunk` itself.
//!
//! # Limits
//!
//! * No importance matrix (`llama-quantize --imatrix` takes other code paths).
//! * Block types reject NaN and infinite inputs ([`QuantError::NonFinite`]):
//!   ggml's output for them depends on the CPU, and `llama-quantize` refuses
//!   most such tensors anyway ("quantized data validation failed"). F32, F16 and
//!   BF16 take any value. Finite inputs that are huge (`|x| > 65504 * 127` for
//!   Q8_0, say) give infinite f16 scales, exactly as in ggml; `llama-quantize`
//!   would reject those files too.
//! * Rows must be whole blocks: llama.cpp never quantizes a row of 576 values
//!   to a 256-value K-quant; it picks another type
//!   ([`super::ftype`]'s fallback table).

use half::f16;
use rayon::prelude::*;

use super::quant::{GgmlKind, QuantError, PARALLEL_MIN_ELEMENTS};

/// Values per K-quant super-block (`QK_K` in ggml).
const QK_K: usize = 256;

/// Values per rayon task (whole blocks of every type): a K-quant task takes
/// about a millisecond, long enough to amortise the scheduling.
const VALUES_PER_TASK: usize = 1 << 14;

/// ggml's `GROUP_MAX_EPS`: a sub-block whose largest magnitude is below this
/// is all zeros to `make_qx_quants` and Q6_K.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Quantizes `values`, rows of `row_len` values, to `kind`.
///
/// `row_len` must be a positive multiple of [`GgmlKind::block_size`] and
/// `values` whole rows. The result is [`GgmlKind::byte_len`]`(values.len())`
/// bytes, the same as `llama-quantize` writes for this data without an
/// importance matrix. Large tensors are quantized in parallel (see
/// [`PARALLEL_MIN_ELEMENTS`]), with the same result.
pub fn quantize(kind: GgmlKind, values: &[f32], row_len: usize) -> Result<Vec<u8>, QuantError> {
    check_shape(kind, values.len(), row_len)?;
    let mut out = vec![0u8; kind.byte_len(values.len())?];
    encode(kind, values, &mut out)?;
    Ok(out)
}

/// Like [`quantize`], but writes into `out`, which must be exactly
/// [`GgmlKind::byte_len`]`(values.len())` bytes. On error `out` may be
/// partly written.
pub fn quantize_into(kind: GgmlKind, values: &[f32], row_len: usize, out: &mut [u8]) -> Result<(), QuantError> {
    check_shape(kind, values.len(), row_len)?;
    let expected = kind.byte_len(values.len())?;
    if out.len() != expected {
        return Err(QuantError::ByteLength { kind, n_elements: values.len(), expected, actual: out.len() });
    }
    encode(kind, values, out)
}

fn check_shape(kind: GgmlKind, n_values: usize, row_len: usize) -> Result<(), QuantError> {
    let block_size = kind.block_size();
    if row_len == 0 || !row_len.is_multiple_of(block_size) {
        return Err(QuantError::RowLength { kind, row_len, block_size });
    }
    if !n_values.is_multiple_of(row_len) {
        return Err(QuantError::PartialRow { kind, n_values, row_len });
    }
    Ok(())
}

/// Quantizes whole blocks; the caller has checked the lengths.
///
/// Block types first check their values for NaN and infinities, each task
/// its own run, so the check costs no extra pass over memory; the error names
/// the first bad value whatever the order the tasks ran in.
fn encode(kind: GgmlKind, values: &[f32], out: &mut [u8]) -> Result<(), QuantError> {
    let check = !matches!(kind, GgmlKind::F32 | GgmlKind::F16 | GgmlKind::BF16);
    let (bs, ts) = (kind.block_size(), kind.type_size());
    let run = encoder(kind);
    let task = |start: usize, src: &[f32], dst: &mut [u8]| -> Result<(), QuantError> {
        if check && !all_finite(src) {
            let i = src.iter().position(|v| !v.is_finite()).expect("a value is not finite");
            return Err(QuantError::NonFinite { kind, index: start + i });
        }
        run(src, dst);
        Ok(())
    };
    if values.len() < PARALLEL_MIN_ELEMENTS {
        return task(0, values, out);
    }
    let blocks_per_task = (VALUES_PER_TASK / bs).max(1);
    let first_error = values
        .par_chunks(blocks_per_task * bs)
        .zip(out.par_chunks_mut(blocks_per_task * ts))
        .enumerate()
        .filter_map(|(i, (src, dst))| task(i * blocks_per_task * bs, src, dst).err())
        .min_by_key(|e| match e {
            QuantError::NonFinite { index, .. } => *index,
            _ => usize::MAX,
        });
    first_error.map_or(Ok(()), Err)
}

/// Whether every value is finite. No early exit and integer maxima of the exponent bits, so
/// the compiler checks a whole vector register of values per instruction (a `position` search
/// stops to test each value and was a fifth of a Q8_0 export's time).
fn all_finite(x: &[f32]) -> bool {
    const EXP: u32 = 0x7f80_0000;
    x.chunks(1024).all(|c| c.iter().fold(0u32, |m, v| m.max(v.to_bits() & EXP)) != EXP)
}

/// The run encoder: quantizes `n` whole blocks of values into `n` blocks of
/// bytes (`n * block_size()` values, `n * type_size()` bytes).
fn encoder(kind: GgmlKind) -> fn(&[f32], &mut [u8]) {
    match kind {
        GgmlKind::F32 => run_f32,
        GgmlKind::F16 => run_f16,
        GgmlKind::BF16 => run_bf16,
        GgmlKind::Q4_0 => run_q4_0,
        GgmlKind::Q4_1 => run_q4_1,
        GgmlKind::Q5_0 => run_q5_0,
        GgmlKind::Q5_1 => run_q5_1,
        GgmlKind::Q8_0 => run_q8_0,
        GgmlKind::Q4_K => run_q4_k,
        GgmlKind::Q5_K => run_q5_k,
        GgmlKind::Q6_K => run_q6_k,
    }
}

// ---------------------------------------------------------------------------
// Scalar helpers, ported from ggml.

/// ggml's `ggml_compute_fp32_to_fp16`: round to nearest even (overflow to
/// infinity), NaN to `0x7e00` with the sign kept.
pub fn fp32_to_fp16(f: f32) -> u16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 2^112
    let scale_to_zero = f32::from_bits(0x0880_0000); // 2^-110
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;
    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let bias = (shl1_w & 0xFF00_0000).max(0x7100_0000);
    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7C00;
    let mantissa_bits = bits & 0x0000_0FFF;
    let nonsign = exp_bits + mantissa_bits;
    ((sign >> 16) | if shl1_w > 0xFF00_0000 { 0x7E00 } else { nonsign }) as u16
}

/// ggml's `ggml_compute_fp32_to_bf16`: round to nearest even; a NaN keeps
/// its top 16 bits with the quiet bit set.
pub fn fp32_to_bf16(f: f32) -> u16 {
    let u = f.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// `GGML_FP16_TO_FP32` (exact).
#[inline]
fn fp16_to_fp32(h: u16) -> f32 {
    f16::from_bits(h).to_f32()
}

/// ggml's `nearest_int`: round to nearest (ties to even) through the float
/// adder, valid for `|x| <= 2^22`; outside that range (or for NaN) it gives
/// what the C gives.
#[inline]
fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0; // 1.5 * 2^23
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// A C `float -> int` conversion as x86-64 does it (`cvttss2si`): truncation
/// toward zero, and `i32::MIN` for NaN and values out of range, where Rust's
/// `as` would saturate. ggml narrows the result to 8 bits (`as i8` / `as u8`,
/// which keep the low byte, as C does).
#[inline]
fn c_to_i32(x: f32) -> i32 {
    if x.is_nan() || !(-2_147_483_648.0..2_147_483_648.0).contains(&x) {
        i32::MIN
    } else {
        x as i32
    }
}

/// `roundf` (halves away from zero) then [`c_to_i32`], without the libm
/// call `f32::round` makes on baseline x86-64.
#[inline]
fn c_round_to_i32(x: f32) -> i32 {
    if x.is_nan() || !(-2_147_483_648.0..2_147_483_648.0).contains(&x) {
        return i32::MIN;
    }
    let t = x as i32;
    // Exact: below 2^24 the difference of x and its truncation is exact
    // (Sterbenz), above it x is an integer.
    let frac = x - t as f32;
    if frac >= 0.5 {
        t + 1
    } else if frac <= -0.5 {
        t - 1
    } else {
        t
    }
}

/// ggml's `MAX(a, b)` for floats: `a > b ? a : b` (so NaN in `a` loses).
#[inline]
fn c_max(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

#[inline]
fn put_f16(dst: &mut [u8], at: usize, x: f32) {
    dst[at..at + 2].copy_from_slice(&fp32_to_fp16(x).to_le_bytes());
}

// ---------------------------------------------------------------------------
// Plain floats.

fn run_f32(x: &[f32], y: &mut [u8]) {
    for (v, dst) in x.iter().zip(y.chunks_exact_mut(4)) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
}

fn run_f16(x: &[f32], y: &mut [u8]) {
    for (&v, dst) in x.iter().zip(y.chunks_exact_mut(2)) {
        dst.copy_from_slice(&fp32_to_fp16(v).to_le_bytes());
    }
}

fn run_bf16(x: &[f32], y: &mut [u8]) {
    for (&v, dst) in x.iter().zip(y.chunks_exact_mut(2)) {
        dst.copy_from_slice(&fp32_to_bf16(v).to_le_bytes());
    }
}

// ---------------------------------------------------------------------------
// 32-value block types (`quantize_row_q{4_0,4_1,5_0,5_1,8_0}_ref`).

/// The value of largest magnitude, sign included (the first of equals).
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// The `min` and `max` of a block, as `quantize_row_q4_1_ref` finds them.
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// `d ? 1.0f/d : 0.0f`.
#[inline]
fn inverse_or_zero(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

fn run_q4_0(x: &[f32], y: &mut [u8]) {
    for (x, y) in x.chunks_exact(32).zip(y.chunks_exact_mut(18)) {
        let d = signed_absmax(x) / -8.0;
        let id = inverse_or_zero(d);
        put_f16(y, 0, d);
        for j in 0..16 {
            // MIN(15, (int8_t)(x * id + 8.5f)), stored as uint8_t.
            let q0 = (c_to_i32(x[j] * id + 8.5) as i8 as i32).min(15) as u8;
            let q1 = (c_to_i32(x[j + 16] * id + 8.5) as i8 as i32).min(15) as u8;
            y[2 + j] = q0 | (q1 << 4);
        }
    }
}

fn run_q4_1(x: &[f32], y: &mut [u8]) {
    for (x, y) in x.chunks_exact(32).zip(y.chunks_exact_mut(20)) {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = inverse_or_zero(d);
        put_f16(y, 0, d);
        put_f16(y, 2, min);
        for j in 0..16 {
            let q0 = (c_to_i32((x[j] - min) * id + 0.5) as i8 as i32).min(15) as u8;
            let q1 = (c_to_i32((x[j + 16] - min) * id + 0.5) as i8 as i32).min(15) as u8;
            y[4 + j] = q0 | (q1 << 4);
        }
    }
}

fn run_q5_0(x: &[f32], y: &mut [u8]) {
    for (x, y) in x.chunks_exact(32).zip(y.chunks_exact_mut(22)) {
        let d = signed_absmax(x) / -16.0;
        let id = inverse_or_zero(d);
        put_f16(y, 0, d);
        let mut qh = 0u32;
        for j in 0..16 {
            let q0 = (c_to_i32(x[j] * id + 16.5) as i8 as i32).min(31) as u8;
            let q1 = (c_to_i32(x[j + 16] * id + 16.5) as i8 as i32).min(31) as u8;
            y[6 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + 16);
        }
        y[2..6].copy_from_slice(&qh.to_le_bytes());
    }
}

fn run_q5_1(x: &[f32], y: &mut [u8]) {
    for (x, y) in x.chunks_exact(32).zip(y.chunks_exact_mut(24)) {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = inverse_or_zero(d);
        put_f16(y, 0, d);
        put_f16(y, 2, min);
        let mut qh = 0u32;
        for j in 0..16 {
            // (uint8_t)(x + 0.5f): no clamp in the reference.
            let q0 = c_to_i32((x[j] - min) * id + 0.5) as u8;
            let q1 = c_to_i32((x[j + 16] - min) * id + 0.5) as u8;
            y[8 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + 16);
        }
        y[4..8].copy_from_slice(&qh.to_le_bytes());
    }
}

/// `fold(0, |m, v| c_max(m, |v|))` over a block, as ggml computes `amax`, as an integer
/// maximum of the magnitudes' bits, which vectorizes (a float `max` chain does not, and
/// `f32::max` has NaN rules of its own). For floats `>= +0` the order of the bits is the order
/// of the values, so without a NaN this is the C's result, bit for bit. A NaN's bits are above
/// infinity's; with one, the C's result depends on where it stands, so such a block takes the
/// C's chain.
fn abs_max(x: &[f32]) -> f32 {
    let m = x.iter().fold(0i32, |m, v| m.max((v.to_bits() & 0x7fff_ffff) as i32));
    if m > f32::INFINITY.to_bits() as i32 {
        return x.iter().fold(0.0f32, |m, v| c_max(m, v.abs()));
    }
    f32::from_bits(m as u32)
}

fn run_q8_0(x: &[f32], y: &mut [u8]) {
    for (x, y) in x.chunks_exact(32).zip(y.chunks_exact_mut(34)) {
        let amax = abs_max(x);
        let d = amax / 127.0;
        let id = inverse_or_zero(d);
        put_f16(y, 0, d);
        if amax.is_finite() && id.is_finite() {
            // |v * id| <= 127 (about), so the range checks of `c_round_to_i32` cannot trigger:
            // the same rounding without branches, which the compiler vectorizes (SSE2
            // truncation and compares; `f32::round` would be a libm call per value).
            for (q, &v) in y[2..34].iter_mut().zip(x) {
                let s = v * id;
                // SAFETY: |v| <= amax and id is finite, so id = 1 / (amax / 127) and
                // |s| <= 127 * (1 + 2^-20) (a subnormal amax / 127 is at worst 2^-21 off, or id
                // is infinite): in i32 range. Unlike the saturating `as`, this compiles to
                // vector truncation (cvttps2dq).
                let t: i32 = unsafe { s.to_int_unchecked() };
                let frac = s - t as f32;
                *q = (t + i32::from(frac >= 0.5) - i32::from(frac <= -0.5)) as u8;
            }
        } else {
            for (q, &v) in y[2..34].iter_mut().zip(x) {
                *q = c_round_to_i32(v * id) as u8;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// K-quants (`quantize_row_q{4,5,6}_K_ref` and their helpers).

/// ggml's `make_qkx2_quants` (`n = 32`, `use_mad = false`) on eight
/// sub-blocks at once: lane `j` of `x[i][j]` is value `i` of sub-block `j`.
///
/// Per sub-block it fits `x ~ scale * L - min_out` with `L` in `0..=nmax`,
/// trying the scales `(nmax + rmin + rdelta * is) / (max - min)` for `is` in
/// `0..=nstep` and keeping the one of least weighted squared error; a kept fit
/// also moves `min`, which the next tries start from. Returns `(scale,
/// min_out, L)` per lane.
///
/// Every lane does exactly the C's float operations in the C's order (the
/// sums run over `i` as in the C); only the eight independent problems are
/// interleaved, which turns the C's latency-bound chains of dependent adds
/// into eight parallel ones (and lets the compiler use SIMD across lanes).
/// The test `lane_helpers_equal_the_direct_ports` checks it against a
/// line-by-line port.
fn make_qkx2_quants_x8(
    nmax: i32,
    x: &[[f32; 8]; 32],
    w: &[[f32; 8]; 32],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> ([f32; 8], [f32; 8], [[u8; 8]; 32]) {
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x: [f32; 8] = std::array::from_fn(|j| sum_w[j] * x[0][j]);
    for i in 1..32 {
        for j in 0..8 {
            if x[i][j] < min[j] {
                min[j] = x[i][j];
            }
            if x[i][j] > max[j] {
                max[j] = x[i][j];
            }
            sum_w[j] += w[i][j];
            sum_x[j] += w[i][j] * x[i][j];
        }
    }
    for m in &mut min {
        if *m > 0.0 {
            *m = 0.0;
        }
    }
    // A constant sub-block (max == min) returns at once in the C: L = 0, scale 0.
    let live: [bool; 8] = std::array::from_fn(|j| max[j] != min[j]);
    let nmax_f = nmax as f32;
    let level = |iscale: f32, v: f32, min: f32| nearest_int(iscale * (v - min)).clamp(0, nmax) as f32;

    let iscale: [f32; 8] = std::array::from_fn(|j| nmax_f / (max[j] - min[j]));
    let mut scale: [f32; 8] = std::array::from_fn(|j| 1.0 / iscale[j]);
    let mut best_error = [0.0f32; 8];
    let mut l = [[0.0f32; 8]; 32];
    for i in 0..32 {
        for j in 0..8 {
            let q = level(iscale[j], x[i][j], min[j]);
            l[i][j] = q;
            let diff = scale[j] * q + min[j] - x[i][j];
            best_error[j] += w[i][j] * (diff * diff);
        }
    }

    let mut laux = [[0.0f32; 8]; 32];
    for is in 0..=nstep {
        let numerator = rmin + rdelta * is as f32 + nmax_f;
        let iscale: [f32; 8] = std::array::from_fn(|j| numerator / (max[j] - min[j]));
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([0.0f32; 8], [0.0f32; 8], [0.0f32; 8]);
        for i in 0..32 {
            for j in 0..8 {
                let q = level(iscale[j], x[i][j], min[j]);
                laux[i][j] = q;
                let wq = w[i][j] * q;
                sum_l[j] += wq;
                sum_l2[j] += wq * q;
                sum_xl[j] += wq * x[i][j];
            }
        }
        let mut fits = [false; 8];
        let (mut this_scale, mut this_min) = ([0.0f32; 8], [0.0f32; 8]);
        for j in 0..8 {
            let det = sum_w[j] * sum_l2[j] - sum_l[j] * sum_l[j];
            fits[j] = live[j] && det > 0.0;
            this_scale[j] = (sum_w[j] * sum_xl[j] - sum_x[j] * sum_l[j]) / det;
            this_min[j] = (sum_l2[j] * sum_x[j] - sum_l[j] * sum_xl[j]) / det;
            if this_min[j] > 0.0 {
                this_min[j] = 0.0;
                this_scale[j] = sum_xl[j] / sum_l2[j];
            }
        }
        let mut cur_error = [0.0f32; 8];
        for i in 0..32 {
            for j in 0..8 {
                let diff = this_scale[j] * laux[i][j] + this_min[j] - x[i][j];
                cur_error[j] += w[i][j] * (diff * diff);
            }
        }
        let take: [bool; 8] = std::array::from_fn(|j| fits[j] && cur_error[j] < best_error[j]);
        if take.contains(&true) {
            for j in (0..8).filter(|&j| take[j]) {
                best_error[j] = cur_error[j];
                scale[j] = this_scale[j];
                min[j] = this_min[j];
                for i in 0..32 {
                    l[i][j] = laux[i][j];
                }
            }
        }
    }
    let mut l_out = [[0u8; 8]; 32];
    for j in (0..8).filter(|&j| live[j]) {
        for i in 0..32 {
            l_out[i][j] = l[i][j] as u8;
        }
    }
    let scale = std::array::from_fn(|j| if live[j] { scale[j] } else { 0.0 });
    (scale, min.map(|m| -m), l_out)
}

/// ggml's `make_qx_quants` (`n = 16`, `rmse_type = 1`, no weights: the Q6_K
/// call) on sixteen sub-blocks at once, lane `j` of `x[i][j]` being value `i`
/// of sub-block `j` (as [`make_qkx2_quants_x8`]). Per sub-block: levels `L` in
/// `0..2 * nmax` (offset `nmax`), weights `x^2`, the best of the scales
/// `-(nmax + 0.1 * is) / m` for `is` in `-9..=9`, `m` the value of largest
/// magnitude. Returns the scale and `L` per lane.
fn make_qx_quants_x16(nmax: i32, x: &[[f32; 16]; 16]) -> ([f32; 16], [[i8; 16]; 16]) {
    let (mut max, mut amax) = ([0.0f32; 16], [0.0f32; 16]);
    for row in x {
        for j in 0..16 {
            let ax = row[j].abs();
            if ax > amax[j] {
                amax[j] = ax;
                max[j] = row[j];
            }
        }
    }
    // An all-zero sub-block returns at once in the C: L = 0, scale 0.
    let live: [bool; 16] = std::array::from_fn(|j| amax[j] >= GROUP_MAX_EPS);
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);

    let mut l = [[0i32; 16]; 16];
    let iscale: [f32; 16] = std::array::from_fn(|j| -(nmax as f32) / max[j]);
    let (mut sumlx, mut suml2) = ([0.0f32; 16], [0.0f32; 16]);
    for i in 0..16 {
        for j in 0..16 {
            let q = level(iscale[j], x[i][j]);
            l[i][j] = q;
            let (w, q) = (x[i][j] * x[i][j], q as f32);
            sumlx[j] += w * x[i][j] * q;
            suml2[j] += w * q * q;
        }
    }
    let mut scale: [f32; 16] = std::array::from_fn(|j| if suml2[j] != 0.0 { sumlx[j] / suml2[j] } else { 0.0 });
    let mut best: [f32; 16] = std::array::from_fn(|j| scale[j] * sumlx[j]);

    let mut laux = [[0i32; 16]; 16];
    for is in (-9..=9).filter(|&is| is != 0) {
        let numerator = -(nmax as f32 + 0.1 * is as f32);
        let iscale: [f32; 16] = std::array::from_fn(|j| numerator / max[j]);
        let (mut sumlx, mut suml2) = ([0.0f32; 16], [0.0f32; 16]);
        for i in 0..16 {
            for j in 0..16 {
                let q = level(iscale[j], x[i][j]);
                laux[i][j] = q;
                let (w, q) = (x[i][j] * x[i][j], q as f32);
                sumlx[j] += w * x[i][j] * q;
                suml2[j] += w * q * q;
            }
        }
        let take: [bool; 16] = std::array::from_fn(|j| suml2[j] > 0.0 && sumlx[j] * sumlx[j] > best[j] * suml2[j]);
        if take.contains(&true) {
            for j in (0..16).filter(|&j| take[j]) {
                scale[j] = sumlx[j] / suml2[j];
                best[j] = scale[j] * sumlx[j];
                for i in 0..16 {
                    l[i][j] = laux[i][j];
                }
            }
        }
    }
    let mut l_out = [[0i8; 16]; 16];
    for j in (0..16).filter(|&j| live[j]) {
        for i in 0..16 {
            l_out[i][j] = (l[i][j] + nmax) as i8;
        }
    }
    (std::array::from_fn(|j| if live[j] { scale[j] } else { 0.0 }), l_out)
}

/// Scale and min of sub-block `j` from the 12 packed bytes (`get_scale_min_k4`).
#[inline]
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// The part Q4_K and Q5_K share: fits the eight sub-blocks of one super-block
/// (`make_qkx2_quants` with `nmax`, `rmin`, `nstep`), writes `d`, `dmin` and
/// the 12 scale bytes into `head` (16 bytes), and returns the values' levels
/// `L` in `0..=nmax`, requantized with the stored 6-bit scales.
fn k_quant_scales(x: &[f32], head: &mut [u8], nmax: i32, rmin: f32, nstep: i32) -> [u8; QK_K] {
    // Lane j = sub-block j (see make_qkx2_quants_x8).
    let xt: [[f32; 8]; 32] = std::array::from_fn(|i| std::array::from_fn(|j| x[32 * j + i]));
    let mut sum_x2 = [0.0f32; 8];
    for row in &xt {
        for j in 0..8 {
            sum_x2[j] += row[j] * row[j];
        }
    }
    let av_x = sum_x2.map(|s| (s / 32.0).sqrt());
    let weights: [[f32; 8]; 32] = std::array::from_fn(|i| std::array::from_fn(|j| av_x[j] + xt[i][j].abs()));
    let (scales, mins, lt) = make_qkx2_quants_x8(nmax, &xt, &weights, rmin, 0.1, nstep);
    let mut l = [0u8; QK_K];
    for (i, row) in lt.iter().enumerate() {
        for j in 0..8 {
            l[32 * j + i] = row[j];
        }
    }
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..8 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }

    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let packed = &mut head[4..16];
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d16 = fp32_to_fp16(max_scale / 63.0);
    let dmin16 = fp32_to_fp16(max_min / 63.0);
    head[0..2].copy_from_slice(&d16.to_le_bytes());
    head[2..4].copy_from_slice(&dmin16.to_le_bytes());

    let packed = &head[4..16];
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, packed);
        let d = fp16_to_fp32(d16) * sc as f32;
        if d == 0.0 {
            continue; // L keeps make_qkx2_quants' levels, as in ggml
        }
        let dm = fp16_to_fp32(dmin16) * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, nmax) as u8;
        }
    }
    l
}

fn run_q4_k(x: &[f32], y: &mut [u8]) {
    for (x, y) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(144)) {
        let l = k_quant_scales(x, &mut y[..16], 15, -1.0, 20);
        for (c, q) in y[16..144].chunks_exact_mut(32).enumerate() {
            for i in 0..32 {
                q[i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
            }
        }
    }
}

fn run_q5_k(x: &[f32], y: &mut [u8]) {
    for (x, y) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(176)) {
        let l = k_quant_scales(x, &mut y[..16], 31, -0.5, 15);
        let (qh, ql) = y[16..176].split_at_mut(32);
        qh.fill(0);
        for (c, q) in ql.chunks_exact_mut(32).enumerate() {
            let (m1, m2) = (1u8 << (2 * c), 2u8 << (2 * c));
            for j in 0..32 {
                let (mut l1, mut l2) = (l[64 * c + j], l[64 * c + 32 + j]);
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                q[j] = l1 | (l2 << 4);
            }
        }
    }
}

fn run_q6_k(x: &[f32], y: &mut [u8]) {
    for (x, y) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(210)) {
        // Lane j = sub-block j (see make_qx_quants_x16).
        let xt: [[f32; 16]; 16] = std::array::from_fn(|i| std::array::from_fn(|j| x[16 * j + i]));
        let (scales, lt) = make_qx_quants_x16(32, &xt);
        let mut l = [0i8; QK_K];
        for (i, row) in lt.iter().enumerate() {
            for j in 0..16 {
                l[16 * j + i] = row[j];
            }
        }
        let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
        for &scale in &scales {
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            y.fill(0); // d = fp16(0) = 0 too
            continue;
        }
        let iscale = -128.0 / max_scale;
        let d16 = fp32_to_fp16(1.0 / iscale);
        y[208..210].copy_from_slice(&d16.to_le_bytes());
        let mut sc = [0i8; 16];
        for ib in 0..16 {
            sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
        }
        for j in 0..16 {
            let d = fp16_to_fp32(d16) * sc[j] as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                l[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-32, 31) + 32) as i8;
            }
        }
        let (ql, rest) = y.split_at_mut(128);
        let (qh, rest) = rest.split_at_mut(64);
        for (dst, &s) in rest[..16].iter_mut().zip(&sc) {
            *dst = s as u8;
        }
        for h in 0..2 {
            let (l, ql, qh) = (&l[128 * h..128 * h + 128], &mut ql[64 * h..64 * h + 64], &mut qh[32 * h..32 * h + 32]);
            for i in 0..32 {
                let q = |k: usize| l[i + 32 * k] as u8;
                ql[i] = (q(0) & 0x0F) | ((q(2) & 0x0F) << 4);
                ql[i + 32] = (q(1) & 0x0F) | ((q(3) & 0x0F) << 4);
                qh[i] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::quant::dequantize;
    use std::path::{Path, PathBuf};

    /// Rows of the reference inputs (`scripts/quantize_reference.c`).
    const ROW: usize = 256;

    fn data_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/quantize")
    }

    fn read(name: &str) -> Vec<u8> {
        let path = data_dir().join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run scripts/quantize_reference.sh", path.display()))
    }

    fn read_f32(name: &str) -> Vec<f32> {
        read(name).chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    /// `cases.txt`: for each row of `input.f32`, the name of its case.
    fn case_of_row() -> Vec<String> {
        let text = String::from_utf8(read("cases.txt")).unwrap();
        let mut names = Vec::new();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (first, rows, name) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
            assert_eq!(first.parse::<usize>().unwrap(), names.len(), "{line}");
            names.extend(std::iter::repeat_n(name.to_string(), rows.parse().unwrap()));
        }
        names
    }

    /// Deterministic values: xorshift64*, roughly normal (sum of 4 uniforms), times `scale`.
    fn pseudo_normal(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed | 1;
        let mut uniform = move || {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32
        };
        (0..n).map(|_| (uniform() + uniform() + uniform() + uniform() - 2.0) * 1.7 * scale).collect()
    }

    // The direct, line-by-line ports of ggml's helpers, one sub-block at a
    // time; the code above runs them eight or sixteen at a time.

    /// ggml's `make_qkx2_quants` for `n = 32` and `use_mad = false`: fits
    /// `x ~ scale * L - min_out` with `L` in `0..=nmax`, trying the scales
    /// `(nmax + rmin + rdelta * is) / (max - min)` for `is` in `0..=nstep` and
    /// keeping the one of least weighted squared error. Returns
    /// `(scale, min_out)`; writes `L`.
    #[allow(clippy::too_many_arguments)]
    fn make_qkx2_quants(
        nmax: i32,
        x: &[f32; 32],
        weights: &[f32; 32],
        l_out: &mut [u8; 32],
        laux: &mut [u8; 32],
        rmin: f32,
        rdelta: f32,
        nstep: i32,
    ) -> (f32, f32) {
        let mut min = x[0];
        let mut max = x[0];
        let mut sum_w = weights[0];
        let mut sum_x = sum_w * x[0];
        for i in 1..32 {
            if x[i] < min {
                min = x[i];
            }
            if x[i] > max {
                max = x[i];
            }
            let w = weights[i];
            sum_w += w;
            sum_x += w * x[i];
        }
        if min > 0.0 {
            min = 0.0;
        }
        if max == min {
            l_out.fill(0);
            return (0.0, -min);
        }
        let nmax_f = nmax as f32;
        let mut iscale = nmax_f / (max - min);
        let mut scale = 1.0 / iscale;
        let mut best_error = 0.0f32;
        for i in 0..32 {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            l_out[i] = l as u8;
            let diff = scale * l as f32 + min - x[i];
            best_error += weights[i] * (diff * diff);
        }
        for is in 0..=nstep {
            iscale = (rmin + rdelta * is as f32 + nmax_f) / (max - min);
            let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
            for i in 0..32 {
                let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
                laux[i] = l as u8;
                let (w, lf) = (weights[i], l as f32);
                sum_l += w * lf;
                sum_l2 += w * lf * lf;
                sum_xl += w * lf * x[i];
            }
            let det = sum_w * sum_l2 - sum_l * sum_l;
            if det > 0.0 {
                let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
                let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
                if this_min > 0.0 {
                    this_min = 0.0;
                    this_scale = sum_xl / sum_l2;
                }
                let mut cur_error = 0.0f32;
                for i in 0..32 {
                    let diff = this_scale * laux[i] as f32 + this_min - x[i];
                    cur_error += weights[i] * (diff * diff);
                }
                if cur_error < best_error {
                    l_out.copy_from_slice(laux);
                    best_error = cur_error;
                    scale = this_scale;
                    min = this_min;
                }
            }
        }
        (scale, -min)
    }

    /// ggml's `make_qx_quants` for `n = 16`, `rmse_type = 1` and no weights (the
    /// Q6_K call): `L` in `0..2 * nmax` (offset `nmax`), weights `x^2`, the best
    /// of the scales `-(nmax + 0.1 * is) / m` for `is` in `-9..=9`. Returns the
    /// scale; writes `L`.
    fn make_qx_quants(nmax: i32, x: &[f32; 16], l_out: &mut [i8; 16]) -> f32 {
        let (mut max, mut amax) = (0.0f32, 0.0f32);
        for &v in x {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax < GROUP_MAX_EPS {
            l_out.fill(0);
            return 0.0;
        }
        let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        let mut iscale = -(nmax as f32) / max;
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for i in 0..16 {
            let l = quant(iscale, x[i]);
            l_out[i] = (l + nmax) as i8;
            let (w, lf) = (x[i] * x[i], l as f32);
            sumlx += w * x[i] * lf;
            suml2 += w * lf * lf;
        }
        let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
        let mut best = scale * sumlx;
        for is in -9..=9 {
            if is == 0 {
                continue;
            }
            iscale = -(nmax as f32 + 0.1 * is as f32) / max;
            sumlx = 0.0;
            suml2 = 0.0;
            for &v in x {
                let (w, lf) = (v * v, quant(iscale, v) as f32);
                sumlx += w * v * lf;
                suml2 += w * lf * lf;
            }
            if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
                for i in 0..16 {
                    l_out[i] = (nmax + quant(iscale, x[i])) as i8;
                }
                scale = sumlx / suml2;
                best = scale * sumlx;
            }
        }
        scale
    }

    /// The lane-interleaved helpers give what the direct ports give, on every
    /// case of the reference inputs and on random sub-blocks of many scales.
    #[test]
    fn lane_helpers_equal_the_direct_ports() {
        let mut x = read_f32("input.f32");
        for (k, scale) in [1e-3f32, 0.1, 1.0, 100.0].into_iter().enumerate() {
            x.extend(pseudo_normal(16 * ROW, 100 + k as u64, scale));
        }
        // Constant and one-sign sub-blocks mixed with others in one super-block.
        let mut mixed = pseudo_normal(ROW, 5, 1.0);
        mixed[..32].fill(0.25);
        mixed[64..96].iter_mut().for_each(|v| *v = v.abs());
        mixed[160..176].fill(0.0);
        x.extend(mixed);
        for (b, block) in x.chunks_exact(QK_K).enumerate() {
            // Q4_K / Q5_K fits.
            let xt: [[f32; 8]; 32] = std::array::from_fn(|i| std::array::from_fn(|j| block[32 * j + i]));
            let wt: [[f32; 8]; 32] = std::array::from_fn(|i| std::array::from_fn(|j| 0.5 + xt[i][j].abs()));
            for (nmax, rmin, nstep) in [(15, -1.0, 20), (31, -0.5, 15)] {
                let (scales, mins, lt) = make_qkx2_quants_x8(nmax, &xt, &wt, rmin, 0.1, nstep);
                for j in 0..8 {
                    let xs: [f32; 32] = std::array::from_fn(|i| xt[i][j]);
                    let ws: [f32; 32] = std::array::from_fn(|i| wt[i][j]);
                    let (mut l, mut laux) = ([0u8; 32], [0u8; 32]);
                    let (scale, min) = make_qkx2_quants(nmax, &xs, &ws, &mut l, &mut laux, rmin, 0.1, nstep);
                    let lanes: [u8; 32] = std::array::from_fn(|i| lt[i][j]);
                    assert_eq!(
                        (scales[j].to_bits(), mins[j].to_bits(), lanes),
                        (scale.to_bits(), min.to_bits(), l),
                        "block {b} sub-block {j} nmax {nmax}"
                    );
                }
            }
            // Q6_K fits.
            let xt: [[f32; 16]; 16] = std::array::from_fn(|i| std::array::from_fn(|j| block[16 * j + i]));
            let (scales, lt) = make_qx_quants_x16(32, &xt);
            for j in 0..16 {
                let xs: [f32; 16] = std::array::from_fn(|i| xt[i][j]);
                let mut l = [0i8; 16];
                let scale = make_qx_quants(32, &xs, &mut l);
                let lanes: [i8; 16] = std::array::from_fn(|i| lt[i][j]);
                assert_eq!((scales[j].to_bits(), lanes), (scale.to_bits(), l), "block {b} sub-block {j}");
            }
        }
    }

    /// Every block type, every case of `tests/data/quantize/input.f32`: the
    /// bytes of llama.cpp's `ggml_quantize_chunk`, written by
    /// `scripts/quantize_reference.sh`. (F16 and BF16 have their own file.)
    #[test]
    fn matches_llama_cpp_reference_bytes() {
        let input = read_f32("input.f32");
        let cases = case_of_row();
        assert_eq!(input.len(), cases.len() * ROW);
        for kind in GgmlKind::ALL {
            let want = match kind {
                GgmlKind::F32 => read("input.f32"),
                GgmlKind::F16 | GgmlKind::BF16 => continue,
                _ => read(&format!("{}.bin", kind.name())),
            };
            let got = quantize(kind, &input, ROW).unwrap();
            assert_eq!(got.len(), want.len(), "{kind}");
            let row_bytes = kind.byte_len(ROW).unwrap();
            for (r, (g, w)) in got.chunks(row_bytes).zip(want.chunks(row_bytes)).enumerate() {
                if let Some(i) = g.iter().zip(w).position(|(a, b)| a != b) {
                    let block = i / kind.type_size();
                    panic!(
                        "{kind}: row {r} (case {}), byte {i} (block {block}, byte {} of it): got {:#04x}, llama.cpp {:#04x}",
                        cases[r],
                        i % kind.type_size(),
                        g[i],
                        w[i]
                    );
                }
            }
        }
    }

    /// F16 and BF16 of NaNs, infinities, rounding ties and subnormals, as ggml converts them.
    #[test]
    fn float_conversions_match_ggml_on_special_values() {
        let floats = read_f32("floats.f32");
        for kind in [GgmlKind::F16, GgmlKind::BF16] {
            let want = read(&format!("floats.{}", kind.name()));
            let got = quantize(kind, &floats, floats.len()).unwrap();
            for (i, (g, w)) in got.chunks(2).zip(want.chunks(2)).enumerate() {
                assert_eq!(g, w, "{kind}: value {i} ({:#010x})", floats[i].to_bits());
            }
        }
    }

    #[test]
    fn fp16_conversion_is_round_to_nearest_even() {
        // Every 4099th f32 bit pattern against the `half` crate (also IEEE
        // round-to-nearest-even); NaNs differ only in the payload ggml drops.
        for bits in (0..=u32::MAX).step_by(4099) {
            let x = f32::from_bits(bits);
            let want = if x.is_nan() { 0x7e00 | ((bits >> 16) & 0x8000) as u16 } else { f16::from_f32(x).to_bits() };
            assert_eq!(fp32_to_fp16(x), want, "{bits:#010x}");
        }
        assert_eq!(fp32_to_fp16(65520.0), 0x7c00); // the overflow tie rounds to inf
        assert_eq!(fp32_to_fp16(2f32.powi(-25)), 0x0000); // the underflow tie to 0
        assert_eq!(fp32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80); // tie to even
        assert_eq!(fp32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(fp32_to_bf16(f32::from_bits(0x7f80_0001)), 0x7fc0); // signalling NaN made quiet
    }

    /// The branch-free Q8_0 rounding gives the bytes of the direct port on halves, NaN inside a
    /// block, infinities, subnormal blocks and ordinary values.
    #[test]
    fn q8_0_fast_rounding_equals_the_direct_port() {
        fn direct(x: &[f32], y: &mut [u8]) {
            for (x, y) in x.chunks_exact(32).zip(y.chunks_exact_mut(34)) {
                let amax = x.iter().fold(0.0f32, |m, v| c_max(m, v.abs()));
                let d = amax / 127.0;
                let id = inverse_or_zero(d);
                put_f16(y, 0, d);
                for (q, &v) in y[2..34].iter_mut().zip(x) {
                    *q = c_round_to_i32(v * id) as u8;
                }
            }
        }
        let mut x: Vec<f32> = (0..32 * 64).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect();
        x[0] = 127.0; // block 0: amax 127, so id = 1 and halves stay halves
        for (j, v) in [0.5f32, 1.5, 2.5, -0.5, -1.5, 0.49999997, -0.49999997, 126.5].into_iter().enumerate() {
            x[1 + j] = v;
        }
        x[40] = f32::NAN;
        x[64] = f32::INFINITY;
        x[97] = f32::NEG_INFINITY;
        for v in &mut x[128..160] {
            *v *= 1e-40; // subnormal block
        }
        x[160..192].fill(0.0);
        let (mut a, mut b) = (vec![0u8; 34 * 64], vec![0u8; 34 * 64]);
        run_q8_0(&x, &mut a);
        direct(&x, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn all_finite_and_abs_max_agree_with_the_plain_loops() {
        let mut x: Vec<f32> = pseudo_normal(4096, 5, 10.0);
        assert!(all_finite(&x));
        for (i, bad) in [(3000, f32::NAN), (17, f32::INFINITY), (4095, f32::NEG_INFINITY)] {
            let keep = x[i];
            x[i] = bad;
            assert!(!all_finite(&x), "{bad} at {i}");
            x[i] = keep;
        }
        x[40] = -0.0;
        x[64..96].fill(0.0);
        x[100] = f32::NAN;
        x[130] = f32::INFINITY;
        x[159] = f32::NAN;
        x[191] = f32::NAN;
        x[192] = f32::NAN;
        for b in x.chunks_exact(32) {
            let want = b.iter().fold(0.0f32, |m, v| c_max(m, v.abs()));
            assert_eq!(abs_max(b).to_bits(), want.to_bits(), "{b:?}");
        }
    }

    #[test]
    fn c_semantics_helpers() {
        // nearest_int: ties to even; large values wrap like the C.
        let ints: Vec<i32> = [0.5f32, 1.5, 2.5, -0.5, -1.5, 3.49, -0.0].map(nearest_int).to_vec();
        assert_eq!(ints, [0, 2, 2, 0, -2, 3, 0]);
        assert_eq!(nearest_int(4_194_303.0), 4_194_303);
        // x86-64 cvttss2si: truncation, and i32::MIN for NaN and out of range.
        assert_eq!([-2.7f32, 2.7, 127.9].map(c_to_i32), [-2, 2, 127]);
        for x in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 3e9, -3e9] {
            assert_eq!(c_to_i32(x), i32::MIN, "{x}");
        }
        assert_eq!(c_to_i32(300.0) as i8, 44); // C narrows to the low byte
                                               // c_round_to_i32 is roundf + c_to_i32.
        let mut xs =
            vec![0.5f32, -0.5, 1.5, -1.5, 2.5, 0.49999997, -0.49999997, 8388607.5, 16777217.0, 2147483520.0, -2147483648.0];
        xs.extend([f32::NAN, f32::INFINITY, -f32::INFINITY, 2147483648.0, -2147483904.0, 0.0, -0.0, 1e-40]);
        xs.extend(pseudo_normal(100_000, 3, 100.0));
        xs.extend((0..100_000).map(|i| (i as f32 - 50_000.0) * 0.25));
        for x in xs {
            assert_eq!(c_round_to_i32(x), c_to_i32(x.round()), "{x}");
        }
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let x = vec![0.5f32; 512];
        assert_eq!(
            quantize(GgmlKind::Q4_K, &x[..288], 288),
            Err(QuantError::RowLength { kind: GgmlKind::Q4_K, row_len: 288, block_size: 256 })
        );
        assert_eq!(quantize(GgmlKind::F16, &x, 0), Err(QuantError::RowLength { kind: GgmlKind::F16, row_len: 0, block_size: 1 }));
        assert_eq!(
            quantize(GgmlKind::Q8_0, &x[..96], 64),
            Err(QuantError::PartialRow { kind: GgmlKind::Q8_0, n_values: 96, row_len: 64 })
        );
        let mut y = x.clone();
        y[300] = f32::NAN;
        y[400] = f32::INFINITY;
        for kind in GgmlKind::ALL {
            let got = quantize(kind, &y, 256);
            if matches!(kind, GgmlKind::F32 | GgmlKind::F16 | GgmlKind::BF16) {
                assert!(got.is_ok(), "{kind}");
            } else {
                assert_eq!(got, Err(QuantError::NonFinite { kind, index: 300 }));
            }
        }
        let mut out = vec![0u8; 35];
        assert_eq!(
            quantize_into(GgmlKind::Q8_0, &x[..32], 32, &mut out),
            Err(QuantError::ByteLength { kind: GgmlKind::Q8_0, n_elements: 32, expected: 34, actual: 35 })
        );
        assert!(quantize_into(GgmlKind::Q8_0, &x[..32], 32, &mut out[..34]).is_ok());
        for kind in GgmlKind::ALL {
            assert_eq!(quantize(kind, &[], kind.block_size()), Ok(vec![]));
        }
        let msg = quantize(GgmlKind::Q6_K, &x[..64], 64).unwrap_err().to_string();
        assert_eq!(msg, "q6_K: rows of 64 values do not split into blocks of 256");
    }

    /// Quantize then dequantize: the error stays within what each format can do.
    #[test]
    fn round_trip_error_is_bounded() {
        let x = pseudo_normal(64 * ROW, 7, 0.02);
        let rms = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
        // (kind, bound on RMS error / RMS of the data, bound on |error| / block amax).
        // A uniform step of amax / 8 on normal data is an RMS error of about 0.075 sigma.
        // Half a step, plus the f16 rounding of the scale times the largest level
        // (Q8_0: 127 * 2^-11 of a step); Q4_0/Q5_0 clamp the top level, a whole step.
        let bounds = [
            (GgmlKind::F32, 0.0, 0.0),
            (GgmlKind::F16, 1e-3, 1e-3),
            (GgmlKind::BF16, 4e-3, 4e-3),
            (GgmlKind::Q8_0, 0.01, 0.57 / 127.0),
            (GgmlKind::Q6_K, 0.03, 0.05),
            (GgmlKind::Q5_0, 0.06, 1.0 / 16.0 * 1.01),
            (GgmlKind::Q5_1, 0.06, 1.0 / 31.0 * 1.1),
            (GgmlKind::Q5_K, 0.06, 0.1),
            (GgmlKind::Q4_0, 0.12, 1.0 / 8.0 * 1.01),
            (GgmlKind::Q4_1, 0.12, 1.0 / 15.0 * 1.05),
            (GgmlKind::Q4_K, 0.12, 0.2),
        ];
        assert_eq!(bounds.len(), GgmlKind::ALL.len());
        for (kind, rel_rms, rel_max) in bounds {
            let bytes = quantize(kind, &x, ROW).unwrap();
            let back = dequantize(kind, &bytes, x.len()).unwrap();
            let err2: f32 = x.iter().zip(&back).map(|(a, b)| (a - b) * (a - b)).sum();
            let rel = (err2 / x.len() as f32).sqrt() / rms;
            assert!(rel <= rel_rms, "{kind}: relative RMS error {rel} > {rel_rms}");
            let bs = kind.block_size().max(32);
            for (xb, yb) in x.chunks(bs).zip(back.chunks(bs)) {
                let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let worst = xb.iter().zip(yb).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(worst <= rel_max * amax, "{kind}: error {worst} in a block of amax {amax}");
            }
        }
    }

    /// The bytes are the same on one thread, on several, and in small serial pieces.
    #[test]
    fn thread_count_does_not_change_the_bytes() {
        let n = PARALLEL_MIN_ELEMENTS + 3 * VALUES_PER_TASK + 5 * ROW; // tasks of unequal size
        let x: Vec<f32> =
            pseudo_normal(n, 11, 0.05).into_iter().enumerate().map(|(i, v)| if i % 1000 == 0 { v * 300.0 } else { v }).collect();
        let pool = |threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        for kind in GgmlKind::ALL {
            let one = pool(1).install(|| quantize(kind, &x, ROW).unwrap());
            let three = pool(3).install(|| quantize(kind, &x, ROW).unwrap());
            assert!(one == three, "{kind}: 1 vs 3 threads");
            let mut pieces = Vec::new();
            for rows in x.chunks(7 * ROW) {
                pieces.extend(quantize(kind, rows, ROW).unwrap()); // each under the parallel threshold
            }
            assert!(one == pieces, "{kind}: whole vs pieces");
        }
    }
}
