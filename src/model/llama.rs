//! The Llama / Qwen2 decoder with LoRA, an explicit backward pass, and KV-cached inference.
//!
//! Why an explicit backward: candle's autograd keeps the whole graph alive, computes gradients
//! of frozen weights and stops silently at forward-only ops (TRAINING.md). Here each decoder
//! block has a hand-written backward that produces only what LoRA needs: the input gradient
//! (through frozen weights) and the A/B gradients. With checkpointing (the default) the forward
//! pass keeps only each block's input, and the backward recomputes one block at a time, so
//! activation memory is one block's worth plus one hidden state per layer.
//!
//! Everything is candle tensor ops, so the same code runs on the CPU (the reference) and on
//! CUDA. Shapes: hidden states are `[N, H]` with `N = batch * seq`; attention works in
//! `[B, heads, T, head_dim]`. Padding is on the right, so the causal mask alone keeps real
//! tokens from seeing padding, and padded positions carry no loss.
//!
//! LoRA follows peft: `y = x W^T + b + (alpha/r) * (dropout(x) A^T) B^T`, with a separate dropout
//! mask per module, drawn from a counter-based hash of (seed, step, layer, module, index) so the
//! recomputation in the backward pass, and a resumed run, see the same masks.
//!
//! # Precision
//!
//! [`Model::dtype`] is the compute dtype: f32, or bf16/f16 for mixed precision, split the way the
//! fast trainers (peft under autocast, unsloth, Liger) split it:
//!
//! | in the compute dtype | in f32 |
//! |---|---|
//! | frozen weights, biases, norm weights, embeddings | LoRA A/B master weights (the flat buffer), their gradients, AdamW moments |
//! | hidden states, the residual stream and its gradient | RMSNorm statistics and the whole RMSNorm backward |
//! | every matmul (A and B are cast down for it) | attention scores from the matmul on: scale, mask, softmax, and the softmax backward |
//! | RoPE (tables rounded to the dtype, as transformers does) | SwiGLU and its backward (as a fused kernel computes it); dropout masks |
//! | logits out of the head matmul (as transformers) | logits upcast for log-softmax, cross-entropy, the loss sum and `dlogits` |
//!
//! Each LoRA gradient matmul's result is upcast and accumulated into the f32 gradient buffer. The
//! upcasts are `to_dtype(F32)`, a no-op on f32 tensors, so the f32 path does exactly the
//! arithmetic it did before mixed precision existed. Scaling the loss for f16 is the caller's
//! business: pass `denom / scale` to [`Model::loss_and_grad`] (exact for a power-of-two scale).
//!
//! candle 0.11's CPU backend has every op used here for bf16 and f16 (unary, binary, reductions,
//! index_select/index_add/gather/scatter_add, rope, casts), but no bf16 matmul kernel: it widens
//! both operands to f32, multiplies with gemm's f32 kernel and rounds the result, which costs a
//! conversion of each frozen weight per use (BENCHMARKS.md has the numbers). f16 matmuls go
//! through gemm's f16 kernel.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::ops::softmax_last_dim;
use candle_nn::rotary_emb::rope;

use super::config::{Arch, Config};
use super::ggml_cpu::{flash_attn_f16, round_f16, round_q8_0, ActRounding};
use super::lora::{Entry, Layout, Module};

/// A frozen projection.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`.
    pub w: Tensor,
    /// `[out]` (Qwen2 q/k/v).
    pub b: Option<Tensor>,
}

/// One decoder block's frozen weights.
#[derive(Debug, Clone)]
pub struct Layer {
    pub attn_norm: Tensor,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub mlp_norm: Tensor,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl Layer {
    /// The projection for a module.
    pub fn proj(&self, m: Module) -> &Linear {
        match m {
            Module::Q => &self.q,
            Module::K => &self.k,
            Module::V => &self.v,
            Module::O => &self.o,
            Module::Gate => &self.gate,
            Module::Up => &self.up,
            Module::Down => &self.down,
        }
    }
    fn proj_mut(&mut self, m: Module) -> &mut Linear {
        match m {
            Module::Q => &mut self.q,
            Module::K => &mut self.k,
            Module::V => &mut self.v,
            Module::O => &mut self.o,
            Module::Gate => &mut self.gate,
            Module::Up => &mut self.up,
            Module::Down => &mut self.down,
        }
    }
}

/// A decoder-only language model.
#[derive(Debug, Clone)]
pub struct Model {
    pub cfg: Config,
    /// The dtype every frozen tensor is stored in and the compute dtype of training and inference
    /// (see the module docs for what stays in f32).
    pub dtype: DType,
    /// `[vocab, hidden]`.
    pub embed: Tensor,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    /// `[vocab, hidden]`; `None` when tied to the embedding.
    pub lm_head: Option<Tensor>,
    pub device: Device,
}

/// LoRA parameters for one step.
pub struct LoraStep<'a> {
    pub layout: &'a Layout,
    /// The flat parameter buffer.
    pub params: &'a [f32],
    /// Dropout probability (0 in eval).
    pub dropout: f32,
    /// Seed of this micro-batch's dropout masks.
    pub seed: u64,
}

/// A tokenized micro-batch, right-padded.
pub struct Batch {
    /// `[B, T]` u32 token ids.
    pub ids: Tensor,
    /// `B * T` labels (-100 = no loss), unshifted, as the dataset stores them.
    pub labels: Vec<i64>,
    pub b: usize,
    pub t: usize,
}

impl Batch {
    /// Right-pads sequences into a batch.
    pub fn new(seqs: &[(&[u32], Vec<i64>)], pad: u32, device: &Device) -> Result<Batch> {
        let b = seqs.len();
        let t = seqs.iter().map(|s| s.0.len()).max().unwrap_or(1).max(1);
        let mut ids = vec![pad; b * t];
        let mut labels = vec![-100i64; b * t];
        for (i, (s, l)) in seqs.iter().enumerate() {
            ids[i * t..i * t + s.len()].copy_from_slice(s);
            labels[i * t..i * t + l.len()].copy_from_slice(l);
        }
        Ok(Batch { ids: Tensor::from_vec(ids, (b, t), device)?, labels, b, t })
    }

    /// Number of positions with a next-token label.
    pub fn n_targets(&self) -> usize {
        (0..self.b).map(|i| (1..self.t).filter(|&j| self.labels[i * self.t + j] != -100).count()).sum()
    }
}

