//! What ggml's CPU backend does to activations before a matmul with a quantized weight, so a
//! greedy decode here reads a GGUF file the way llama.cpp's CPU build does.
//!
//! ggml multiplies `weight x activations` with the weight's `vec_dot` kernel, which takes the
//! activations in the weight type's `vec_dot_type`: for a Q8_0 weight that is Q8_0 too
//! (`vec_dot_q8_0_q8_0`, and llamafile's sgemm path takes the same converted rows), so every row
//! of activations is first quantized with `quantize_row_q8_0`: blocks of 32 values, scale
//! `d = amax / 127` stored as f16, values `round(x * 127 / amax)`. The dot product of two Q8_0
//! rows is then exact integer sums per block times the two f16 scales. Multiplying the
//! dequantized weight by the dequantized activations in f32 is the same sum up to f32 rounding
//! of the accumulation, which is far below what flips a greedy choice.
//!
//! Which matmuls this touches, in llama.cpp's Llama graph: the seven projections of each block
//! and the output head (`output.weight`, or `token_embd.weight` when tied), each only when the
//! file stores that tensor as Q8_0. The token embedding lookup is `get_rows`, which dequantizes
//! the rows and quantizes nothing; norms multiply elementwise; attention's `KQ` and `KQV`
//! multiply the F16 KV cache and are not emulated here.
//!
//! Rounding: this build of ggml is x86 with AVX2 (`GGML_NATIVE=OFF`, scripts/install-llamacpp.sh),
//! whose `quantize_row_q8_0` multiplies by `127 / amax` and rounds half to even
//! (`_mm256_round_ps(.., _MM_ROUND_NEAREST)`); the scalar reference (`quantize_row_q8_0_ref`)
//! multiplies by `1 / d` and rounds half away from zero. The two differ only where `x * id` lands
//! on (or a rounding error from) a half, which f32 activations almost never do; this follows the
//! AVX2 one, as that is what runs.

use candle_core::{DType, Result, Tensor};

use super::lora::Module;

/// Values per Q8_0 block.
pub const QK8_0: usize = 32;

/// Which of a model's matmuls get Q8_0 activations, and whether attention runs as ggml's CPU
/// flash attention over an F16 KV cache (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActRounding {
    /// Per layer, per [`Module::ALL`] index: whether that projection's weight is Q8_0.
    layers: Vec<[bool; 7]>,
    head: bool,
    f16_attention: bool,
}

impl ActRounding {
    /// No rounding anywhere, for a model of `layers` blocks.
    pub fn none(layers: usize) -> ActRounding {
        ActRounding { layers: vec![[false; 7]; layers], head: false, f16_attention: false }
    }

    /// Attention as [`flash_attn_f16`] computes it.
    pub fn with_f16_attention(mut self) -> ActRounding {
        self.f16_attention = true;
        self
    }

    /// Whether attention runs as [`flash_attn_f16`].
    pub fn f16_attention(&self) -> bool {
        self.f16_attention
    }

    /// Marks projection `m` of block `layer` as a Q8_0 weight.
    pub fn with_q8_0(mut self, layer: usize, m: Module) -> ActRounding {
        if let Some(l) = self.layers.get_mut(layer) {
            l[module_index(m)] = true;
        }
        self
    }

    /// Marks the output head as a Q8_0 weight.
    pub fn with_q8_0_head(mut self) -> ActRounding {
        self.head = true;
        self
    }

    /// Whether projection `m` of block `layer` gets Q8_0 activations.
    pub fn q8_0(&self, layer: usize, m: Module) -> bool {
        self.layers.get(layer).is_some_and(|l| l[module_index(m)])
    }

    /// Whether the output head gets Q8_0 activations.
    pub fn q8_0_head(&self) -> bool {
        self.head
    }

    /// How many matmuls get Q8_0 activations.
    pub fn count(&self) -> usize {
        self.layers.iter().flatten().filter(|x| **x).count() + usize::from(self.head)
    }
}

fn module_index(m: Module) -> usize {
    Module::ALL.iter().position(|x| *x == m).expect("every module is in ALL")
}

/// One row through Q8_0 and back, in place: `x` becomes `d * q` with ggml's `d` (rounded to
/// f16) and `q` (see the module docs). `x.len()` must be a multiple of [`QK8_0`].
pub fn round_row_q8_0(x: &mut [f32]) {
    debug_assert_eq!(x.len() % QK8_0, 0);
    for b in x.chunks_exact_mut(QK8_0) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = half::f16::from_f32(amax / 127.0).to_f32();
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        for v in b.iter_mut() {
            *v = (*v * id).round_ties_even() * d;
        }
    }
}

