//! The fused ops as compositions of candle's generic tensor ops: the reference (what the CPU
//! runs) and, on CUDA, the baseline the kernels are timed against (one kernel per op, every
//! intermediate materialized).
//!
//! Each function computes in f32 (f64 for f64 inputs, which the unit tests use for finite
//! differences) and rounds the outputs to the input dtype, the same contract the kernels keep.
//! Arguments are checked by the dispatching functions in [`super`]; these assume valid shapes.

use candle_core::{DType, Result, Tensor, D};

use super::{CrossEntropy, LoraGradSlot, IGNORE_INDEX};
use crate::model::rng::splitmix;

/// The dtype the arithmetic runs in for inputs of dtype `dt`.
pub(crate) fn compute_dtype(dt: DType) -> DType {
    if dt == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// See [`super::rms_norm_fwd`].
pub fn rms_norm_fwd(x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let cdt = compute_dtype(x.dtype());
    let xf = x.to_dtype(cdt)?;
    let rstd = (xf.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    let y = xf.broadcast_mul(&rstd)?.broadcast_mul(&w.to_dtype(cdt)?)?.to_dtype(x.dtype())?;
    Ok((y, rstd.squeeze(D::Minus1)?))
}

/// See [`super::rms_norm_bwd`].
pub fn rms_norm_bwd(dy: &Tensor, x: &Tensor, w: &Tensor, rstd: &Tensor) -> Result<Tensor> {
    let cdt = compute_dtype(x.dtype());
    let r = rstd.to_dtype(cdt)?.unsqueeze(D::Minus1)?;
    let n = x.to_dtype(cdt)?.broadcast_mul(&r)?;
    let dn = dy.to_dtype(cdt)?.broadcast_mul(&w.to_dtype(cdt)?)?;
    let dot = (&dn * &n)?.mean_keepdim(D::Minus1)?;
    (dn - n.broadcast_mul(&dot)?)?.broadcast_mul(&r)?.to_dtype(dy.dtype())
}

/// Rotate-half RoPE on `[B, heads, T, D]` with `sin` multiplied by `sign` (+1 forward, -1 for
/// the transpose); output contiguous `[B, heads, T, D]`.
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, sign: f64) -> Result<Tensor> {
    let (_, _, t, d) = x.dims4()?;
    let half = d / 2;
    let cdt = compute_dtype(x.dtype());
    let xf = x.to_dtype(cdt)?;
    let cos = cos.narrow(0, 0, t)?.to_dtype(cdt)?;
    let sin = (sin.narrow(0, 0, t)?.to_dtype(cdt)? * sign)?;
    let x1 = xf.narrow(D::Minus1, 0, half)?;
    let x2 = xf.narrow(D::Minus1, half, half)?;
    let y1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let y2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    Tensor::cat(&[y1, y2], D::Minus1)?.to_dtype(x.dtype())
}

/// See [`super::rope_fwd`].
pub fn rope_fwd(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    rope(x, cos, sin, 1.0)
}

/// See [`super::rope_bwd`].
pub fn rope_bwd(dy: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    rope(dy, cos, sin, -1.0)
}

/// See [`super::rope_bwd_tokens`].
pub fn rope_bwd_tokens(dy: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    rope(dy, cos, sin, -1.0)?.transpose(1, 2)?.contiguous()
}

fn sigmoid(g: &Tensor) -> Result<Tensor> {
    (g.neg()?.exp()? + 1.0)?.recip()
}

/// See [`super::swiglu_fwd`].
pub fn swiglu_fwd(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let cdt = compute_dtype(gate.dtype());
    let g = gate.to_dtype(cdt)?;
    ((&g * sigmoid(&g)?)? * up.to_dtype(cdt)?)?.to_dtype(gate.dtype())
}

/// See [`super::swiglu_bwd`].
pub fn swiglu_bwd(dy: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> {
    let cdt = compute_dtype(gate.dtype());
    let (d, g, u) = (dy.to_dtype(cdt)?, gate.to_dtype(cdt)?, up.to_dtype(cdt)?);
    let s = sigmoid(&g)?;
    let du = (&d * (&g * &s)?)?;
    // d silu(g) / dg = s * (1 + g * (1 - s))
    let dsilu = (&s * ((&g * (1.0 - &s)?)? + 1.0)?)?;
    let dg = ((&d * &u)? * dsilu)?;
    Ok((dg.to_dtype(dy.dtype())?, du.to_dtype(dy.dtype())?))
}

/// See [`super::cross_entropy_fwd_bwd`] and [`super::cross_entropy_loss`]; `scale: None` skips
/// the gradient.
pub(crate) fn cross_entropy(logits: &Tensor, labels: &Tensor, scale: Option<f64>) -> Result<CrossEntropy> {
    let cdt = compute_dtype(logits.dtype());
    let z = logits.to_dtype(cdt)?;
    let valid = labels.ne(IGNORE_INDEX)?;
    let validf = valid.to_dtype(cdt)?.unsqueeze(1)?;
    let target = valid.where_cond(labels, &labels.zeros_like()?)?.unsqueeze(1)?;
    let max = z.max_keepdim(1)?;
    let shifted = z.broadcast_sub(&max)?;
    let e = shifted.exp()?;
    let sumexp = e.sum_keepdim(1)?;
    let picked = shifted.gather(&target, 1)?;
    let row_loss = ((sumexp.log()? - picked)? * &validf)?;
    let loss_sum = row_loss.sum_all()?;
    let count = validf.sum_all()?.to_dtype(DType::U32)?;
    let dlogits = match scale {
        None => None,
        Some(scale) => {
            let p = e.broadcast_div(&sumexp)?;
            let g = p.scatter_add(&target, &validf.neg()?, 1)?.broadcast_mul(&validf)?;
            Some((g * scale)?.to_dtype(logits.dtype())?)
        }
    };
    Ok(CrossEntropy { loss_sum, count, dlogits })
}

/// See [`super::cross_entropy_fwd_bwd`].
pub fn cross_entropy_fwd_bwd(logits: &Tensor, labels: &Tensor, scale: f64) -> Result<CrossEntropy> {
    cross_entropy(logits, labels, Some(scale))
}

/// The `(threshold, keep)` pair of a dropout probability: an element is kept when its 32 random
/// bits are `>= threshold`, and then scaled by `keep`. The same arithmetic as the host-built
/// masks llama.rs used before this op (and the CUDA kernel).
pub(crate) fn dropout_params(p: f32) -> (u32, f32) {
    ((p as f64 * u32::MAX as f64) as u32, 1.0 / (1.0 - p))
}

/// The dropout mask `[n]` of 0 and `1/(1-p)` for `seed`, computed on the host: element `e` takes
/// the low (even `e`) or high (odd `e`) half of `splitmix(seed ^ splitmix(e / 2))`.
pub fn dropout_mask(seed: u64, n: usize, p: f32) -> Vec<f32> {
    dropout_mask_at(seed, 0, n, p)
}

/// [`dropout_mask`]'s elements `first..first + n` (a data-parallel shard's rows of its
/// micro-batch's mask).
pub fn dropout_mask_at(seed: u64, first: u64, n: usize, p: f32) -> Vec<f32> {
    use rayon::prelude::*;
    let (threshold, keep) = dropout_params(p);
    let mut v = vec![0f32; n];
    // Counter-based, so the parallel split cannot change a single bit.
    v.par_chunks_mut(4096).enumerate().for_each(|(c, chunk)| {
        for (j, m) in chunk.iter_mut().enumerate() {
            let g = first + (c * 4096 + j) as u64;
            let r = splitmix(seed ^ splitmix(g / 2));
            let bits = if g.is_multiple_of(2) { r as u32 } else { (r >> 32) as u32 };
            *m = if bits >= threshold { keep } else { 0.0 };
        }
    });
    v
}

/// See [`super::lora_dropout`]: the mask built on the host (the CPU reference; on CUDA the kernel
/// hashes in place).
pub fn lora_dropout(x: &Tensor, seed: u64, p: f32, first: u64) -> Result<Tensor> {
    let cdt = compute_dtype(x.dtype());
    let mask = Tensor::from_vec(dropout_mask_at(seed, first, x.elem_count(), p), x.shape(), x.device())?;
    (x.to_dtype(cdt)? * mask.to_dtype(cdt)?)?.to_dtype(x.dtype())
}

/// See [`super::lora_down`]: the dropout op, then the matmul in the activations' dtype (what
/// llama.rs ran before the fused op; on CUDA the dropout is still the dropout kernel).
pub fn lora_down(x: &Tensor, a: &Tensor, seed: u64, p: f32, first: u64) -> Result<Tensor> {
    super::lora_dropout_at(x, seed, p, first)?.matmul(&a.t()?)
}

/// See [`super::lora_up_add`].
pub fn lora_up_add(y: &Tensor, z: &Tensor, sb: &Tensor) -> Result<Tensor> {
    y + z.matmul(&sb.t()?)?
}

/// See [`super::lora_bwd`]: matmuls in the activations' dtype, each gradient upcast and copied
/// into the buffer, the dropout op applied to `x` and to `dz A`.
#[allow(clippy::too_many_arguments)]
pub fn lora_bwd(
    dy: &Tensor,
    x: &Tensor,
    z: &Tensor,
    dx: &Tensor,
    a: &Tensor,
    sb: &Tensor,
    seed: u64,
    p: f32,
    first: u64,
    slot: &LoraGradSlot,
) -> Result<Tensor> {
    let drop = |t: &Tensor| super::lora_dropout_at(t, seed, p, first);
    // y += z (s B)^T with z = xd A^T: dB = s dy^T z (scaled in f32), dz = dy (s B), dA = dz^T xd.
    let db = (dy.t()?.matmul(z)?.to_dtype(DType::F32)? * f64::from(slot.scaling))?;
    let dz = dy.matmul(sb)?;
    let da = dz.t()?.matmul(&drop(x)?)?.to_dtype(DType::F32)?;
    slot.buf.slice_set(&da.flatten_all()?, 0, slot.a)?;
    slot.buf.slice_set(&db.flatten_all()?, 0, slot.b)?;
    dx + drop(&dz.matmul(a)?)?
}

/// `[B, Hkv, T, D] -> [B, Hkv * rep, T, D]`, each KV head repeated for its group of query heads.
fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return x.contiguous();
    }
    let (b, h, t, d) = x.dims4()?;
    x.unsqueeze(2)?.expand((b, h, rep, t, d))?.reshape((b, h * rep, t, d))
}