/// SplitMix64: the counter-based hash behind dropout masks and training seeds.
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A dropout mask `[n, d]` of 0 and 1/(1-p), a pure function of (seed, index).
fn dropout_mask(seed: u64, n: usize, d: usize, p: f32, device: &Device) -> Result<Tensor> {
    use rayon::prelude::*;
    let keep = 1.0 / (1.0 - p);
    let threshold = (p as f64 * u32::MAX as f64) as u32;
    let mut v = vec![0f32; n * d];
    // Counter-based, so the parallel split cannot change a single bit.
    v.par_chunks_mut(4096).enumerate().for_each(|(c, chunk)| {
        for (j, pair) in chunk.chunks_mut(2).enumerate() {
            let i = (c * 4096) / 2 + j;
            let r = splitmix(seed ^ splitmix(i as u64));
            let (lo, hi) = (r as u32, (r >> 32) as u32);
            pair[0] = if lo >= threshold { keep } else { 0.0 };
            if pair.len() > 1 {
                pair[1] = if hi >= threshold { keep } else { 0.0 };
            }
        }
    });
    Tensor::from_vec(v, (n, d), device)
}

fn mask_seed(step_seed: u64, layer: usize, m: Module) -> u64 {
    splitmix(step_seed ^ splitmix((layer as u64) << 8 | m as u64))
}

#[derive(Default)]
struct ProjSaved {
    xd: Option<Tensor>,
    z: Option<Tensor>,
    mask: Option<Tensor>,
}

struct LayerCache {
    rstd1: Tensor,
    n1: Tensor,
    qs: ProjSaved,
    ks: ProjSaved,
    vs: ProjSaved,
    q: Tensor,
    k_rep: Tensor,
    v_rep: Tensor,
    p: Tensor,
    os: ProjSaved,
    rstd2: Tensor,
    n2: Tensor,
    gs: ProjSaved,
    us: ProjSaved,
    g: Tensor,
    u: Tensor,
    sig: Tensor,
    ds: ProjSaved,
}

/// What every block of one forward/backward pass shares.
#[derive(Clone, Copy)]
struct Pass<'a> {
    /// (batch, sequence length).
    bt: (usize, usize),
    rope: &'a Rope,
    /// `[T, T]` causal mask (f32: it is added to f32 scores).
    mask: &'a Tensor,
    lora: Option<&'a LoraStep<'a>>,
}

/// Rotary tables for positions `0..t`.
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    neg_sin: Tensor,
}

impl Rope {
    /// Tables for `t` positions starting at `start`, computed in f32 and stored in `dtype`.
    pub fn new(cfg: &Config, start: usize, t: usize, dtype: DType, device: &Device) -> Result<Rope> {
        let inv = cfg.inv_freq();
        let half = inv.len();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for pos in start..start + t {
            for &f in &inv {
                let a = pos as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let neg: Vec<f32> = sin.iter().map(|x| -x).collect();
        Ok(Rope {
            cos: Tensor::from_vec(cos, (t, half), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (t, half), device)?.to_dtype(dtype)?,
            neg_sin: Tensor::from_vec(neg, (t, half), device)?.to_dtype(dtype)?,
        })
    }

    /// Rotates `x: [B, heads, T, head_dim]` (rotate-half layout) by the positions' angles.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        rope(&x.contiguous()?, &self.cos, &self.sin)
    }
}

fn causal_mask(t_q: usize, t_k: usize, device: &Device) -> Result<Tensor> {
    let offset = t_k - t_q;
    let v: Vec<f32> =
        (0..t_q).flat_map(|i| (0..t_k).map(move |j| if j > i + offset { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(v, (t_q, t_k), device)
}

/// Upcasts to f32 (a no-op, sharing storage, for f32 tensors).
fn f32(x: &Tensor) -> Result<Tensor> {
    x.to_dtype(DType::F32)
}

/// RMSNorm statistics in f32: `(rstd [N, 1] in f32, x * rstd in x's dtype)`, as transformers'
/// `LlamaRMSNorm` computes them (the weight is applied by the caller, in x's dtype).
fn rms(x: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let xf = f32(x)?;
    let rstd = (xf.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    let n = xf.broadcast_mul(&rstd)?.to_dtype(x.dtype())?;
    Ok((rstd, n))
}

/// dx of `h = (x * rstd) * w` given dh, computed in f32 and returned in dh's dtype.
fn rms_backward(dh: &Tensor, n: &Tensor, rstd: &Tensor, w: &Tensor) -> Result<Tensor> {
    let n = f32(n)?;
    let dn = f32(dh)?.broadcast_mul(&f32(w)?)?;
    let dot = (&dn * &n)?.mean_keepdim(D::Minus1)?;
    (dn - n.broadcast_mul(&dot)?)?.broadcast_mul(rstd)?.to_dtype(dh.dtype())
}

/// `x * mask` with the product taken in f32 and rounded once, so a dropout scale like 1/0.9
/// (not representable in bf16) is applied exactly as in f32.
fn mul_mask(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    (f32(x)? * mask)?.to_dtype(x.dtype())
}

fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, h, t, d) = x.dims4()?;
    x.unsqueeze(2)?.expand((b, h, rep, t, d))?.reshape((b, h * rep, t, d))
}

/// Sums the gradients of the `rep` query heads sharing a key/value head (in f32).
fn unrepeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, h, t, d) = x.dims4()?;
    f32(x)?.reshape((b, h / rep, rep, t, d))?.sum(2)?.to_dtype(x.dtype())
}

/// Adds a gradient tensor (any dtype) into an f32 slice.
fn add_into(buf: &mut [f32], t: &Tensor) -> Result<()> {
    let v = f32(&t.flatten_all()?)?.to_vec1::<f32>()?;
    for (a, b) in buf.iter_mut().zip(v) {
        *a += b;
    }
    Ok(())
}

impl Model {
    fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// A and B of one entry, cast from the f32 master weights to the compute dtype.
    fn lora_ab(&self, lora: &LoraStep, e: &Entry) -> Result<(Tensor, Tensor)> {
        let r = lora.layout.r;
        let a = Tensor::from_slice(&lora.params[e.a..e.a + r * e.in_dim], (r, e.in_dim), &self.device)?;
        let b = Tensor::from_slice(&lora.params[e.b..e.b + e.out_dim * r], (e.out_dim, r), &self.device)?;
        Ok((a.to_dtype(self.dtype)?, b.to_dtype(self.dtype)?))
    }

