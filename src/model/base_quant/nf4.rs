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
//! bitsandbytes itself wrote on a GPU (`tests/fixtures/nf4/`, `scripts/nf4_reference.py`), and
//! agree bit for bit: indices, scales, scales of scales, the offset and the dequantized values.

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

/// bitsandbytes' signed dynamic 8-bit map (`create_dynamic_map(signed=True)`), sorted, as f32:
/// the bits bitsandbytes 0.50.2 computed under torch 2.11 (`tests/fixtures/nf4/`).
///
/// The table is data, not recomputed: bitsandbytes builds it with `torch.linspace` in f32, whose
/// vectorized CPU kernel rounds some boundaries differently from the scalar formula
/// ([`dynamic_map_from_formula`] is within two ulps of every entry, and 42 of 256 differ), and
/// the double quantization must pick the codes bitsandbytes picks.
pub fn dynamic_map() -> &'static [f32; 256] {
    static MAP: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    MAP.get_or_init(|| DYNAMIC_MAP_BITS.map(f32::from_bits))
}

#[rustfmt::skip]
const DYNAMIC_MAP_BITS: [u32; 256] = [
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000,
    0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333,
    0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666,
    0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,
    0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a,
    0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000,
    0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,
    0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,
    0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d,
    0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148,
    0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
    0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,
    0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
    0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
    0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
    0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
    0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
    0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
];

/// The dynamic map as bitsandbytes' Python describes it: for each exponent `i` in 0..7,
/// `2^i + 1` boundaries evenly spaced over [0.1, 1] (f32), the midpoints of neighbours times
/// `10^(i - 6)` (an f32 product), with both signs; then 0 and 1, sorted.
pub fn dynamic_map_from_formula() -> [f32; 256] {
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
    data.sort_by(f32::total_cmp);
    data.try_into().expect("the dynamic map has 256 values")
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

    /// Bit for bit what bitsandbytes' CUDA kernels stored for the same bf16 weights
    /// (`tests/fixtures/nf4/bnb.safetensors`, written by `scripts/nf4_reference.py` on an H100):
    /// the dynamic map, every packed index, quantized scale, scale of scales and the offset,
    /// and the dequantized values in f32 and bf16.
    #[test]
    fn bitsandbytes_quantizes_and_dequantizes_these_weights_to_the_same_bits() {
        use candle_core::{DType, Device};
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nf4/bnb.safetensors");
        let t = candle_core::safetensors::load(&path, &Device::Cpu).expect("the bitsandbytes fixture");
        let f32s = |k: &str| -> Vec<f32> { t[k].to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap() };
        let u8s = |k: &str| -> Vec<u8> { t[k].flatten_all().unwrap().to_vec1().unwrap() };
        let bits = |v: &[f32]| -> Vec<u32> { v.iter().map(|x| x.to_bits()).collect() };
        assert_eq!(bits(dynamic_map()), bits(&f32s("dynamic_map")), "the dynamic map");
        for case in ["w", "tail"] {
            let x = f32s(&format!("{case}.input"));
            let q = Nf4::quantize(&x);
            assert_eq!(q.packed, u8s(&format!("{case}.packed")), "{case}: packed indices");
            assert_eq!(q.qabsmax, u8s(&format!("{case}.qabsmax")), "{case}: quantized scales");
            assert_eq!(bits(&q.absmax2), bits(&f32s(&format!("{case}.absmax2"))), "{case}: scales of the scales");
            assert_eq!(q.offset.to_bits(), f32s(&format!("{case}.offset"))[0].to_bits(), "{case}: offset");
            let d = q.dequantize();
            assert_eq!(bits(&d), bits(&f32s(&format!("{case}.dequant_f32"))), "{case}: dequantized, f32");
            let want_bf16: Vec<u16> =
                t[&format!("{case}.dequant_bf16")].flatten_all().unwrap().to_vec1::<half::bf16>().unwrap().iter().map(|b| b.to_bits()).collect();
            let got_bf16: Vec<u16> = d.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
            assert_eq!(got_bf16, want_bf16, "{case}: dequantized, bf16");
        }
    }

    /// The embedded table is the formula's up to the rounding of torch's vectorized linspace
    /// (at most two ulps, in 42 entries).
    #[test]
    fn the_dynamic_map_is_the_formula_within_two_ulps() {
        let (table, formula) = (dynamic_map(), dynamic_map_from_formula());
        let ulps: Vec<i64> = table.iter().zip(&formula).map(|(a, b)| (i64::from(a.to_bits()) - i64::from(b.to_bits())).abs()).collect();
        assert!(ulps.iter().all(|&u| u <= 2), "{ulps:?}");
        assert_eq!(ulps.iter().filter(|&&u| u > 0).count(), 42, "{ulps:?}");
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
