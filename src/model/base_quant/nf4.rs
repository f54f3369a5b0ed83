//! NF4 with double-quantized scales, in bitsandbytes' layout (QLoRA's storage of a frozen base).
//!
//! What `bitsandbytes.functional.quantize_4bit(w, blocksize=64, compress_statistics=True,
//! quant_type="nf4")` stores, which is what transformers' `BitsAndBytesConfig(load_in_4bit=True,
//! bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)` makes of every linear weight:
//!
//! 1. The weight, flattened row-major, in blocks of [`BLOCK`] (64) values. Each block's `absmax`
//!    is its largest magnitude; each value is multiplied by `1 / absmax` (the reciprocal, in f32,
//!    as bitsandbytes does) and replaced by the index of the nearest of the 16 [`NF4_CODE`] values:
//!    the number of midpoints between neighbouring codes that are below it (a value exactly on a
//!    midpoint takes the lower code, `torch.bucketize` with `right=False`, as the CUDA kernel's
//!    `x > threshold` tree does). Two indices per byte, the first in the high nibble; an odd
//!    count is padded with the index of 0.0.
//! 2. The absmax values (f32, one per block) are themselves quantized ("double quantization"):
//!    their mean is the `offset`; `absmax - offset` goes through bitsandbytes' blockwise 8-bit
//!    quantization in blocks of [`BLOCK2`] (256): per block an f32 `absmax2`, per value the index
//!    of the nearest of the 256 values of bitsandbytes' signed dynamic map ([`dynamic_map`]).
//!
//! Dequantizing is, in f32, `absmax_i = DYNAMIC[q_i] * absmax2[i / 256] + offset`, then
//! `w = NF4_CODE[nibble] * absmax_i`, rounded once to the compute dtype, as bitsandbytes'
//! `dequantize_4bit` does.
//!
//! Where this can differ from bitsandbytes (neither happens for trained weights): a block of
//! zeros (bitsandbytes' CUDA kernel multiplies 0 by `1 / 0`; this code, like its CPU backend,
//! clamps the absmax at 1e-38 and stores index 7, 0.0), and the mean of the absmax values, which
//! torch sums in its own order (here: in f64, rounded once). The tests compare with what
//! bitsandbytes itself wrote on a GPU (`tests/fixtures/nf4/`, `scripts/nf4_reference.py`).

use rayon::prelude::*;

/// Values per 4-bit block.
pub const BLOCK: usize = 64;
/// Absmax values per block of the double quantization.
pub const BLOCK2: usize = 256;

/// bitsandbytes' NF4 code (`get_4bit_type("nf4")`): quantiles of N(0, 1) scaled to [-1, 1],
/// as bitsandbytes writes them (each the shortest decimal of an f32).
#[allow(clippy::excessive_precision)]
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// bitsandbytes' signed dynamic 8-bit map (`create_dynamic_map(signed=True)`), sorted, as f32.
///
/// Built as bitsandbytes builds it: for each exponent `i` in 0..7, `2^i + 1` boundaries
/// evenly spaced over [0.1, 1] (f32), the midpoints of neighbours times `10^(i - 6)` (an f32
/// product), with both signs; then 0 and 1, sorted. `tests/fixtures/nf4/` holds the table
/// bitsandbytes computed, and a test compares the two.
pub fn dynamic_map() -> &'static [f32; 256] {
    static MAP: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    MAP.get_or_init(|| {
        let mut data: Vec<f32> = Vec::with_capacity(256);
        for i in 0..7i32 {
            let items = (1usize << i) + 1;
            let bounds = linspace_f32(0.1, 1.0, items);
            let scale = 10f64.powi(i - 6) as f32;
            for w in bounds.windows(2) {
                let mean = (w[0] + w[1]) / 2.0;
                data.push(scale * mean);
                data.push(-(scale * mean));
            }
        }
        data.push(0.0);
        data.push(1.0);
        debug_assert_eq!(data.len(), 256);
        data.sort_by(f32::total_cmp);
        data.try_into().expect("the dynamic map has 256 values")
    })
}