    fn proj_fwd(&self, l: usize, m: Module, x: &Tensor, lora: Option<&LoraStep>) -> Result<(Tensor, ProjSaved)> {
        let lin = self.layers[l].proj(m);
        let mut y = x.matmul(&lin.w.t()?)?;
        if let Some(b) = &lin.b {
            y = y.broadcast_add(b)?;
        }
        let Some(lora) = lora else { return Ok((y, ProjSaved::default())) };
        let Some(e) = lora.layout.find(l, m) else { return Ok((y, ProjSaved::default())) };
        let (a, b) = self.lora_ab(lora, e)?;
        let mask = if lora.dropout > 0.0 {
            let (n, d) = x.dims2()?;
            Some(dropout_mask(mask_seed(lora.seed, l, m), n, d, lora.dropout, &self.device)?)
        } else {
            None
        };
        let xd = match &mask {
            Some(mk) => mul_mask(x, mk)?,
            None => x.clone(),
        };
        let z = xd.matmul(&a.t()?)?;
        y = (y + (z.matmul(&b.t()?)? * f64::from(lora.layout.scaling))?)?;
        Ok((y, ProjSaved { xd: Some(xd), z: Some(z), mask }))
    }

    fn proj_bwd(
        &self,
        l: usize,
        m: Module,
        s: &ProjSaved,
        dy: &Tensor,
        lora: Option<&LoraStep>,
        grads: &mut [f32],
    ) -> Result<Tensor> {
        let lin = self.layers[l].proj(m);
        let mut dx = dy.matmul(&lin.w)?;
        let (Some(lora), Some(xd), Some(z)) = (lora, &s.xd, &s.z) else { return Ok(dx) };
        let e = *lora.layout.find(l, m).expect("saved LoRA state implies an entry");
        let (a, b) = self.lora_ab(lora, &e)?;
        let scale = f64::from(lora.layout.scaling);
        // The weight gradients leave the compute dtype right after their matmul.
        let db = (f32(&dy.t()?.matmul(z)?)? * scale)?;
        let dz = (dy.matmul(&b)? * scale)?;
        let da = dz.t()?.matmul(xd)?;
        let mut dxd = dz.matmul(&a)?;
        if let Some(mk) = &s.mask {
            dxd = mul_mask(&dxd, mk)?;
        }
        dx = (dx + dxd)?;
        let r = lora.layout.r;
        add_into(&mut grads[e.a..e.a + r * e.in_dim], &da)?;
        add_into(&mut grads[e.b..e.b + e.out_dim * r], &db)?;
        Ok(dx)
    }

    /// One block forward on `x: [B*T, H]`; returns the output and, when asked, what backward needs.
    fn layer_fwd(&self, l: usize, x: &Tensor, pass: &Pass, save: bool) -> Result<(Tensor, Option<LayerCache>)> {
        let Pass { bt: (b, t), rope: rope_t, mask, lora } = *pass;
        let c = &self.cfg;
        let n = b * t;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let ly = &self.layers[l];
        let (rstd1, n1) = rms(x, c.rms_norm_eps)?;
        let h1 = n1.broadcast_mul(&ly.attn_norm)?;
        let (q2, qs) = self.proj_fwd(l, Module::Q, &h1, lora)?;
        let (k2, ks) = self.proj_fwd(l, Module::K, &h1, lora)?;
        let (v2, vs) = self.proj_fwd(l, Module::V, &h1, lora)?;
        let q = q2.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?;
        let k = k2.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let v = v2.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let q = rope_t.apply(&q)?;
        let k = rope_t.apply(&k)?;
        let rep = nh / nkv;
        let k_rep = repeat_kv(&k, rep)?.contiguous()?;
        let v_rep = repeat_kv(&v, rep)?.contiguous()?;
        let scale = 1.0 / (hd as f64).sqrt();
        // Scores leave the compute dtype straight after the matmul; softmax in f32.
        let s = (f32(&q.matmul(&k_rep.t()?)?)? * scale)?.broadcast_add(mask)?;
        let p = softmax_last_dim(&s)?.to_dtype(self.dtype)?;
        let o = p.matmul(&v_rep)?;
        let o_in = o.transpose(1, 2)?.contiguous()?.reshape((n, nh * hd))?;
        let (attn, os) = self.proj_fwd(l, Module::O, &o_in, lora)?;
        let x2 = (x + attn)?;
        let (rstd2, n2) = rms(&x2, c.rms_norm_eps)?;
        let h2 = n2.broadcast_mul(&ly.mlp_norm)?;
        let (g, gs) = self.proj_fwd(l, Module::Gate, &h2, lora)?;
        let (u, us) = self.proj_fwd(l, Module::Up, &h2, lora)?;
        // SwiGLU in f32, rounded once, as a fused kernel computes it.
        let gf = f32(&g)?;
        let sig = (gf.neg()?.exp()? + 1.0)?.recip()?;
        let a = ((&gf * &sig)? * f32(&u)?)?.to_dtype(self.dtype)?;
        let sig = sig.to_dtype(self.dtype)?;
        let (d, ds) = self.proj_fwd(l, Module::Down, &a, lora)?;
        let y = (&x2 + d)?;
        let cache = save.then(|| LayerCache { rstd1, n1, qs, ks, vs, q, k_rep, v_rep, p, os, rstd2, n2, gs, us, g, u, sig, ds });
        Ok((y, cache))
    }