/// `x` (`[.., in]`, `in` a multiple of [`QK8_0`]) with every row through Q8_0 and back, in
/// `x`'s dtype.
pub fn round_q8_0(x: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let cols = *dims.last().unwrap_or(&1);
    if !cols.is_multiple_of(QK8_0) {
        candle_core::bail!("Q8_0 activations need rows of whole {QK8_0}-value blocks, got {cols}");
    }
    let mut v: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    for row in v.chunks_exact_mut(cols) {
        round_row_q8_0(row);
    }
    Tensor::from_vec(v, dims, x.device())?.to_dtype(x.dtype())
}

fn f16r(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// Query rows per tile of ggml's tiled flash attention (`GGML_FA_TILE_Q`): a batch of at least
/// this many query rows takes the tiled kernel (f32 queries and accumulators), a smaller one
/// the one-row kernel (`ggml_compute_forward_flash_attn_ext_f16_one_chunk`).
pub const FA_TILE_Q: usize = 64;

/// Causal attention as ggml's CPU `FLASH_ATTN_EXT` computes it over llama.cpp's F16 KV cache.
///
/// `q`: `[heads, t, hd]` (after RoPE), the `t` new positions following `start` cached ones;
/// `k`, `v`: `[kv_heads, total, hd]`, already rounded to f16 (the cache stores them so).
/// Returns `[t, heads * hd]`, the O projection's input.
///
/// With fewer than [`FA_TILE_Q`] new rows (every decode step, short prompts) each row runs the
/// one-row kernel: the query rounded to f16, `s = (q . k) * scale` over the keys in cache order,
/// an online softmax whose running output is an f16 vector (`ggml_vec_scale_f16`,
/// `ggml_vec_mad_f16` with a fused multiply-add, rounding to f16 after each step), and the
/// result scaled by `1 / S`. With more, the tiled kernel keeps queries and accumulators in f32,
/// which this computes as a plain f32 softmax.
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_f16(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    heads: usize,
    kv_heads: usize,
    t: usize,
    start: usize,
    hd: usize,
) -> Vec<f32> {
    let total = start + t;
    debug_assert_eq!(q.len(), heads * t * hd);
    debug_assert_eq!(k.len(), kv_heads * total * hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let rep = heads / kv_heads;
    let tiled = t >= FA_TILE_Q;
    let mut out = vec![0f32; t * heads * hd];
    let mut acc = vec![0f32; hd];
    let mut scores = Vec::with_capacity(total);
    for h in 0..heads {
        let kh = h / rep;
        let kv_row = |c: usize| (kh * total + c) * hd..(kh * total + c + 1) * hd;
        for i in 0..t {
            let qrow: Vec<f32> = q[(h * t + i) * hd..][..hd].iter().map(|&x| if tiled { x } else { f16r(x) }).collect();
            let n = start + i + 1;
            acc.iter_mut().for_each(|a| *a = 0.0);
            let mut sum = 0f32;
            if tiled {
                scores.clear();
                for c in 0..n {
                    let kr = &k[kv_row(c)];
                    scores.push(qrow.iter().zip(kr).fold(0f32, |s, (a, b)| s + a * b) * scale);
                }
                let m = scores.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                for (c, s) in scores.iter().enumerate() {
                    let p = (s - m).exp();
                    sum += p;
                    for (a, x) in acc.iter_mut().zip(&v[kv_row(c)]) {
                        *a += p * x;
                    }
                }
            } else {
                let mut m = f32::NEG_INFINITY;
                for c in 0..n {
                    let kr = &k[kv_row(c)];
                    let s = qrow.iter().zip(kr).fold(0f32, |s, (a, b)| s + a * b) * scale;
                    let (mut ms, mut vs) = (1f32, 1f32);
                    if s > m {
                        ms = (m - s).exp();
                        m = s;
                        acc.iter_mut().for_each(|a| *a = f16r(*a * ms));
                    } else {
                        vs = (s - m).exp();
                    }
                    for (a, x) in acc.iter_mut().zip(&v[kv_row(c)]) {
                        *a = f16r(x.mul_add(vs, *a));
                    }
                    sum = sum * ms + vs;
                }
            }
            let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
            let o = &mut out[(i * heads + h) * hd..][..hd];
            for (o, a) in o.iter_mut().zip(&acc) {
                *o = a * inv;
            }
        }
    }
    out
}

/// `x` with every value rounded to f16 (and kept as f32): what llama.cpp's F16 KV cache holds.
pub fn round_f16(x: &Tensor) -> Result<Tensor> {
    x.to_dtype(DType::F16)?.to_dtype(x.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block through `quantize_row_q8_0` (AVX2) and `dequantize_row_q8_0` by hand.
    #[test]
    fn rows_round_as_ggml_quantizes_them() {
        let mut x: Vec<f32> = (0..64).map(|i| ((i as f32) * 0.7).sin() * if i < 32 { 1.0 } else { 1e-3 }).collect();
        let orig = x.clone();
        round_row_q8_0(&mut x);
        for (b, (xs, os)) in x.chunks(32).zip(orig.chunks(32)).enumerate() {
            let amax = os.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = half::f16::from_f32(amax / 127.0).to_f32();
            for (got, o) in xs.iter().zip(os) {
                let q = (o * (127.0 / amax)).round_ties_even();
                assert!((-127.0..=127.0).contains(&q));
                assert_eq!(*got, q * d, "block {b}");
            }
            // The largest value keeps its sign and lands on 127 d.
            let i = os.iter().position(|v| v.abs() == amax).unwrap();
            assert_eq!(xs[i], os[i].signum() * 127.0 * d);
        }
        let mut zeros = [0f32; 32];
        round_row_q8_0(&mut zeros);
        assert_eq!(zeros, [0f32; 32]);
        // Halves round to even, as _mm256_round_ps does: amax 127 makes id 1.
        let mut halves = [0f32; 32];
        halves[0] = 127.0;
        halves[1] = 2.5;
        halves[2] = -3.5;
        round_row_q8_0(&mut halves);
        assert_eq!(&halves[..3], &[127.0, 2.0, -4.0]);
    }

    /// Both kernels agree with a plain f64 causal softmax attention to f16 precision; the
    /// one-row kernel really rounds (it differs from the f32 one), GQA heads share K/V.
    #[test]
    fn flash_attention_matches_softmax_attention_to_f16_precision() {
        let (heads, kv_heads, hd) = (4, 2, 8);
        let val = |i: usize| ((i as f32) * 0.61).sin();
        for (start, t) in [(0, 5), (3, 1), (0, FA_TILE_Q + 2)] {
            let total = start + t;
            let q: Vec<f32> = (0..heads * t * hd).map(|i| val(i) * 2.0).collect();
            let k: Vec<f32> = (0..kv_heads * total * hd).map(|i| f16r(val(i + 1000))).collect();
            let v: Vec<f32> = (0..kv_heads * total * hd).map(|i| f16r(val(i + 5000))).collect();
            let got = flash_attn_f16(&q, &k, &v, heads, kv_heads, t, start, hd);
            let mut max_err = 0f64;
            for h in 0..heads {
                let kh = h / (heads / kv_heads);
                for i in 0..t {
                    let qr = &q[(h * t + i) * hd..][..hd];
                    let s: Vec<f64> = (0..=start + i)
                        .map(|c| {
                            let kr = &k[(kh * total + c) * hd..][..hd];
                            qr.iter().zip(kr).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>() / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                    for d in 0..hd {
                        let want: f64 =
                            s.iter().enumerate().map(|(c, x)| (x - m).exp() / z * f64::from(v[(kh * total + c) * hd + d])).sum();
                        max_err = max_err.max((f64::from(got[(i * heads + h) * hd + d]) - want).abs());
                    }
                }
            }
            let bound = if t >= FA_TILE_Q { 1e-5 } else { 1e-2 };
            assert!(max_err < bound, "start {start} t {t}: {max_err}");
            if t < FA_TILE_Q {
                assert!(max_err > 1e-6, "the one-row kernel rounds to f16");
            }
        }
    }

    #[test]
    fn tensors_round_row_by_row_and_flags_are_per_matmul() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::arange(0f32, 128., &dev).unwrap().reshape((2, 64)).unwrap();
        let y: Vec<f32> = round_q8_0(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let mut want: Vec<f32> = (0..128).map(|i| i as f32).collect();
        want.chunks_exact_mut(64).for_each(round_row_q8_0);
        assert_eq!(y, want);
        assert!(round_q8_0(&Tensor::zeros((1, 20), DType::F32, &dev).unwrap()).is_err());
        let r = ActRounding::none(2).with_q8_0(1, Module::Down).with_q8_0_head();
        assert!(r.q8_0(1, Module::Down) && !r.q8_0(0, Module::Down) && !r.q8_0(1, Module::Up) && r.q8_0_head());
        assert_eq!(r.count(), 2);
        assert_eq!(ActRounding::none(3).count(), 0);
    }
}