/// `torch.linspace(start, end, steps, dtype=float32)` as its scalar CPU kernel computes it: the
/// first half from `start` up, the second half from `end` down, with an f32 step.
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps).map(|i| if i < half { start + step * i as f32 } else { end - step * (steps - i - 1) as f32 }).collect()
}

/// The midpoints between neighbouring values of a sorted code, in f32.
fn midpoints(code: &[f32]) -> Vec<f32> {
    code.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect()
}

/// The index of the code nearest `x` given the code's midpoints (`torch.bucketize`, right=False).
fn bucket(mid: &[f32], x: f32) -> u8 {
    mid.partition_point(|&m| m < x) as u8
}

/// The largest magnitude in `x` (0 for an empty slice).
fn absmax(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// Blockwise quantization of `x` against a sorted `code`: per block of `block` values, its
/// absmax, and per value the bucket of `x * (1 / absmax)` clamped to [-1, 1].
fn blockwise(x: &[f32], block: usize, mid: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let scales: Vec<f32> = x.par_chunks(block).map(absmax).collect();
    let q = x
        .par_chunks(block)
        .zip(scales.par_iter())
        .flat_map_iter(|(c, &m)| {
            let inv = 1.0 / m.max(1e-38);
            c.iter().map(move |&v| bucket(mid, (v * inv).clamp(-1.0, 1.0)))
        })
        .collect();
    (q, scales)
}

/// One tensor in NF4 with double-quantized scales.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4 {
    /// Values stored.
    pub n: usize,
    /// `ceil(n / 2)` bytes, two 4-bit code indices each (the first in the high nibble).
    pub packed: Vec<u8>,
    /// One byte per block of [`BLOCK`]: the dynamic-map index of `absmax - offset`.
    pub qabsmax: Vec<u8>,
    /// One f32 per [`BLOCK2`] blocks: the scale of `qabsmax`.
    pub absmax2: Vec<f32>,
    /// The mean of the blocks' absmax values.
    pub offset: f32,
}

impl Nf4 {
    /// Quantizes `x` (row-major) as bitsandbytes does (see the module docs).
    pub fn quantize(x: &[f32]) -> Nf4 {
        let nf4_mid = midpoints(&NF4_CODE);
        let (mut q, absmax) = blockwise(x, BLOCK, &nf4_mid);
        if !q.len().is_multiple_of(2) {
            q.push(bucket(&nf4_mid, 0.0));
        }
        let packed = q.par_chunks(2).map(|p| (p[0] << 4) | p[1]).collect();
        let offset = if absmax.is_empty() {
            0.0
        } else {
            (absmax.iter().map(|&a| f64::from(a)).sum::<f64>() / absmax.len() as f64) as f32
        };
        let centred: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
        let (qabsmax, absmax2) = blockwise(&centred, BLOCK2, &midpoints(dynamic_map()));
        Nf4 { n: x.len(), packed, qabsmax, absmax2, offset }
    }

    /// The blocks' absmax values as the double quantization gives them back (f32).
    pub fn absmax(&self) -> Vec<f32> {
        let map = dynamic_map();
        self.qabsmax.iter().enumerate().map(|(i, &q)| map[q as usize] * self.absmax2[i / BLOCK2] + self.offset).collect()
    }

    /// The stored values, dequantized to f32, into `out` (`n` values).
    pub fn dequantize_into(&self, out: &mut [f32]) {
        assert_eq!(out.len(), self.n, "dequantize_into: output length");
        let absmax = self.absmax();
        out.par_chunks_mut(BLOCK).zip(absmax.par_iter()).enumerate().for_each(|(b, (o, &m))| {
            let first = b * BLOCK;
            for (j, v) in o.iter_mut().enumerate() {
                let i = first + j;
                let byte = self.packed[i / 2];
                let nib = if i.is_multiple_of(2) { byte >> 4 } else { byte & 0xF };
                *v = NF4_CODE[nib as usize] * m;
            }
        });
    }