    fn layer_bwd(&self, l: usize, cc: &LayerCache, dy: &Tensor, pass: &Pass, grads: &mut [f32]) -> Result<Tensor> {
        let Pass { bt: (b, t), rope: rope_t, lora, .. } = *pass;
        let c = &self.cfg;
        let n = b * t;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let rep = nh / nkv;
        let ly = &self.layers[l];
        // MLP: y = x2 + down(silu(g) * u)
        let da = f32(&self.proj_bwd(l, Module::Down, &cc.ds, dy, lora, grads)?)?;
        let (g, sig) = (f32(&cc.g)?, f32(&cc.sig)?);
        let silu = (&g * &sig)?;
        let du = (&da * &silu)?.to_dtype(self.dtype)?;
        // d silu(g)/dg = sig * (1 + g * (1 - sig))
        let dsilu = (&sig * ((&g * (1.0 - &sig)?)? + 1.0)?)?;
        let dg = ((&da * f32(&cc.u)?)? * dsilu)?.to_dtype(self.dtype)?;
        let dh2 = (self.proj_bwd(l, Module::Gate, &cc.gs, &dg, lora, grads)?
            + self.proj_bwd(l, Module::Up, &cc.us, &du, lora, grads)?)?;
        let dx2 = (dy + rms_backward(&dh2, &cc.n2, &cc.rstd2, &ly.mlp_norm)?)?;
        // Attention: x2 = x + o_proj(attn(h1))
        let do_in = self.proj_bwd(l, Module::O, &cc.os, &dx2, lora, grads)?;
        let d_o = do_in.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?;
        let dp = f32(&d_o.matmul(&cc.v_rep.t()?)?)?;
        let dv_rep = cc.p.t()?.matmul(&d_o)?;
        let scale = 1.0 / (hd as f64).sqrt();
        // The softmax backward in f32.
        let p = f32(&cc.p)?;
        let ds = ((&p * dp.broadcast_sub(&(&dp * &p)?.sum_keepdim(D::Minus1)?)?)? * scale)?.to_dtype(self.dtype)?;
        let dq = ds.matmul(&cc.k_rep)?;
        let dk_rep = ds.t()?.matmul(&cc.q)?;
        let dk = unrepeat_kv(&dk_rep, rep)?.contiguous()?;
        let dv = unrepeat_kv(&dv_rep, rep)?.contiguous()?;
        // The inverse rotation: the transpose, i.e. sin negated.
        let dq = rope(&dq.contiguous()?, &rope_t.cos, &rope_t.neg_sin)?;
        let dk = rope(&dk, &rope_t.cos, &rope_t.neg_sin)?;
        let dq2 = dq.transpose(1, 2)?.contiguous()?.reshape((n, nh * hd))?;
        let dk2 = dk.transpose(1, 2)?.contiguous()?.reshape((n, nkv * hd))?;
        let dv2 = dv.transpose(1, 2)?.contiguous()?.reshape((n, nkv * hd))?;
        let dh1 = ((self.proj_bwd(l, Module::Q, &cc.qs, &dq2, lora, grads)?
            + self.proj_bwd(l, Module::K, &cc.ks, &dk2, lora, grads)?)?
            + self.proj_bwd(l, Module::V, &cc.vs, &dv2, lora, grads)?)?;
        dx2 + rms_backward(&dh1, &cc.n1, &cc.rstd1, &ly.attn_norm)?
    }

    /// Summed next-token cross-entropy over labelled positions (in f64, from f32 log-softmax), and
    /// their count. With `grads`, also accumulates `d(loss_sum / denom)/d(lora)` into it (in f32,
    /// whatever the compute dtype). For f16 loss scaling pass `denom / scale`.
    pub fn loss_and_grad(
        &self,
        batch: &Batch,
        lora: Option<&LoraStep>,
        denom: f32,
        grads: Option<&mut [f32]>,
        checkpointing: bool,
    ) -> Result<(f64, usize)> {
        let c = &self.cfg;
        let (b, t) = (batch.b, batch.t);
        let bt = (b, t);
        let rope_t = Rope::new(c, 0, t, self.dtype, &self.device)?;
        let mask = causal_mask(t, t, &self.device)?;
        let pass = Pass { bt, rope: &rope_t, mask: &mask, lora };
        let want_grad = grads.is_some();
        let mut x = self.embed.index_select(&batch.ids.flatten_all()?, 0)?;
        let mut inputs = Vec::new();
        let mut caches = Vec::new();
        for l in 0..c.num_layers {
            let save = want_grad && !checkpointing;
            if want_grad && checkpointing {
                inputs.push(x.clone());
            }
            let (y, cache) = self.layer_fwd(l, &x, &pass, save)?;
            if let Some(cc) = cache {
                caches.push(cc);
            }
            x = y;
        }
        let (rstd, nf) = rms(&x, c.rms_norm_eps)?;
        let hf = nf.broadcast_mul(&self.norm)?;
        // Positions whose next token is labelled.
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for i in 0..b {
            for j in 0..t.saturating_sub(1) {
                let lab = batch.labels[i * t + j + 1];
                if lab != -100 {
                    rows.push((i * t + j) as u32);
                    targets.push(lab as u32);
                }
            }
        }
        let count = rows.len();
        if count == 0 {
            return Ok((0.0, 0));
        }
        let head = self.head();
        let mut loss = 0f64;
        let mut dh_chunks = Vec::new();
        const CHUNK: usize = 1024;
        for (rc, tc) in rows.chunks(CHUNK).zip(targets.chunks(CHUNK)) {
            let idx = Tensor::from_slice(rc, rc.len(), &self.device)?;
            let tgt = Tensor::from_slice(tc, (tc.len(), 1), &self.device)?;
            let hsel = hf.index_select(&idx, 0)?;
            // The head matmul in the compute dtype, everything after it in f32.
            let logits = f32(&hsel.matmul(&head.t()?)?)?;
            let max = logits.max_keepdim(D::Minus1)?;
            let shifted = logits.broadcast_sub(&max)?;
            let sumexp = shifted.exp()?.sum_keepdim(D::Minus1)?;
            let lse = sumexp.log()?;
            let picked = shifted.gather(&tgt, 1)?;
            loss += f64::from((lse - picked)?.sum_all()?.to_scalar::<f32>()?);
            if want_grad {
                let p = shifted.exp()?.broadcast_div(&sumexp)?;
                let minus = Tensor::full(-1f32, (tc.len(), 1), &self.device)?;
                let dlogits = (p.scatter_add(&tgt, &minus, 1)? / f64::from(denom))?.to_dtype(self.dtype)?;
                dh_chunks.push(dlogits.matmul(head)?);
            }
        }
        let Some(grads) = grads else { return Ok((loss, count)) };
        let dsel = Tensor::cat(&dh_chunks, 0)?;
        let idx = Tensor::from_vec(rows, count, &self.device)?;
        let dhf = Tensor::zeros((b * t, c.hidden_size), self.dtype, &self.device)?.index_add(&idx, &dsel, 0)?;
        let mut dx = rms_backward(&dhf, &nf, &rstd, &self.norm)?;
        for l in (0..c.num_layers).rev() {
            let cache = if checkpointing {
                self.layer_fwd(l, &inputs[l], &pass, true)?.1.expect("save=true returns a cache")
            } else {
                caches.pop().expect("one cache per layer")
            };
            dx = self.layer_bwd(l, &cache, &dx, &pass, grads)?;
        }
        Ok((loss, count))
    }

    /// Logits `[T, vocab]` (f32) for `ids` appended after `cache`'s positions (no LoRA: merge first).
    pub fn forward_infer(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        self.forward_infer_with(ids, cache, None)
    }