/// The transpose of [`repeat_kv`]: sums each group of query heads.
fn unrepeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, h, t, d) = x.dims4()?;
    x.reshape((b, h / rep, rep, t, d))?.sum(2)
}

/// Causal scores `scale * q k^T` with `-inf` above the diagonal, `[B, Hq, T, T]`.
fn causal_scores(q: &Tensor, k: &Tensor, scale: f64) -> Result<Tensor> {
    let t = q.dim(2)?;
    let mask: Vec<f32> = (0..t).flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    let mask = Tensor::from_vec(mask, (t, t), q.device())?.to_dtype(q.dtype())?;
    (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)
}

/// See [`super::attention_fwd`]: materializes the `[B, Hq, T, T]` scores and probabilities.
pub fn attention_fwd(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<(Tensor, Tensor)> {
    let rep = q.dim(1)? / k.dim(1)?;
    let cdt = compute_dtype(q.dtype());
    let qf = q.to_dtype(cdt)?.contiguous()?;
    let (kf, vf) = (repeat_kv(&k.to_dtype(cdt)?, rep)?, repeat_kv(&v.to_dtype(cdt)?, rep)?);
    let s = causal_scores(&qf, &kf, scale)?;
    let max = s.max_keepdim(D::Minus1)?;
    let lse = (s.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + max)?;
    let p = s.broadcast_sub(&lse)?.exp()?;
    let o = p.matmul(&vf)?.to_dtype(q.dtype())?;
    Ok((o, lse.squeeze(D::Minus1)?))
}

/// See [`super::attention_bwd`]: recomputes the probabilities from `lse`.
pub fn attention_bwd(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    scale: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let rep = q.dim(1)? / k.dim(1)?;
    let cdt = compute_dtype(q.dtype());
    let (qf, of, dof) = (q.to_dtype(cdt)?.contiguous()?, o.to_dtype(cdt)?, dout.to_dtype(cdt)?.contiguous()?);
    let (kf, vf) = (repeat_kv(&k.to_dtype(cdt)?, rep)?, repeat_kv(&v.to_dtype(cdt)?, rep)?);
    let s = causal_scores(&qf, &kf, scale)?;
    let p = s.broadcast_sub(&lse.to_dtype(cdt)?.unsqueeze(D::Minus1)?)?.exp()?;
    let dv = p.t()?.matmul(&dof)?;
    let dp = dof.matmul(&vf.t()?)?;
    let delta = (&dof * &of)?.sum_keepdim(D::Minus1)?;
    let ds = (&p * dp.broadcast_sub(&delta)?)?;
    let dq = (ds.matmul(&kf)? * scale)?;
    let dk = (ds.t()?.matmul(&qf)? * scale)?;
    let dt = q.dtype();
    Ok((dq.to_dtype(dt)?, unrepeat_kv(&dk, rep)?.to_dtype(dt)?, unrepeat_kv(&dv, rep)?.to_dtype(dt)?))
}