    /// The stored values, dequantized to f32.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.n];
        self.dequantize_into(&mut out);
        out
    }

    /// Bytes this tensor takes (indices, quantized scales, their scales, the offset).
    pub fn byte_len(&self) -> usize {
        self.packed.len() + self.qabsmax.len() + 4 * self.absmax2.len() + 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal_values(n: usize, seed: u64, std: f64) -> Vec<f32> {
        (0..n).map(|i| crate::model::rng::normal(seed, i as u64, std)).collect()
    }

    #[test]
    fn the_dynamic_map_is_sorted_signed_and_spans_minus_one_to_one() {
        let m = dynamic_map();
        assert!(m.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(m[255], 1.0);
        assert!(m.contains(&0.0));
        assert!(m[0] < -0.99 && m[0] > -1.0, "{}", m[0]);
        // 127 negative values, 0, and 128 positive ones (1.0 included).
        assert_eq!(m.iter().filter(|&&x| x < 0.0).count(), 127);
    }

    #[test]
    fn each_value_takes_the_nearest_code_and_dequantizes_within_half_a_step() {
        let x = normal_values(64 * 300 + 17, 7, 0.02);
        let q = Nf4::quantize(&x);
        assert_eq!(q.packed.len(), x.len().div_ceil(2));
        assert_eq!(q.qabsmax.len(), x.len().div_ceil(64));
        assert_eq!(q.absmax2.len(), x.len().div_ceil(64).div_ceil(256));
        let back = q.dequantize();
        let exact_absmax: Vec<f32> = x.chunks(BLOCK).map(absmax).collect();
        let dq_absmax = q.absmax();
        for (b, chunk) in x.chunks(BLOCK).enumerate() {
            // The double quantization keeps each block's scale within about 1% of its absmax.
            assert!((dq_absmax[b] - exact_absmax[b]).abs() <= 0.01 * exact_absmax[b], "block {b}");
            for (j, &v) in chunk.iter().enumerate() {
                let i = b * BLOCK + j;
                let nib = if i.is_multiple_of(2) { q.packed[i / 2] >> 4 } else { q.packed[i / 2] & 0xF } as usize;
                // Nearest code to v / absmax (exact absmax, before double quantization).
                let s = v / exact_absmax[b];
                let best = (0..16).min_by(|&a, &c| (NF4_CODE[a] - s).abs().total_cmp(&(NF4_CODE[c] - s).abs())).unwrap();
                assert!((NF4_CODE[nib] - s).abs() <= (NF4_CODE[best] - s).abs() + 1e-6, "value {i}: {s} -> {nib}, not {best}");
                assert_eq!(back[i], NF4_CODE[nib] * dq_absmax[b]);
            }
        }
    }

    #[test]
    fn a_block_of_zeros_stays_zero_and_odd_lengths_pad_with_the_zero_code() {
        let mut x = vec![0f32; 64];
        x.extend(normal_values(65, 3, 1.0));
        let q = Nf4::quantize(&x);
        assert!(q.dequantize()[..64].iter().all(|&v| v == 0.0));
        assert_eq!(q.packed.last().unwrap() & 0xF, 7, "the pad nibble is the index of 0.0");
        assert_eq!(Nf4::quantize(&[]).dequantize(), Vec::<f32>::new());
    }

    #[test]
    fn four_bits_and_a_little_per_value() {
        let q = Nf4::quantize(&normal_values(4096 * 64, 1, 0.02));
        // 0.5 byte per value, plus 1/64 byte of scale per value, plus 4 bytes per 256 blocks.
        assert_eq!(q.byte_len(), 4096 * 32 + 4096 + 4 * 16 + 4);
    }
}