    /// [`Model::forward_infer`], with the matmuls that `acts` names fed Q8_0-rounded activations,
    /// as ggml's CPU backend feeds a Q8_0 weight (see [`super::ggml_cpu`]).
    pub fn forward_infer_with(&self, ids: &[u32], cache: &mut KvCache, acts: Option<&ActRounding>) -> Result<Tensor> {
        let proj = |l: usize, m: Module, x: &Tensor| -> Result<Tensor> {
            match acts {
                Some(a) if a.q8_0(l, m) => Ok(self.proj_fwd(l, m, &round_q8_0(x)?, None)?.0),
                _ => Ok(self.proj_fwd(l, m, x, None)?.0),
            }
        };
        let c = &self.cfg;
        let t = ids.len();
        let start = cache.len;
        let rope_t = Rope::new(c, start, t, self.dtype, &self.device)?;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let mask = causal_mask(t, start + t, &self.device)?;
        let idx = Tensor::from_slice(ids, t, &self.device)?;
        let mut x = self.embed.index_select(&idx, 0)?;
        for l in 0..c.num_layers {
            let ly = &self.layers[l];
            let (_, n1) = rms(&x, c.rms_norm_eps)?;
            let h1 = n1.broadcast_mul(&ly.attn_norm)?;
            let q2 = proj(l, Module::Q, &h1)?;
            let k2 = proj(l, Module::K, &h1)?;
            let v2 = proj(l, Module::V, &h1)?;
            let q = rope_t.apply(&q2.reshape((1, t, nh, hd))?.transpose(1, 2)?)?;
            let k = rope_t.apply(&k2.reshape((1, t, nkv, hd))?.transpose(1, 2)?)?;
            let v = v2.reshape((1, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
            let fa = acts.is_some_and(ActRounding::f16_attention);
            let (k, v) = if fa { (round_f16(&k)?, round_f16(&v)?) } else { (k, v) };
            let (k, v) = match (&cache.k[l], &cache.v[l]) {
                (Some(pk), Some(pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
                _ => (k, v),
            };
            cache.k[l] = Some(k.clone());
            cache.v[l] = Some(v.clone());
            let o_in = if fa {
                let flat = |x: &Tensor| -> Result<Vec<f32>> { x.to_dtype(DType::F32)?.flatten_all()?.to_vec1() };
                let o = flash_attn_f16(&flat(&q)?, &flat(&k)?, &flat(&v)?, nh, nkv, t, start, hd);
                Tensor::from_vec(o, (t, nh * hd), &self.device)?.to_dtype(self.dtype)?
            } else {
                let rep = nh / nkv;
                let k_rep = repeat_kv(&k, rep)?.contiguous()?;
                let v_rep = repeat_kv(&v, rep)?.contiguous()?;
                let s = (f32(&q.matmul(&k_rep.t()?)?)? * (1.0 / (hd as f64).sqrt()))?.broadcast_add(&mask)?;
                let o = softmax_last_dim(&s)?.to_dtype(self.dtype)?.matmul(&v_rep)?;
                o.transpose(1, 2)?.contiguous()?.reshape((t, nh * hd))?
            };
            let attn = proj(l, Module::O, &o_in)?;
            let x2 = (&x + attn)?;
            let (_, n2) = rms(&x2, c.rms_norm_eps)?;
            let h2 = n2.broadcast_mul(&ly.mlp_norm)?;
            let g = proj(l, Module::Gate, &h2)?;
            let u = proj(l, Module::Up, &h2)?;
            let a = (candle_nn::ops::silu(&f32(&g)?)? * f32(&u)?)?.to_dtype(self.dtype)?;
            let d = proj(l, Module::Down, &a)?;
            x = (x2 + d)?;
        }
        cache.len += t;
        let (_, nf) = rms(&x, c.rms_norm_eps)?;
        let mut hf = nf.broadcast_mul(&self.norm)?;
        if acts.is_some_and(ActRounding::q8_0_head) {
            hf = round_q8_0(&hf)?;
        }
        f32(&hf.matmul(&self.head().t()?)?)
    }

    /// Adds `scaling * B A` into every targeted base weight.
    pub fn merge_lora(&mut self, layout: &Layout, params: &[f32]) -> Result<()> {
        let r = layout.r;
        for e in &layout.entries {
            let a = Tensor::from_slice(&params[e.a..e.a + r * e.in_dim], (r, e.in_dim), &self.device)?;
            let b = Tensor::from_slice(&params[e.b..e.b + e.out_dim * r], (e.out_dim, r), &self.device)?;
            let delta = (b.matmul(&a)? * f64::from(layout.scaling))?;
            let lin = self.layers[e.layer].proj_mut(e.module);
            lin.w = (f32(&lin.w)? + delta)?.to_dtype(self.dtype)?;
        }
        Ok(())
    }

    /// Builds a model from Hugging Face tensor names (`model.layers.0.self_attn.q_proj.weight`, ...),
    /// storing every tensor in `dtype`.
    pub fn from_hf_tensors(
        cfg: Config,
        mut t: HashMap<String, Tensor>,
        device: &Device,
        dtype: DType,
    ) -> std::result::Result<Model, String> {
        let mut take = |name: &str| -> std::result::Result<Tensor, String> {
            let x = t.remove(name).ok_or_else(|| format!("missing tensor `{name}`"))?;
            x.to_dtype(dtype).and_then(|x| x.to_device(device)).map_err(|e| format!("{name}: {e}"))
        };
        let embed = take("model.embed_tokens.weight")?;
        let mut layers = Vec::new();
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            let mut lin = |m: Module, bias: bool| -> std::result::Result<Linear, String> {
                let w = take(&format!("{p}.{}.weight", m.hf_path()))?;
                let b = if bias { Some(take(&format!("{p}.{}.bias", m.hf_path()))?) } else { None };
                Ok(Linear { w, b })
            };
            let qb = cfg.arch == Arch::Qwen2;
            let (q, k, v, o) = (lin(Module::Q, qb)?, lin(Module::K, qb)?, lin(Module::V, qb)?, lin(Module::O, false)?);
            let (gate, up, down) = (lin(Module::Gate, false)?, lin(Module::Up, false)?, lin(Module::Down, false)?);
            let attn_norm = take(&format!("{p}.input_layernorm.weight"))?;
            let mlp_norm = take(&format!("{p}.post_attention_layernorm.weight"))?;
            layers.push(Layer { attn_norm, q, k, v, o, mlp_norm, gate, up, down });
        }
        let norm = take("model.norm.weight")?;
        let lm_head = if cfg.tie_word_embeddings { None } else { Some(take("lm_head.weight")?) };
        Ok(Model { cfg, dtype, embed, layers, norm, lm_head, device: device.clone() })
    }

    /// The same model with every frozen tensor stored in `dtype` (the compute dtype).
    pub fn to_dtype(&self, dtype: DType) -> Result<Model> {
        let cv = |x: &Tensor| x.to_dtype(dtype);
        let lin = |l: &Linear| -> Result<Linear> { Ok(Linear { w: cv(&l.w)?, b: l.b.as_ref().map(cv).transpose()? }) };
        let layers = self
            .layers
            .iter()
            .map(|ly| {
                Ok(Layer {
                    attn_norm: cv(&ly.attn_norm)?,
                    q: lin(&ly.q)?,
                    k: lin(&ly.k)?,
                    v: lin(&ly.v)?,
                    o: lin(&ly.o)?,
                    mlp_norm: cv(&ly.mlp_norm)?,
                    gate: lin(&ly.gate)?,
                    up: lin(&ly.up)?,
                    down: lin(&ly.down)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Model {
            cfg: self.cfg.clone(),
            dtype,
            embed: cv(&self.embed)?,
            layers,
            norm: cv(&self.norm)?,
            lm_head: self.lm_head.as_ref().map(cv).transpose()?,
            device: self.device.clone(),
        })
    }

    /// The model's tensors under Hugging Face names (the inverse of [`Model::from_hf_tensors`]).
    pub fn hf_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed.clone())];
        for (l, ly) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.input_layernorm.weight"), ly.attn_norm.clone()));
            out.push((format!("{p}.post_attention_layernorm.weight"), ly.mlp_norm.clone()));
            for m in Module::ALL {
                let lin = ly.proj(m);
                out.push((format!("{p}.{}.weight", m.hf_path()), lin.w.clone()));
                if let Some(b) = &lin.b {
                    out.push((format!("{p}.{}.bias", m.hf_path()), b.clone()));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h.clone()));
        }
        out
    }

    /// A random f32 model (for tests and benchmarks): normal(0, 0.02) weights, unit norms.
    pub fn random(cfg: Config, seed: u64, device: &Device) -> Result<Model> {
        Self::random_with_std(cfg, seed, 0.02, device)
    }

    /// A random model with normal(0, `std`) weights.
    pub fn random_with_std(cfg: Config, seed: u64, std: f64, device: &Device) -> Result<Model> {
        let mut s = seed;
        let mut rnd = |shape: (usize, usize)| -> Result<Tensor> {
            s = splitmix(s);
            let n = shape.0 * shape.1;
            let v: Vec<f32> = (0..n)
                .map(|i| {
                    // Box-Muller from two hashed uniforms.
                    let r = splitmix(s ^ splitmix(i as u64));
                    let u1 = ((r >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                    let u2 = (((r & 0x7ff) as f64) + 0.5) / 2048.0;
                    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
                })
                .collect();
            Tensor::from_vec(v, shape, device)
        };
        let h = cfg.hidden_size;
        let embed = rnd((cfg.vocab_size, h))?;
        let mut layers = Vec::new();
        for _ in 0..cfg.num_layers {
            let mut lin = |m: Module, bias: bool| -> Result<Linear> {
                let (i, o) = m.dims(&cfg);
                let w = rnd((o, i))?;
                let b = if bias { Some(rnd((1, o))?.reshape(o)?) } else { None };
                Ok(Linear { w, b })
            };
            let qb = cfg.arch == Arch::Qwen2;
            let (q, k, v, o) = (lin(Module::Q, qb)?, lin(Module::K, qb)?, lin(Module::V, qb)?, lin(Module::O, false)?);
            let (gate, up, down) = (lin(Module::Gate, false)?, lin(Module::Up, false)?, lin(Module::Down, false)?);
            let ones = Tensor::ones(h, DType::F32, device)?;
            layers.push(Layer { attn_norm: ones.clone(), q, k, v, o, mlp_norm: ones, gate, up, down });
        }
        let norm = Tensor::ones(h, DType::F32, device)?;
        let lm_head = if cfg.tie_word_embeddings { None } else { Some(rnd((cfg.vocab_size, h))?) };
        Ok(Model { cfg, dtype: DType::F32, embed, layers, norm, lm_head, device: device.clone() })
    }
}

/// Keys and values of the positions seen so far, per layer.
pub struct KvCache {
    k: Vec<Option<Tensor>>,
    v: Vec<Option<Tensor>>,
    /// Positions cached.
    pub len: usize,
}

impl KvCache {
    /// An empty cache for `layers` layers.
    pub fn new(layers: usize) -> KvCache {
        KvCache { k: vec![None; layers], v: vec![None; layers], len: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared tiny shape with an MLP of 24 (not a multiple of the hidden size) and 40 tokens.
    pub(crate) fn tiny(arch: Arch) -> Config {
        Config { intermediate_size: 24, ..Config::tiny(arch, 40, 16) }
    }

    fn batch(dev: &Device) -> Batch {
        let a: Vec<u32> = vec![1, 5, 9, 13, 2, 7, 30];
        let b: Vec<u32> = vec![3, 4, 8, 22, 39];
        let la: Vec<i64> = vec![-100, -100, -100, 13, 2, 7, 30];
        let lb: Vec<i64> = vec![-100, 4, 8, 22, 39];
        Batch::new(&[(&a, la), (&b, lb)], 0, dev).unwrap()
    }

    fn check_grads(arch: Arch, dropout: f32, checkpointing: bool) {
        let dev = Device::Cpu;
        let model = Model::random_with_std(tiny(arch), 7, 0.3, &dev).unwrap();
        let layout = Layout::new(&model.cfg, 2, 4.0, &Module::ALL);
        let mut params = layout.init(3);
        // Non-zero B so every path carries gradient.
        for e in &layout.entries {
            for (i, x) in params[e.b..e.b + e.out_dim * 2].iter_mut().enumerate() {
                *x = ((i * 7 + e.layer * 3) % 11) as f32 * 0.05 - 0.25;
            }
        }
        let bt = batch(&dev);
        let loss_at = |p: &[f32]| {
            let st = LoraStep { layout: &layout, params: p, dropout, seed: 11 };
            model.loss_and_grad(&bt, Some(&st), 1.0, None, true).unwrap().0
        };
        let mut grads = vec![0f32; layout.len];
        let st = LoraStep { layout: &layout, params: &params, dropout, seed: 11 };
        model.loss_and_grad(&bt, Some(&st), 1.0, Some(&mut grads), checkpointing).unwrap();
        let mut checked = 0;
        for e in &layout.entries {
            for off in [e.a, e.a + 5, e.b, e.b + 3] {
                let eps = 1e-2f32;
                let mut p = params.clone();
                p[off] += eps;
                let up = loss_at(&p);
                p[off] -= 2.0 * eps;
                let down = loss_at(&p);
                let fd = (up - down) / (2.0 * f64::from(eps));
                let an = f64::from(grads[off]);
                let tol = 2e-2 * fd.abs().max(an.abs()) + 2e-3;
                assert!(
                    (fd - an).abs() <= tol,
                    "{arch:?} layer {} {:?} off {off}: finite difference {fd} vs analytic {an}",
                    e.layer,
                    e.module
                );
                checked += 1;
            }
        }
        assert!(grads.iter().any(|g| *g != 0.0));
        for e in &layout.entries {
            let n: f32 = grads[e.a..e.a + 2 * e.in_dim].iter().map(|g| g.abs()).sum();
            assert!(n > 0.0, "no gradient reached A of layer {} {:?}", e.layer, e.module);
        }
        assert!(checked > 50);
        params.clear();
    }

    #[test]
    fn lora_gradients_agree_with_finite_differences_llama() {
        check_grads(Arch::Llama, 0.0, true);
    }

    #[test]
    fn lora_gradients_agree_with_finite_differences_qwen2_with_dropout() {
        check_grads(Arch::Qwen2, 0.25, true);
    }

    /// Loss and LoRA gradients of the tiny model (weights std 0.3, non-zero B, dropout 0.1) in
    /// `dtype`. The loss gradient is divided by `shrink` (as if the batch had that many times more
    /// tokens) and multiplied by `scale`, and the gradients are brought back in f32, as the
    /// trainer unscales them for f16; both are powers of two, so f32 is unaffected by them.
    fn grads_in(arch: Arch, dtype: DType, shrink: f32, scale: f32, checkpointing: bool) -> (f64, Layout, Vec<f32>) {
        let dev = Device::Cpu;
        let model = Model::random_with_std(tiny(arch), 7, 0.3, &dev).unwrap().to_dtype(dtype).unwrap();
        let layout = Layout::new(&model.cfg, 2, 4.0, &Module::ALL);
        let mut params = layout.init(3);
        for e in &layout.entries {
            for (i, x) in params[e.b..e.b + e.out_dim * 2].iter_mut().enumerate() {
                *x = ((i * 7 + e.layer * 3) % 11) as f32 * 0.05 - 0.25;
            }
        }
        let bt = batch(&dev);
        let denom = bt.n_targets() as f32;
        let st = LoraStep { layout: &layout, params: &params, dropout: 0.1, seed: 11 };
        let mut grads = vec![0f32; layout.len];
        let (loss, _) = model.loss_and_grad(&bt, Some(&st), denom * shrink / scale, Some(&mut grads), checkpointing).unwrap();
        for g in &mut grads {
            *g = *g / scale * shrink;
        }
        (loss / f64::from(denom), layout, grads)
    }

    /// Worst relative L2 error over the LoRA tensors (each A and B on its own), and where.
    fn worst_rel_err(layout: &Layout, want: &[f32], got: &[f32]) -> (f64, String) {
        let mut worst = (0.0, String::new());
        for e in &layout.entries {
            for (name, off, n) in [("A", e.a, layout.r * e.in_dim), ("B", e.b, e.out_dim * layout.r)] {
                let (w, g) = (&want[off..off + n], &got[off..off + n]);
                let diff: f64 = w.iter().zip(g).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>().sqrt();
                let norm: f64 = w.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>().sqrt();
                assert!(norm > 0.0, "layer {} {:?} {name} has no f32 gradient", e.layer, e.module);
                let rel = diff / norm;
                if rel > worst.0 || rel.is_nan() {
                    worst = (rel, format!("layer {} {:?} {name}", e.layer, e.module));
                }
            }
        }
        worst
    }

    /// The dtype's machine epsilon (2^-8 for bf16's 8 significant bits, 2^-11 for f16's 11).
    fn eps(dtype: DType) -> f64 {
        match dtype {
            DType::BF16 => 2f64.powi(-8),
            DType::F16 => 2f64.powi(-11),
            _ => f64::from(f32::EPSILON),
        }
    }

    /// bf16 and f16 compute (with f32 LoRA weights and gradients) against the f32 path, which the
    /// finite-difference tests above check: the loss within 2 epsilons of the dtype, and every
    /// LoRA tensor's gradient within a relative L2 error of 25 (bf16) or 40 (f16) epsilons.
    /// Measured on this model: bf16 7.9 (Llama) and 15.6 (Qwen2) eps, f16 10.8 and 25.9 eps, the
    /// loss within 0.9 eps; about a third of the gradient error is the rounding of the stored
    /// weights alone, the rest compute rounding (the residual stream and its gradient are in the
    /// dtype). A broken gradient path is off by O(1), i.e. 256 bf16 or 2048 f16 epsilons.
    #[test]
    fn bf16_and_f16_lora_gradients_agree_with_f32() {
        for arch in [Arch::Llama, Arch::Qwen2] {
            let (loss32, layout, g32) = grads_in(arch, DType::F32, 1.0, 1.0, true);
            for (dtype, max_eps) in [(DType::BF16, 25.0), (DType::F16, 40.0)] {
                let (loss, _, g) = grads_in(arch, dtype, 1.0, 1.0, true);
                assert!((loss - loss32).abs() <= 2.0 * eps(dtype) * loss32, "{arch:?} {dtype:?}: loss {loss} vs f32 {loss32}");
                let (err, at) = worst_rel_err(&layout, &g32, &g);
                let in_eps = err / eps(dtype);
                assert!(in_eps <= max_eps, "{arch:?} {dtype:?}: gradient of {at} off by {err:.3e} relative L2 ({in_eps:.1} eps)");
            }
        }
    }

    /// Why f16 needs loss scaling, and that it is wired through: with the loss gradient divided by
    /// 2^20 (a batch of that many times the tokens) unscaled f16 gradients flush to zero, while
    /// the same step scaled by 2^20 and unscaled in f32 matches f32 as closely as a normal step.
    #[test]
    fn f16_loss_scaling_recovers_gradients_that_underflow_without_it() {
        let shrink = 2f32.powi(20);
        let (_, layout, g32) = grads_in(Arch::Llama, DType::F32, shrink, 1.0, true);
        let (_, _, reference) = grads_in(Arch::Llama, DType::F32, 1.0, 1.0, true);
        assert_eq!(g32, reference, "power-of-two shrinking is exact in f32");
        let (err, at) = worst_rel_err(&layout, &g32, &grads_in(Arch::Llama, DType::F16, shrink, 1.0, true).2);
        assert!(err > 0.5, "unscaled f16 gradients should underflow here, but {at} is only off by {err}");
        let (err, at) = worst_rel_err(&layout, &g32, &grads_in(Arch::Llama, DType::F16, shrink, shrink, true).2);
        assert!(err <= 40.0 * eps(DType::F16), "scaled f16: {at} off by {err:.3e}");
    }

    #[test]
    fn mixed_precision_checkpointing_does_not_change_gradients() {
        let (l1, _, g1) = grads_in(Arch::Qwen2, DType::BF16, 1.0, 1.0, true);
        let (l2, _, g2) = grads_in(Arch::Qwen2, DType::BF16, 1.0, 1.0, false);
        assert_eq!((l1, g1), (l2, g2));
    }

    #[test]
    fn bf16_storage_keeps_weights_narrow_and_inference_close_to_f32() {
        let dev = Device::Cpu;
        let model = Model::random_with_std(tiny(Arch::Qwen2), 2, 0.3, &dev).unwrap();
        let half = model.to_dtype(DType::BF16).unwrap();
        assert!(half.hf_tensors().iter().all(|(_, t)| t.dtype() == DType::BF16));
        let ids: Vec<u32> = vec![3, 1, 4, 1, 5, 9, 2, 6];
        let full = model.forward_infer(&ids, &mut KvCache::new(2)).unwrap();
        let got = half.forward_infer(&ids, &mut KvCache::new(2)).unwrap();
        assert_eq!(got.dtype(), DType::F32, "logits come back in f32");
        let scale = full.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let diff = (full - got).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 0.05 * scale, "bf16 logits off by {diff} (max |logit| {scale})");
    }

    /// The rotary tables with per-dimension frequency factors against a straightforward RoPE:
    /// pair `(x[i], x[i + d/2])` at position `p` turned by `p * theta^(-2i/d) / factor[i]`, in f64.
    #[test]
    fn rope_with_frequency_factors_matches_a_reference_rotation() {
        let dev = Device::Cpu;
        let mut cfg = Config::tiny(Arch::Llama, 40, 32);
        let (t, d) = (9, cfg.head_dim);
        let factors: Vec<f32> = (0..d / 2).map(|i| 1.0 + 3.0 * i as f32 / d as f32).collect();
        cfg.rope_freq_factors = Some(factors.clone());
        let x: Vec<f32> = (0..2 * t * d).map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0).collect();
        let xt = Tensor::from_vec(x.clone(), (1, 2, t, d), &dev).unwrap();
        for start in [0, 100] {
            let got: Vec<f32> = Rope::new(&cfg, start, t, DType::F32, &dev)
                .unwrap()
                .apply(&xt)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for h in 0..2 {
                for p in 0..t {
                    let row = &x[(h * t + p) * d..(h * t + p + 1) * d];
                    for i in 0..d / 2 {
                        let freq = cfg.rope_theta.powf(-2.0 * i as f64 / d as f64) / f64::from(factors[i]);
                        let (s, c) = (((start + p) as f64) * freq).sin_cos();
                        let (a, b) = (f64::from(row[i]), f64::from(row[i + d / 2]));
                        let want = [a * c - b * s, b * c + a * s];
                        let at = (h * t + p) * d;
                        for (k, w) in [(i, want[0]), (i + d / 2, want[1])] {
                            assert!(
                                (f64::from(got[at + k]) - w).abs() < 1e-4,
                                "head {h} pos {} dim {k}: {} vs {w}",
                                start + p,
                                got[at + k]
                            );
                        }
                    }
                }
            }
        }
        // Factors of 1.0 are exactly no factors.
        let ones = Config { rope_freq_factors: Some(vec![1.0; d / 2]), ..cfg.clone() };
        let plain = Config { rope_freq_factors: None, ..cfg };
        assert_eq!(ones.inv_freq(), plain.inv_freq());
    }

    #[test]
    fn checkpointing_does_not_change_gradients() {
        let dev = Device::Cpu;
        let model = Model::random_with_std(tiny(Arch::Llama), 1, 0.3, &dev).unwrap();
        let layout = Layout::new(&model.cfg, 2, 4.0, &Module::ALL);
        let params = layout.init(5);
        let bt = batch(&dev);
        let st = LoraStep { layout: &layout, params: &params, dropout: 0.1, seed: 4 };
        let mut g1 = vec![0f32; layout.len];
        let mut g2 = vec![0f32; layout.len];
        model.loss_and_grad(&bt, Some(&st), 1.0, Some(&mut g1), true).unwrap();
        model.loss_and_grad(&bt, Some(&st), 1.0, Some(&mut g2), false).unwrap();
        assert_eq!(g1, g2);
    }

    #[test]
    fn merged_weights_give_the_adapter_logits_and_kv_cache_matches_full_forward() {
        let dev = Device::Cpu;
        let mut model = Model::random_with_std(tiny(Arch::Qwen2), 2, 0.3, &dev).unwrap();
        let layout = Layout::new(&model.cfg, 2, 4.0, &[Module::Q, Module::V, Module::Down]);
        let mut params = layout.init(9);
        for (i, x) in params.iter_mut().enumerate() {
            *x += (i % 5) as f32 * 0.01;
        }
        let ids: Vec<u32> = vec![3, 1, 4, 1, 5, 9, 2, 6];
        // Loss with the adapter (dropout 0) vs loss of the merged model.
        let labels: Vec<i64> = ids.iter().map(|&x| i64::from(x)).collect();
        let bt = Batch::new(&[(&ids, labels)], 0, &dev).unwrap();
        let st = LoraStep { layout: &layout, params: &params, dropout: 0.0, seed: 0 };
        let (with_adapter, _) = model.loss_and_grad(&bt, Some(&st), 1.0, None, true).unwrap();
        let (base, _) = model.loss_and_grad(&bt, None, 1.0, None, true).unwrap();
        model.merge_lora(&layout, &params).unwrap();
        let (merged, _) = model.loss_and_grad(&bt, None, 1.0, None, true).unwrap();
        assert!((with_adapter - merged).abs() < 1e-4 * merged.abs(), "{with_adapter} vs {merged}");
        assert!((with_adapter - base).abs() > 1e-3, "the adapter must change the output");
        // KV-cached incremental logits equal one full pass.
        let mut c1 = KvCache::new(model.cfg.num_layers);
        let full = model.forward_infer(&ids, &mut c1).unwrap();
        let mut c2 = KvCache::new(model.cfg.num_layers);
        let mut rows = vec![model.forward_infer(&ids[..5], &mut c2).unwrap()];
        for &id in &ids[5..] {
            rows.push(model.forward_infer(&[id], &mut c2).unwrap());
        }
        let inc = Tensor::cat(&rows, 0).unwrap();
        let diff = (full - inc).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "{diff}");
    }
}
