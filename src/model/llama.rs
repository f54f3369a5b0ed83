//! The decoder of every architecture in [`super::arch`] with LoRA, an explicit backward pass,
//! and KV-cached inference.
//!
//! One block: `h = rms_norm(x)`; `q, k, v` projections of `h` (with biases where the
//! architecture has them); a per-head RMSNorm of q and of k where it has one (Qwen3); RoPE on q
//! and k; causal attention; the output projection added to `x`; then `rms_norm`, a SwiGLU MLP,
//! added again. The architectures differ in which tensors exist, not in code paths: a block
//! applies the biases and head norms its model has.
//!
//! Why an explicit backward: candle's autograd keeps the whole graph alive, computes gradients
//! of frozen weights and stops silently at forward-only ops (TRAINING.md). Here each decoder
//! block has a hand-written backward that produces only what LoRA needs: the input gradient
//! (through frozen weights) and the A/B gradients. With checkpointing (the default) the forward
//! pass keeps only each block's input, and the backward recomputes one block at a time, so
//! activation memory is one block's worth plus one hidden state per layer.
//!
//! One code path for the CPU and CUDA: the block is candle matmuls plus the fused ops of
//! [`super::ops`] (RMS norm, RoPE, flash-style causal attention, SwiGLU, the LoRA path of each
//! projection with its dropout, cross-entropy), each a hand-written kernel on CUDA and a composition of candle ops on the CPU
//! (the reference). Shapes: hidden states are `[N, H]` with `N = batch * seq`; attention works
//! on `[B, heads, T, head_dim]` views of the projections (no copies on CUDA; K/V heads are
//! never repeated; no `[B, H, T, T]` tensor is kept, the backward recomputes probabilities
//! from the saved log-sum-exp). Padding is on the right, so causality alone keeps real tokens
//! from seeing padding, and padded positions carry no loss.
//!
//! LoRA follows peft: `y = x W^T + b + (alpha/r) * (dropout(x) A^T) B^T`, with a separate dropout
//! mask per module, a counter-based hash of (seed, step, layer, module, element) computed where
//! it is applied (on the GPU, nothing is built on the host), so the recomputation in the
//! backward pass, and a resumed run, see the same masks. A and B are views of the flat f32
//! master buffer on the device, cast once per micro-batch ([`LoraStep`]); their gradients are
//! written into a flat f32 device buffer ([`LoraGrads`]), never copied to the host. The
//! `alpha/r` scaling is folded into B's cast (once per micro-batch), not applied to each
//! `[N, out]` output.
//!
//! # Precision
//!
//! [`Model::dtype`] is the compute dtype: f32, or bf16/f16 for mixed precision, split the way the
//! fast trainers (peft under autocast, unsloth, Liger) split it:
//!
//! | in the compute dtype | in f32 |
//! |---|---|
//! | frozen weights, biases, norm weights, embeddings | LoRA A/B master weights (the flat buffer), their gradients, AdamW moments |
//! | hidden states, the residual stream and its gradient | RMSNorm statistics and arithmetic (forward and backward), rounded once |
//! | every matmul (A and B are cast down for it) | attention: scores, softmax, `lse`, the whole backward (rounded once per output) |
//! | RoPE inputs/outputs (tables rounded to the dtype, as transformers does) | RoPE and SwiGLU arithmetic; dropout masks |
//! | logits out of the head matmul (as transformers) | log-softmax, cross-entropy, the loss sum and `dlogits` (rounded once) |
//!
//! LoRA's A and B gradients are summed in f32 and written into the f32 gradient buffer (on CUDA
//! by the fused backward, in a fixed order; on the CPU each matmul's result is upcast and copied). Scaling the loss for f16 is the caller's business: pass `denom / scale` to
//! [`Model::loss_and_grad`] (exact for a power-of-two scale).
//!
//! candle 0.11's CPU backend has every op used here for bf16 and f16 (unary, binary, reductions,
//! index_select/index_add/gather/scatter_add, rope, casts), but no bf16 matmul kernel: it widens
//! both operands to f32, multiplies with gemm's f32 kernel and rounds the result, which costs a
//! conversion of each frozen weight per use (BENCHMARKS.md has the numbers). f16 matmuls go
//! through gemm's f16 kernel.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::ops::softmax_last_dim;

use super::arch::{self, Init, LayerSlot, Slot, TensorSpec};
use super::base_quant::{BaseQuant, QuantWeight};
use super::config::Config;
use super::error::ModelError;
use super::ggml_cpu::{flash_attn_f16, round_f16, round_q8_0, ActRounding};
use super::lora::{Layout, Module};
use super::ops;
use super::rng::{normal, splitmix};

/// A frozen projection's weight: dense in the model's dtype, or stored in 4 or 8 bits and
/// dequantized for each matmul (lora-train's `base_quant`, [`super::base_quant`]).
#[derive(Debug, Clone)]
pub enum Weight {
    Dense(Tensor),
    Quant(QuantWeight),
}

impl Weight {
    /// The weight as a dense tensor of `dtype`: the tensor itself when it is already that, else
    /// a converted or dequantized copy.
    pub fn dense(&self, dtype: DType) -> Result<Tensor> {
        match self {
            Weight::Dense(t) => t.to_dtype(dtype),
            Weight::Quant(q) => q.dequantize(dtype),
        }
    }

    /// `[out, in]`.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Weight::Dense(t) => {
                let d = t.dims();
                (d[0], d.get(1).copied().unwrap_or(1))
            }
            Weight::Quant(q) => (q.rows, q.cols),
        }
    }

    /// The dense tensor, if the weight is stored dense.
    pub fn as_dense(&self) -> Option<&Tensor> {
        match self {
            Weight::Dense(t) => Some(t),
            Weight::Quant(_) => None,
        }
    }
}

/// A frozen projection.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`.
    pub w: Weight,
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
    /// `[head_dim]`: the RMSNorm of each head of q, after the projection and before RoPE (Qwen3).
    pub q_norm: Option<Tensor>,
    /// `[head_dim]`: the same for k.
    pub k_norm: Option<Tensor>,
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
    /// Whether any projection is stored quantized.
    pub fn has_quantized(&self) -> bool {
        Module::ALL.into_iter().any(|m| matches!(self.proj(m).w, Weight::Quant(_)))
    }

    /// The layer with its quantized projections dequantized to `dtype` (dense ones shared).
    pub fn dequantized(&self, dtype: DType) -> Result<Layer> {
        let mut out = self.clone();
        for m in Module::ALL {
            let lin = out.proj_mut(m);
            if let Weight::Quant(q) = &lin.w {
                lin.w = Weight::Dense(q.dequantize(dtype)?);
            }
        }
        Ok(out)
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

/// LoRA parameters for one micro-batch, on the model's device.
///
/// The master weights are one flat f32 tensor (the optimizer's buffer); [`LoraStep::new`] casts
/// it to the compute dtype once (a no-op for f32), and once more multiplied by `alpha / r`, and
/// takes each entry's A `[r, in]` and scaled B `[out, r]` as views of those (narrow +
/// reshape), so a projection call neither uploads, converts nor scales anything.
pub struct LoraStep<'a> {
    pub layout: &'a Layout,
    /// Per entry, in layout order: (A, scaling * B) in the compute dtype.
    ab: Vec<(Tensor, Tensor)>,
    /// Entry index of (layer, module), `None` where the module is not targeted.
    index: Vec<[Option<usize>; 7]>,
    /// Dropout probability (0 in eval).
    pub dropout: f32,
    /// Seed of this micro-batch's dropout masks.
    pub seed: u64,
    /// Index of the batch's first activation row (`B * T` rows) in its micro-batch; 0 unless
    /// the batch is a data-parallel shard, which then draws the mask rows the whole micro-batch
    /// would draw for it (see [`crate::train::parallel`]).
    pub first_row: usize,
}

impl<'a> LoraStep<'a> {
    /// Views of `params` (flat f32 `[layout.len]`, on the model's device) in `dtype`.
    pub fn new(layout: &'a Layout, params: &Tensor, dtype: DType, dropout: f32, seed: u64) -> Result<LoraStep<'a>> {
        if params.dims() != [layout.len] || params.dtype() != DType::F32 {
            candle_core::bail!("LoRA parameters: expected f32 [{}], got {:?} {:?}", layout.len, params.dtype(), params.dims());
        }
        let cast = params.to_dtype(dtype)?;
        let scaled = params.affine(f64::from(layout.scaling), 0.0)?.to_dtype(dtype)?;
        let r = layout.r;
        let mut ab = Vec::with_capacity(layout.entries.len());
        let layers = layout.entries.iter().map(|e| e.layer + 1).max().unwrap_or(0);
        let mut index = vec![[None; 7]; layers];
        for (i, e) in layout.entries.iter().enumerate() {
            let a = cast.narrow(0, e.a, r * e.in_dim)?.reshape((r, e.in_dim))?;
            let b = scaled.narrow(0, e.b, e.out_dim * r)?.reshape((e.out_dim, r))?;
            ab.push((a, b));
            index[e.layer][e.module as usize] = Some(i);
        }
        Ok(LoraStep { layout, ab, index, dropout, seed, first_row: 0 })
    }

    /// [`LoraStep::new`] from a host buffer (uploaded once): tests and one-off evaluations.
    pub fn from_host(
        layout: &'a Layout,
        params: &[f32],
        dtype: DType,
        device: &Device,
        dropout: f32,
        seed: u64,
    ) -> Result<LoraStep<'a>> {
        LoraStep::new(layout, &Tensor::from_slice(params, params.len(), device)?, dtype, dropout, seed)
    }

    /// The same views with another micro-batch's dropout seed.
    pub fn with_seed(mut self, seed: u64) -> LoraStep<'a> {
        self.seed = seed;
        self
    }

    /// The same views for a data-parallel shard whose first activation row is row `first_row` of
    /// its micro-batch (see [`LoraStep::first_row`]).
    pub fn with_first_row(mut self, first_row: usize) -> LoraStep<'a> {
        self.first_row = first_row;
        self
    }

    fn entry(&self, layer: usize, m: Module) -> Option<usize> {
        self.index.get(layer).and_then(|x| x[m as usize])
    }

    /// (layer, module)'s dropout mask for activations `x: [N, d]`: the seed, and the index of
    /// x's first element in the micro-batch (the `first` of [`ops::lora_dropout_at`]).
    fn mask(&self, x: &Tensor, layer: usize, m: Module) -> Result<(u64, u64)> {
        let d = x.dim(candle_core::D::Minus1)?;
        Ok((mask_seed(self.seed, layer, m), (self.first_row * d) as u64))
    }
}

/// LoRA gradients accumulated over micro-batches on the model's device: one flat f32 tensor in
/// the layout's order (`None` until the first micro-batch).
#[derive(Debug, Default, Clone)]
pub struct LoraGrads {
    flat: Option<Tensor>,
}

impl LoraGrads {
    /// No gradient yet.
    pub fn new() -> LoraGrads {
        LoraGrads::default()
    }

    /// The accumulated gradient, flat f32 `[layout.len]`.
    pub fn tensor(&self) -> Option<&Tensor> {
        self.flat.as_ref()
    }

    /// The accumulated gradient on the host (zeros of `len` if none): tests and checks only.
    pub fn to_vec(&self, len: usize) -> Result<Vec<f32>> {
        match &self.flat {
            Some(t) => t.to_device(&Device::Cpu)?.to_vec1(),
            None => Ok(vec![0.0; len]),
        }
    }

    fn add(&mut self, g: Tensor) -> Result<()> {
        self.flat = Some(match self.flat.take() {
            None => g,
            Some(acc) => (acc + g)?,
        });
        Ok(())
    }
}

/// A tokenized micro-batch, right-padded.
pub struct Batch {
    /// `[B, T]` u32 token ids.
    pub ids: Tensor,
    /// `B * T` labels (-100 = no loss), unshifted, as the dataset stores them.
    pub labels: Vec<i64>,
    pub b: usize,
    pub t: usize,
    /// The rows (`i * T + j`, u32) whose next token is labelled, and those labels (i64), on the
    /// device; `None` when no position is labelled. Uploaded with the ids, before any compute.
    targets: Option<(Tensor, Tensor)>,
    n_targets: usize,
}

impl Batch {
    /// Right-pads sequences into a batch.
    pub fn new(seqs: &[(&[u32], Vec<i64>)], pad: u32, device: &Device) -> Result<Batch> {
        let t = seqs.iter().map(|s| s.0.len()).max().unwrap_or(1).max(1);
        Self::with_len(seqs, pad, t, device)
    }

    /// Right-pads sequences to length `t` (at least the longest): a data-parallel shard pads to
    /// its whole micro-batch's length, so its rows line up with that micro-batch's.
    pub fn with_len(seqs: &[(&[u32], Vec<i64>)], pad: u32, t: usize, device: &Device) -> Result<Batch> {
        let b = seqs.len();
        if let Some(s) = seqs.iter().find(|s| s.0.len() > t || s.1.len() > t) {
            candle_core::bail!("a sequence of {} tokens does not fit a batch of length {t}", s.0.len().max(s.1.len()));
        }
        let mut ids = vec![pad; b * t];
        let mut labels = vec![-100i64; b * t];
        for (i, (s, l)) in seqs.iter().enumerate() {
            ids[i * t..i * t + s.len()].copy_from_slice(s);
            labels[i * t..i * t + l.len()].copy_from_slice(l);
        }
        let (mut rows, mut next) = (Vec::new(), Vec::new());
        for i in 0..b {
            for j in 0..t.saturating_sub(1) {
                let lab = labels[i * t + j + 1];
                if lab != ops::IGNORE_INDEX {
                    rows.push((i * t + j) as u32);
                    next.push(lab);
                }
            }
        }
        let n_targets = rows.len();
        let targets = if n_targets == 0 {
            None
        } else {
            Some((Tensor::from_vec(rows, n_targets, device)?, Tensor::from_vec(next, n_targets, device)?))
        };
        Ok(Batch { ids: Tensor::from_vec(ids, (b, t), device)?, labels, b, t, targets, n_targets })
    }

    /// Number of positions with a next-token label.
    pub fn n_targets(&self) -> usize {
        self.n_targets
    }
}

fn mask_seed(step_seed: u64, layer: usize, m: Module) -> u64 {
    splitmix(step_seed ^ splitmix((layer as u64) << 8 | m as u64))
}

/// What one block's backward needs. The projections' inputs are kept (the dropped-out input
/// of a LoRA matmul is recomputed from them), with each LoRA `z = dropout(x) A^T`
/// (`[N, r]`, indexed by module). No `[B, H, T, T]` tensor: attention keeps `o` and `lse`.
struct LayerCache {
    x: Tensor,
    rstd1: Tensor,
    h1: Tensor,
    /// With q/k head norms: the q and k projections before them, and their `rstd`s.
    qn: Option<HeadNormed>,
    kn: Option<HeadNormed>,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    lse: Tensor,
    o_in: Tensor,
    x2: Tensor,
    rstd2: Tensor,
    h2: Tensor,
    g: Tensor,
    u: Tensor,
    a: Tensor,
    z: [Option<Tensor>; 7],
}

/// A projection `[N, heads * head_dim]` before its per-head norm, and the norm's `rstd`
/// (`[N, heads]`), which the backward takes.
struct HeadNormed {
    x: Tensor,
    rstd: Tensor,
}

/// RMSNorm over each head's `head_dim` values of the projection `x: [N, heads * head_dim]`
/// with the weights `w: [head_dim]` (Qwen3's q and k norms); `x` itself without weights. The
/// fused norm op takes the `[N, heads, head_dim]` view as `N * heads` rows.
fn head_norm(x: &Tensor, w: Option<&Tensor>, head_dim: usize, eps: f64) -> Result<(Tensor, Option<HeadNormed>)> {
    let Some(w) = w else { return Ok((x.clone(), None)) };
    let (n, width) = x.dims2()?;
    let (y, rstd) = ops::rms_norm_fwd(&x.reshape((n, width / head_dim, head_dim))?, w, eps)?;
    Ok((y.reshape((n, width))?, Some(HeadNormed { x: x.clone(), rstd })))
}

/// The input gradient of [`head_norm`] given the output's `dy: [N, heads * head_dim]`.
fn head_norm_bwd(dy: &Tensor, saved: Option<&HeadNormed>, w: Option<&Tensor>) -> Result<Tensor> {
    let (Some(s), Some(w)) = (saved, w) else { return Ok(dy.clone()) };
    let (n, width) = dy.dims2()?;
    let shape = (n, width / w.dim(0)?, w.dim(0)?);
    ops::rms_norm_bwd(&dy.reshape(shape)?, &s.x.reshape(shape)?, w, &s.rstd)?.reshape((n, width))
}

/// What every block of one forward/backward pass shares.
#[derive(Clone, Copy)]
struct Pass<'a> {
    /// (batch, sequence length).
    bt: (usize, usize),
    rope: &'a Rope,
    lora: Option<&'a LoraStep<'a>>,
}

/// Rotary tables for positions `0..t`.
pub struct Rope {
    /// `[t, head_dim / 2]` f32 holding values rounded to the compute dtype (transformers casts
    /// its f32 tables to the activations' dtype; the fused op reads f32, so no per-call cast).
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// Tables for `t` positions starting at `start`, computed in f32 and rounded to `dtype`.
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
        let table =
            |v: Vec<f32>| Tensor::from_vec(v, (t, half), &Device::Cpu)?.to_dtype(dtype)?.to_dtype(DType::F32)?.to_device(device);
        Ok(Rope { cos: table(cos)?, sin: table(sin)? })
    }

    /// Rotates `x: [B, heads, T, head_dim]` (rotate-half layout, any strides with a unit last
    /// one) by the positions' angles; contiguous out.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        ops::rope_fwd(x, &self.cos, &self.sin)
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

fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, h, t, d) = x.dims4()?;
    x.unsqueeze(2)?.expand((b, h, rep, t, d))?.reshape((b, h * rep, t, d))
}

/// The loss rows are handled in chunks of this many: bounds the `[rows, vocab]` logits.
const LOSS_CHUNK: usize = 1024;

impl Model {
    fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// `y = x W^T + b + dropout(x) A^T (scaling B)^T`; returns `y` and, for a LoRA entry,
    /// `z = dropout(x) A^T` (`[N, r]`).
    fn proj_fwd(&self, ly: &Layer, l: usize, m: Module, x: &Tensor, lora: Option<&LoraStep>) -> Result<(Tensor, Option<Tensor>)> {
        let lin = ly.proj(m);
        let mut y = x.matmul(&lin.w.dense(x.dtype())?.t()?)?;
        if let Some(b) = &lin.b {
            y = y.broadcast_add(b)?;
        }
        let Some((lora, i)) = lora.and_then(|s| Some((s, s.entry(l, m)?))) else { return Ok((y, None)) };
        let (a, b) = &lora.ab[i];
        let (seed, first) = lora.mask(x, l, m)?;
        let z = ops::lora_down(x, a, seed, lora.dropout, first)?;
        Ok((ops::lora_up_add(&y, &z, b)?, Some(z)))
    }

    /// The input gradient of [`Model::proj_fwd`] given `dy`; writes the entry's A and B
    /// gradients (f32) into `buf` at the layout's offsets.
    #[allow(clippy::too_many_arguments)]
    fn proj_bwd(
        &self,
        ly: &Layer,
        l: usize,
        m: Module,
        x: &Tensor,
        z: Option<&Tensor>,
        dy: &Tensor,
        lora: Option<&LoraStep>,
        buf: Option<&Tensor>,
    ) -> Result<Tensor> {
        let lin = ly.proj(m);
        let dx = dy.matmul(&lin.w.dense(dy.dtype())?)?;
        let (Some(lora), Some(z), Some(buf)) = (lora, z, buf) else { return Ok(dx) };
        let i = lora.entry(l, m).expect("a saved LoRA z implies an entry");
        let (e, (a, b)) = (&lora.layout.entries[i], &lora.ab[i]);
        let (seed, first) = lora.mask(x, l, m)?;
        let slot = ops::LoraGradSlot { buf, a: e.a, b: e.b, scaling: lora.layout.scaling };
        ops::lora_bwd(dy, x, z, &dx, a, b, seed, lora.dropout, first, &slot)
    }

    /// One block forward on `x: [B*T, H]`; returns the output and, when asked, what backward needs.
    fn layer_fwd(&self, ly: &Layer, l: usize, x: &Tensor, pass: &Pass, save: bool) -> Result<(Tensor, Option<LayerCache>)> {
        let Pass { bt: (b, t), rope: rope_t, lora } = *pass;
        let c = &self.cfg;
        let n = b * t;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let (h1, rstd1) = ops::rms_norm_fwd(x, &ly.attn_norm, c.rms_norm_eps)?;
        let (q2, zq) = self.proj_fwd(ly, l, Module::Q, &h1, lora)?;
        let (k2, zk) = self.proj_fwd(ly, l, Module::K, &h1, lora)?;
        let (v2, zv) = self.proj_fwd(ly, l, Module::V, &h1, lora)?;
        let (q2, qn) = head_norm(&q2, ly.q_norm.as_ref(), hd, c.rms_norm_eps)?;
        let (k2, kn) = head_norm(&k2, ly.k_norm.as_ref(), hd, c.rms_norm_eps)?;
        // `[B*T, heads*D]` seen as `[B, heads, T, D]` without a copy; the ops read the strides.
        let heads = |p: &Tensor, h: usize| p.reshape((b, t, h, hd))?.transpose(1, 2);
        let q = rope_t.apply(&heads(&q2, nh)?)?;
        let k = rope_t.apply(&heads(&k2, nkv)?)?;
        let v = heads(&v2, nkv)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let (o, lse) = ops::attention_fwd(&q, &k, &v, scale)?;
        // On CUDA `o` is a view of a token-major buffer, so this is free (a copy on the CPU).
        let o_in = o.transpose(1, 2)?.reshape((n, nh * hd))?;
        let (attn, zo) = self.proj_fwd(ly, l, Module::O, &o_in, lora)?;
        let x2 = (x + attn)?;
        let (h2, rstd2) = ops::rms_norm_fwd(&x2, &ly.mlp_norm, c.rms_norm_eps)?;
        let (g, zg) = self.proj_fwd(ly, l, Module::Gate, &h2, lora)?;
        let (u, zu) = self.proj_fwd(ly, l, Module::Up, &h2, lora)?;
        let a = ops::swiglu_fwd(&g, &u)?;
        let (d, zd) = self.proj_fwd(ly, l, Module::Down, &a, lora)?;
        let y = (&x2 + d)?;
        let cache = save.then(|| LayerCache {
            x: x.clone(),
            rstd1,
            h1,
            qn,
            kn,
            q,
            k,
            v,
            o,
            lse,
            o_in,
            x2,
            rstd2,
            h2,
            g,
            u,
            a,
            z: [zq, zk, zv, zo, zg, zu, zd],
        });
        Ok((y, cache))
    }

    fn layer_bwd(&self, ly: &Layer, l: usize, cc: &LayerCache, dy: &Tensor, pass: &Pass, buf: Option<&Tensor>) -> Result<Tensor> {
        let Pass { bt: (b, t), rope: rope_t, lora } = *pass;
        let c = &self.cfg;
        let n = b * t;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let z = |m: Module| cc.z[m as usize].as_ref();
        // MLP: y = x2 + down(silu(g) * u)
        let da = self.proj_bwd(ly, l, Module::Down, &cc.a, z(Module::Down), dy, lora, buf)?;
        let (dg, du) = ops::swiglu_bwd(&da, &cc.g, &cc.u)?;
        let dh2 = (self.proj_bwd(ly, l, Module::Gate, &cc.h2, z(Module::Gate), &dg, lora, buf)?
            + self.proj_bwd(ly, l, Module::Up, &cc.h2, z(Module::Up), &du, lora, buf)?)?;
        let dx2 = (dy + ops::rms_norm_bwd(&dh2, &cc.x2, &ly.mlp_norm, &cc.rstd2)?)?;
        // Attention: x2 = x + o_proj(attn(h1))
        let do_in = self.proj_bwd(ly, l, Module::O, &cc.o_in, z(Module::O), &dx2, lora, buf)?;
        let dout = do_in.reshape((b, t, nh, hd))?.transpose(1, 2)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let (dq, dk, dv) = ops::attention_bwd(&dout, &cc.q, &cc.k, &cc.v, &cc.o, &cc.lse, scale)?;
        // The inverse rotation, written token-major: the projections' `[B*T, heads*D]` gradients.
        let dq2 = ops::rope_bwd_tokens(&dq, &rope_t.cos, &rope_t.sin)?.reshape((n, nh * hd))?;
        let dk2 = ops::rope_bwd_tokens(&dk, &rope_t.cos, &rope_t.sin)?.reshape((n, nkv * hd))?;
        let dq2 = head_norm_bwd(&dq2, cc.qn.as_ref(), ly.q_norm.as_ref())?;
        let dk2 = head_norm_bwd(&dk2, cc.kn.as_ref(), ly.k_norm.as_ref())?;
        let dv2 = dv.transpose(1, 2)?.reshape((n, nkv * hd))?;
        let dh1 = ((self.proj_bwd(ly, l, Module::Q, &cc.h1, z(Module::Q), &dq2, lora, buf)?
            + self.proj_bwd(ly, l, Module::K, &cc.h1, z(Module::K), &dk2, lora, buf)?)?
            + self.proj_bwd(ly, l, Module::V, &cc.h1, z(Module::V), &dv2, lora, buf)?)?;
        dx2 + ops::rms_norm_bwd(&dh1, &cc.x, &ly.attn_norm, &cc.rstd1)?
    }

    /// Summed next-token cross-entropy over labelled positions (f32, on the device: read it
    /// once per optimizer step, not per micro-batch), and their count. With `grads` (and
    /// `lora`), also accumulates `d(loss_sum / denom)/d(lora)` into it, in f32 whatever the
    /// compute dtype, without leaving the device. For f16 loss scaling pass `denom / scale`.
    pub fn loss_and_grad(
        &self,
        batch: &Batch,
        lora: Option<&LoraStep>,
        denom: f32,
        grads: Option<&mut LoraGrads>,
        checkpointing: bool,
    ) -> Result<(Tensor, usize)> {
        let c = &self.cfg;
        let (b, t) = (batch.b, batch.t);
        let rope_t = Rope::new(c, 0, t, self.dtype, &self.device)?;
        let pass = Pass { bt: (b, t), rope: &rope_t, lora };
        let want_grad = grads.is_some();
        let mut x = self.embed.index_select(&batch.ids.flatten_all()?, 0)?;
        let mut inputs = Vec::new();
        let mut caches = Vec::new();
        for l in 0..c.num_layers {
            let save = want_grad && !checkpointing;
            if want_grad && checkpointing {
                inputs.push(x.clone());
            }
            let (y, cache) = self.layer_fwd(&self.layers[l], l, &x, &pass, save)?;
            if let Some(cc) = cache {
                caches.push(cc);
            }
            x = y;
        }
        let Some((rows, labels)) = &batch.targets else { return Ok((Tensor::zeros((), DType::F32, &self.device)?, 0)) };
        let count = batch.n_targets;
        let (hf, rstd) = ops::rms_norm_fwd(&x, &self.norm, c.rms_norm_eps)?;
        let head = self.head();
        let mut loss: Option<Tensor> = None;
        let mut dh_chunks = Vec::new();
        let scale = 1.0 / f64::from(denom);
        for start in (0..count).step_by(LOSS_CHUNK) {
            let len = LOSS_CHUNK.min(count - start);
            // The head matmul in the compute dtype; the fused op does the rest in f32.
            let logits = hf.index_select(&rows.narrow(0, start, len)?, 0)?.matmul(&head.t()?)?;
            let lab = labels.narrow(0, start, len)?;
            let ce = if want_grad {
                ops::cross_entropy_fwd_bwd(&logits, &lab, scale)?
            } else {
                ops::cross_entropy_loss(&logits, &lab)?
            };
            loss = Some(match loss {
                None => ce.loss_sum,
                Some(s) => (s + ce.loss_sum)?,
            });
            if let Some(dl) = ce.dlogits {
                dh_chunks.push(dl.matmul(head)?);
            }
        }
        let loss = loss.expect("count > 0");
        let Some(grads) = grads else { return Ok((loss, count)) };
        let dsel = Tensor::cat(&dh_chunks, 0)?;
        let dhf = Tensor::zeros((b * t, c.hidden_size), self.dtype, &self.device)?.index_add(rows, &dsel, 0)?;
        drop(dh_chunks);
        let mut dx = ops::rms_norm_bwd(&dhf, &x, &self.norm, &rstd)?;
        // Every entry's A and B gradients are written into this buffer once per pass (no
        // host copy); it joins the step's accumulator with one add.
        let buf = match lora {
            Some(s) => Some(Tensor::zeros(s.layout.len, DType::F32, &self.device)?),
            None => None,
        };
        for l in (0..c.num_layers).rev() {
            // With checkpointing a quantized layer is dequantized once for its recomputed
            // forward and its backward (one layer's dense weights at a time), not twice.
            let dense;
            let ly = if checkpointing && self.layers[l].has_quantized() {
                dense = self.layers[l].dequantized(self.dtype)?;
                &dense
            } else {
                &self.layers[l]
            };
            let cache = if checkpointing {
                self.layer_fwd(ly, l, &inputs[l], &pass, true)?.1.expect("save=true returns a cache")
            } else {
                caches.pop().expect("one cache per layer")
            };
            dx = self.layer_bwd(ly, l, &cache, &dx, &pass, buf.as_ref())?;
        }
        if let Some(buf) = buf {
            grads.add(buf)?;
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
                Some(a) if a.q8_0(l, m) => Ok(self.proj_fwd(&self.layers[l], l, m, &round_q8_0(x)?, None)?.0),
                _ => Ok(self.proj_fwd(&self.layers[l], l, m, x, None)?.0),
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
            let (h1, _) = ops::rms_norm_fwd(&x, &ly.attn_norm, c.rms_norm_eps)?;
            let q2 = proj(l, Module::Q, &h1)?;
            let k2 = proj(l, Module::K, &h1)?;
            let v2 = proj(l, Module::V, &h1)?;
            let (q2, _) = head_norm(&q2, ly.q_norm.as_ref(), hd, c.rms_norm_eps)?;
            let (k2, _) = head_norm(&k2, ly.k_norm.as_ref(), hd, c.rms_norm_eps)?;
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
            let (h2, _) = ops::rms_norm_fwd(&x2, &ly.mlp_norm, c.rms_norm_eps)?;
            let g = proj(l, Module::Gate, &h2)?;
            let u = proj(l, Module::Up, &h2)?;
            let a = ops::swiglu_fwd(&g, &u)?;
            let d = proj(l, Module::Down, &a)?;
            x = (x2 + d)?;
        }
        cache.len += t;
        let (mut hf, _) = ops::rms_norm_fwd(&x, &self.norm, c.rms_norm_eps)?;
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
            lin.w = Weight::Dense((lin.w.dense(DType::F32)? + delta)?.to_dtype(self.dtype)?);
        }
        Ok(())
    }

    /// Builds a model from Hugging Face tensor names (`model.layers.0.self_attn.q_proj.weight`, ...),
    /// storing every tensor in `dtype`. Each tensor of the model's list must be there, in the
    /// shape the configuration implies; others are ignored.
    pub fn from_hf_tensors(
        cfg: Config,
        t: HashMap<String, Tensor>,
        device: &Device,
        dtype: DType,
    ) -> std::result::Result<Model, ModelError> {
        Model::from_hf_weights(cfg, t.into_iter().map(|(k, v)| (k, Weight::Dense(v))).collect(), device, dtype)
    }

    /// [`Model::from_hf_tensors`] where projection weights may come quantized (kept as they are;
    /// a quantized tensor anywhere else is an error).
    pub fn from_hf_weights(
        cfg: Config,
        mut t: HashMap<String, Weight>,
        device: &Device,
        dtype: DType,
    ) -> std::result::Result<Model, ModelError> {
        Model::from_slots(cfg, dtype, device, |spec| {
            let x = t.remove(&spec.hf).ok_or_else(|| ModelError::MissingTensor { name: spec.hf.clone() })?;
            let got = match &x {
                Weight::Dense(d) => d.dims().to_vec(),
                Weight::Quant(q) => vec![q.rows, q.cols],
            };
            if got != spec.shape {
                return Err(ModelError::ShapeMismatch { name: spec.hf.clone(), got, want: spec.shape.clone() });
            }
            match x {
                Weight::Dense(d) => d
                    .to_dtype(dtype)
                    .and_then(|d| d.to_device(device))
                    .map(Weight::Dense)
                    .map_err(|source| ModelError::Tensor { name: spec.hf.clone(), source }),
                Weight::Quant(q) if matches!(spec.slot, Slot::Layer(_, LayerSlot::Weight(_))) => Ok(Weight::Quant(q)),
                Weight::Quant(q) => Err(ModelError::Tensor {
                    name: spec.hf.clone(),
                    source: candle_core::Error::Msg(format!("stored as {}; only projection weights may be", q.format)),
                }),
            }
        })
    }

    /// Builds a model of `cfg` from `get`, which gives the tensor of each entry of
    /// [`arch::tensors`], in that order. Only projection weights may be [`Weight::Quant`].
    fn from_slots<E>(
        cfg: Config,
        dtype: DType,
        device: &Device,
        mut get: impl FnMut(&TensorSpec) -> std::result::Result<Weight, E>,
    ) -> std::result::Result<Model, E> {
        let mut by_slot = HashMap::new();
        for spec in arch::tensors(&cfg) {
            by_slot.insert(spec.slot, get(&spec)?);
        }
        const LISTED: &str = "the tensor list has every tensor a model needs";
        const DENSE: &str = "only projection weights are stored quantized";
        let mut weights = HashMap::new();
        let mut dense = HashMap::new();
        for (slot, w) in by_slot {
            match w {
                Weight::Dense(t) => {
                    dense.insert(slot, t);
                }
                q @ Weight::Quant(_) => {
                    assert!(matches!(slot, Slot::Layer(_, LayerSlot::Weight(_))), "{DENSE}");
                    weights.insert(slot, q);
                }
            }
        }
        let mut take = |slot: Slot| dense.remove(&slot);
        let embed = take(Slot::Embed).expect(LISTED);
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let mut lin = |m: Module| {
                let slot = Slot::Layer(l, LayerSlot::Weight(m));
                let w = match take(slot) {
                    Some(t) => Weight::Dense(t),
                    None => weights.remove(&slot).expect(LISTED),
                };
                Linear { w, b: take(Slot::Layer(l, LayerSlot::Bias(m))) }
            };
            let (q, k, v, o) = (lin(Module::Q), lin(Module::K), lin(Module::V), lin(Module::O));
            let (gate, up, down) = (lin(Module::Gate), lin(Module::Up), lin(Module::Down));
            let attn_norm = take(Slot::Layer(l, LayerSlot::AttnNorm)).expect(LISTED);
            let mlp_norm = take(Slot::Layer(l, LayerSlot::MlpNorm)).expect(LISTED);
            let (q_norm, k_norm) = (take(Slot::Layer(l, LayerSlot::QNorm)), take(Slot::Layer(l, LayerSlot::KNorm)));
            layers.push(Layer { attn_norm, q, k, v, o, q_norm, k_norm, mlp_norm, gate, up, down });
        }
        let norm = take(Slot::Norm).expect(LISTED);
        let lm_head = take(Slot::LmHead);
        Ok(Model { cfg, dtype, embed, layers, norm, lm_head, device: device.clone() })
    }

    /// The weight in `slot`, if the model has one there (a clone: tensors share their storage).
    fn weight(&self, slot: Slot) -> Option<Weight> {
        if let Slot::Layer(l, LayerSlot::Weight(m)) = slot {
            return self.layers.get(l).map(|ly| ly.proj(m).w.clone());
        }
        self.tensor(slot).cloned().map(Weight::Dense)
    }

    /// The tensor in `slot`, if the model has one there. A projection stored quantized has no
    /// tensor: [`Model::dequantize_base`] first.
    pub fn tensor(&self, slot: Slot) -> Option<&Tensor> {
        match slot {
            Slot::Embed => Some(&self.embed),
            Slot::Norm => Some(&self.norm),
            Slot::LmHead => self.lm_head.as_ref(),
            Slot::Layer(l, s) => {
                let ly = self.layers.get(l)?;
                match s {
                    LayerSlot::AttnNorm => Some(&ly.attn_norm),
                    LayerSlot::MlpNorm => Some(&ly.mlp_norm),
                    LayerSlot::QNorm => ly.q_norm.as_ref(),
                    LayerSlot::KNorm => ly.k_norm.as_ref(),
                    LayerSlot::Weight(m) => ly.proj(m).w.as_dense(),
                    LayerSlot::Bias(m) => ly.proj(m).b.as_ref(),
                }
            }
        }
    }

    /// Stores every projection weight as `quant` says (one at a time: the dense copy of each
    /// goes as soon as its quantized one exists). `none` and `gguf` change nothing here (`gguf`
    /// is the loader's: it keeps a GGUF file's blocks).
    pub fn quantize_base(&mut self, quant: BaseQuant) -> Result<()> {
        let device = self.device.clone();
        for ly in &mut self.layers {
            for m in Module::ALL {
                let lin = ly.proj_mut(m);
                let Weight::Dense(t) = &lin.w else { continue };
                let (rows, cols) = t.dims2()?;
                let Some(format) = quant.format_for(cols) else { continue };
                let values: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                lin.w = Weight::Quant(QuantWeight::quantize(&values, rows, cols, format, &device)?);
            }
        }
        Ok(())
    }

    /// Stores every quantized projection weight dense again, in the model's dtype: the values
    /// training saw (what a QLoRA adapter is merged onto).
    pub fn dequantize_base(&mut self) -> Result<()> {
        let dtype = self.dtype;
        for ly in &mut self.layers {
            for m in Module::ALL {
                let lin = ly.proj_mut(m);
                if let Weight::Quant(q) = &lin.w {
                    lin.w = Weight::Dense(q.dequantize(dtype)?);
                }
            }
        }
        Ok(())
    }

    /// Bytes of the projection weights stored quantized, and how many of them there are.
    pub fn quantized_bytes(&self) -> (usize, usize) {
        self.layers
            .iter()
            .flat_map(|ly| Module::ALL.into_iter().map(move |m| &ly.proj(m).w))
            .filter_map(|w| match w {
                Weight::Quant(q) => Some(q.byte_len()),
                Weight::Dense(_) => None,
            })
            .fold((0, 0), |(b, n), x| (b + x, n + 1))
    }

    /// The model's tensors with their entries of [`arch::tensors`], in that order.
    pub fn named_tensors(&self) -> Vec<(TensorSpec, Tensor)> {
        arch::tensors(&self.cfg)
            .into_iter()
            .map(|spec| {
                let t = self
                    .tensor(spec.slot)
                    .expect("a model has every tensor of its config's list (and quantized ones are dequantized first)")
                    .clone();
                (spec, t)
            })
            .collect()
    }

    /// The same model with every dense frozen tensor stored in `dtype` (the compute dtype);
    /// quantized weights stay as they are.
    pub fn to_dtype(&self, dtype: DType) -> Result<Model> {
        Model::from_slots(self.cfg.clone(), dtype, &self.device, |spec| {
            match self.weight(spec.slot).expect("a model has every tensor of its config's list") {
                Weight::Dense(t) => t.to_dtype(dtype).map(Weight::Dense),
                q => Ok(q),
            }
        })
    }

    /// The Hugging Face names of the tensors a model of `cfg` has, in [`Model::hf_tensors`]'s
    /// order: what [`Model::from_hf_tensors`] takes, for readers that stream the tensors from
    /// the files instead of loading a model.
    pub fn hf_names(cfg: &Config) -> Vec<String> {
        arch::tensors(cfg).into_iter().map(|s| s.hf).collect()
    }

    /// The model's tensors under Hugging Face names (the inverse of [`Model::from_hf_tensors`]).
    pub fn hf_tensors(&self) -> Vec<(String, Tensor)> {
        self.named_tensors().into_iter().map(|(spec, t)| (spec.hf, t)).collect()
    }

    /// A random f32 model (for tests and benchmarks): normal(0, 0.02) weights, unit norms.
    pub fn random(cfg: Config, seed: u64, device: &Device) -> Result<Model> {
        Self::random_with_std(cfg, seed, 0.02, device)
    }

    /// A random model of `cfg` made on `device` directly in `dtype` (benchmarks of large shapes:
    /// a 7B model never exists in f32 or on the host): normal(0, `std`) weights from the
    /// device's generator, each tensor drawn in f32 and cast at once, unit norms. Not
    /// reproducible across devices; tests use [`Model::random_with_std`].
    pub fn random_on_device(cfg: Config, std: f64, dtype: DType, device: &Device) -> Result<Model> {
        Model::random_on_device_quantized(cfg, std, dtype, device, BaseQuant::None)
    }

    /// [`Model::random_on_device`] with the projections stored as `quant` says, each quantized
    /// (on the host) as soon as it is drawn: the dense model never exists at once.
    pub fn random_on_device_quantized(cfg: Config, std: f64, dtype: DType, device: &Device, quant: BaseQuant) -> Result<Model> {
        Model::from_slots(cfg, dtype, device, |spec| {
            let t = match spec.init {
                Init::Normal => Tensor::randn(0f32, std as f32, spec.shape.as_slice(), device)?,
                Init::Ones => Tensor::ones(spec.shape.as_slice(), DType::F32, device)?,
            };
            match (spec.slot, spec.shape.as_slice()) {
                (Slot::Layer(_, LayerSlot::Weight(_)), &[rows, cols]) => match quant.format_for(cols) {
                    Some(format) => {
                        let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
                        drop(t);
                        QuantWeight::quantize(&v, rows, cols, format, device).map(Weight::Quant)
                    }
                    None => t.to_dtype(dtype).map(Weight::Dense),
                },
                _ => t.to_dtype(dtype).map(Weight::Dense),
            }
        })
    }

    /// A random model with normal(0, `std`) weights: the tensors of [`arch::tensors`] in order,
    /// each drawn from its own seed (the previous one through [`splitmix`], starting at `seed`),
    /// norms ones.
    pub fn random_with_std(cfg: Config, seed: u64, std: f64, device: &Device) -> Result<Model> {
        let mut s = seed;
        Model::from_slots(cfg, DType::F32, device, |spec| {
            match spec.init {
                Init::Normal => {
                    s = splitmix(s);
                    let n = spec.shape.iter().product::<usize>();
                    let v: Vec<f32> = (0..n).map(|i| normal(s, i as u64, std)).collect();
                    Tensor::from_vec(v, spec.shape.as_slice(), device)
                }
                Init::Ones => Tensor::ones(spec.shape.as_slice(), DType::F32, device),
            }
            .map(Weight::Dense)
        })
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
    use crate::model::config::Arch;

    /// The shared tiny shape with an MLP of 24 (not a multiple of the hidden size) and 40 tokens;
    /// for Qwen3, heads of 16 on the hidden size of 16 (heads x head size need not be the
    /// hidden size there: Qwen3-0.6B's are twice it).
    pub(crate) fn tiny(arch: Arch) -> Config {
        let cfg = Config { intermediate_size: 24, ..Config::tiny(arch, 40, 16) };
        match arch {
            Arch::Qwen3 => Config { head_dim: 16, ..cfg },
            _ => cfg,
        }
    }

    /// [`Model::random_with_std`] of [`tiny`] with std 0.3, and q/k head norm weights other than
    /// ones (spread over 0.6..1.4) where the architecture has them, so that the tests see the
    /// weights applied (other architectures: exactly the random model).
    fn test_model(arch: Arch, seed: u64) -> Model {
        let mut model = Model::random_with_std(tiny(arch), seed, 0.3, &Device::Cpu).unwrap();
        for (l, ly) in model.layers.iter_mut().enumerate() {
            for (j, w) in [&mut ly.q_norm, &mut ly.k_norm].into_iter().enumerate() {
                if let Some(w) = w {
                    let v: Vec<f32> = (0..w.dim(0).unwrap()).map(|i| 0.6 + 0.1 * ((i * 7 + l * 3 + j * 5) % 9) as f32).collect();
                    *w = Tensor::from_vec(v, w.dim(0).unwrap(), &Device::Cpu).unwrap();
                }
            }
        }
        model
    }

    #[test]
    fn hf_names_are_hf_tensors_names_in_order() {
        for arch in Arch::ALL {
            for tie in [false, true] {
                let cfg = Config { tie_word_embeddings: tie, ..tiny(arch) };
                let m = Model::random(cfg.clone(), 1, &Device::Cpu).unwrap();
                let names: Vec<String> = m.hf_tensors().into_iter().map(|(n, _)| n).collect();
                assert_eq!(Model::hf_names(&cfg), names, "{arch:?} tied {tie}");
            }
        }
    }

    #[test]
    fn from_hf_tensors_names_the_missing_or_misshapen_tensor() {
        let cfg = tiny(Arch::Qwen2);
        let tensors = || -> HashMap<String, Tensor> {
            Model::random(cfg.clone(), 1, &Device::Cpu).unwrap().hf_tensors().into_iter().collect()
        };
        let load = |t| Model::from_hf_tensors(cfg.clone(), t, &Device::Cpu, DType::F32);
        assert!(load(tensors()).is_ok());
        let mut t = tensors();
        t.remove("model.layers.1.self_attn.v_proj.bias");
        match load(t) {
            Err(ModelError::MissingTensor { name }) => assert_eq!(name, "model.layers.1.self_attn.v_proj.bias"),
            other => panic!("{other:?}"),
        }
        let mut t = tensors();
        t.insert("model.layers.0.mlp.up_proj.weight".into(), Tensor::zeros((24, 8), DType::F32, &Device::Cpu).unwrap());
        let e = load(t).unwrap_err();
        assert!(matches!(&e, ModelError::ShapeMismatch { got, want, .. } if got == &[24, 8] && want == &[24, 16]), "{e:?}");
        assert_eq!(
            e.to_string(),
            "tensor `model.layers.0.mlp.up_proj.weight` has shape [24, 8], the configuration implies [24, 16]"
        );
    }

    #[test]
    fn an_unknown_model_type_lists_the_supported_ones() {
        let e = Config::from_hf_json(&serde_json::json!({"model_type": "gpt2"})).unwrap_err();
        assert_eq!(e.to_string(), format!("unsupported model_type `gpt2` (supported: {})", Arch::hf_model_types()));
        let e = Config::from_hf_json(&serde_json::json!({"model_type": "qwen2"})).unwrap_err();
        assert!(matches!(e, ModelError::MissingConfig { key: "hidden_size" }), "{e:?}");
    }

    fn scalar(t: &Tensor) -> f64 {
        f64::from(t.to_scalar::<f32>().unwrap())
    }

    fn batch(dev: &Device) -> Batch {
        let a: Vec<u32> = vec![1, 5, 9, 13, 2, 7, 30];
        let b: Vec<u32> = vec![3, 4, 8, 22, 39];
        let la: Vec<i64> = vec![-100, -100, -100, 13, 2, 7, 30];
        let lb: Vec<i64> = vec![-100, 4, 8, 22, 39];
        Batch::new(&[(&a, la), (&b, lb)], 0, dev).unwrap()
    }

    /// A data-parallel shard's mask is the whole micro-batch's mask at the shard's rows, for odd
    /// and even row widths (an odd start element splits a hash pair).
    #[test]
    fn a_shards_dropout_mask_is_its_rows_of_the_whole_mask() {
        let dev = Device::Cpu;
        for d in [5, 6] {
            let x = Tensor::ones((7, d), DType::F32, &dev).unwrap();
            let full = ops::lora_dropout(&x, 9, 0.3).unwrap().to_vec2::<f32>().unwrap();
            for (first, n) in [(1, 3), (2, 5), (6, 1)] {
                let xs = Tensor::ones((n, d), DType::F32, &dev).unwrap();
                let shard = ops::lora_dropout_at(&xs, 9, 0.3, (first * d) as u64).unwrap().to_vec2::<f32>().unwrap();
                assert_eq!(shard, full[first..first + n].to_vec(), "d {d}, rows {first}..{}", first + n);
            }
        }
    }

    fn check_grads(arch: Arch, dropout: f32, checkpointing: bool) {
        let dev = Device::Cpu;
        let model = test_model(arch, 7);
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
            let st = LoraStep::from_host(&layout, p, model.dtype, &dev, dropout, 11).unwrap();
            scalar(&model.loss_and_grad(&bt, Some(&st), 1.0, None, true).unwrap().0)
        };
        let mut g = LoraGrads::new();
        let st = LoraStep::from_host(&layout, &params, model.dtype, &dev, dropout, 11).unwrap();
        model.loss_and_grad(&bt, Some(&st), 1.0, Some(&mut g), checkpointing).unwrap();
        let grads = g.to_vec(layout.len).unwrap();
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

    /// A model with its projections stored quantized computes exactly what its dequantized dense
    /// twin computes (the quantized path dequantizes to the compute dtype per matmul), with and
    /// without checkpointing; the loss moves from the dense original's only by quantization.
    #[test]
    fn a_quantized_base_trains_as_its_dequantized_twin() {
        use crate::model::base_quant::BaseQuant;
        let dev = Device::Cpu;
        for (quant, cfg) in [
            (BaseQuant::Nf4, tiny(Arch::Qwen2)),
            (BaseQuant::Q8_0, Config { intermediate_size: 64, ..Config::tiny(Arch::Llama, 40, 32) }),
            (BaseQuant::Q4K, Config { intermediate_size: 64, ..Config::tiny(Arch::Qwen3, 40, 32) }),
        ] {
            let dense = Model::random_with_std(cfg, 5, 0.3, &dev).unwrap();
            let mut quantized = dense.clone();
            quantized.quantize_base(quant).unwrap();
            let (bytes, n) = quantized.quantized_bytes();
            assert_eq!(n, 14, "{quant:?}: every projection of 2 layers");
            assert!(bytes > 0);
            let mut twin = quantized.clone();
            twin.dequantize_base().unwrap();
            assert_eq!(twin.quantized_bytes(), (0, 0));
            let layout = Layout::new(&dense.cfg, 2, 4.0, &Module::ALL);
            let mut params = layout.init(3);
            for e in &layout.entries {
                for (i, x) in params[e.b..e.b + e.out_dim * 2].iter_mut().enumerate() {
                    *x = ((i * 7 + e.layer * 3) % 11) as f32 * 0.05 - 0.25;
                }
            }
            let bt = batch(&dev);
            let run = |m: &Model, ckpt: bool| {
                let st = LoraStep::from_host(&layout, &params, m.dtype, &dev, 0.1, 11).unwrap();
                let mut g = LoraGrads::new();
                let loss = scalar(&m.loss_and_grad(&bt, Some(&st), 1.0, Some(&mut g), ckpt).unwrap().0);
                (loss, g.to_vec(layout.len).unwrap())
            };
            for ckpt in [true, false] {
                assert_eq!(run(&quantized, ckpt), run(&twin, ckpt), "{quant:?} checkpointing {ckpt}");
            }
            let (lq, _) = run(&quantized, true);
            let (ld, _) = run(&dense, true);
            assert!((lq - ld).abs() < 0.05 * ld, "{quant:?}: quantized loss {lq}, dense {ld}");
            assert_ne!(lq, ld, "{quant:?}: the weights were quantized");
            // bf16 compute over the quantized base: the twin converted to bf16 matches too.
            let (qb, tb) = (quantized.to_dtype(DType::BF16).unwrap(), twin.to_dtype(DType::BF16).unwrap());
            assert_eq!(run(&qb, true), run(&tb, true), "{quant:?} in bf16");
        }
    }

    #[test]
    fn lora_gradients_agree_with_finite_differences_llama() {
        check_grads(Arch::Llama, 0.0, true);
    }

    #[test]
    fn lora_gradients_agree_with_finite_differences_qwen2_with_dropout() {
        check_grads(Arch::Qwen2, 0.25, true);
    }

    /// Through the q/k head norms' backward; without checkpointing, so from the saved cache.
    #[test]
    fn lora_gradients_agree_with_finite_differences_qwen3_with_dropout() {
        check_grads(Arch::Qwen3, 0.25, false);
    }

    /// Loss and LoRA gradients of the tiny model (weights std 0.3, non-zero B, dropout 0.1) in
    /// `dtype`. The loss gradient is divided by `shrink` (as if the batch had that many times more
    /// tokens) and multiplied by `scale`, and the gradients are brought back in f32, as the
    /// trainer unscales them for f16; both are powers of two, so f32 is unaffected by them.
    fn grads_in(arch: Arch, dtype: DType, shrink: f32, scale: f32, checkpointing: bool) -> (f64, Layout, Vec<f32>) {
        let dev = Device::Cpu;
        let model = test_model(arch, 7).to_dtype(dtype).unwrap();
        let layout = Layout::new(&model.cfg, 2, 4.0, &Module::ALL);
        let mut params = layout.init(3);
        for e in &layout.entries {
            for (i, x) in params[e.b..e.b + e.out_dim * 2].iter_mut().enumerate() {
                *x = ((i * 7 + e.layer * 3) % 11) as f32 * 0.05 - 0.25;
            }
        }
        let bt = batch(&dev);
        let denom = bt.n_targets() as f32;
        let st = LoraStep::from_host(&layout, &params, dtype, &dev, 0.1, 11).unwrap();
        let mut acc = LoraGrads::new();
        let (loss, _) = model.loss_and_grad(&bt, Some(&st), denom * shrink / scale, Some(&mut acc), checkpointing).unwrap();
        let loss = scalar(&loss);
        let mut grads = acc.to_vec(layout.len).unwrap();
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
    /// LoRA tensor's gradient within a relative L2 error of 40 epsilons of the dtype.
    /// Measured on this model with the fused ops: bf16 7.1 (Llama) and 23.7 (Qwen2, layer 0
    /// up B) eps, f16 9.2 and 18.1 eps, the loss within 0.7 eps (before the fused ops: bf16 7.9
    /// and 15.6, f16 10.8 and 25.9, under a bf16 bound of 25, which the worst entry now nearly
    /// reaches; 40 keeps the same ~1.6x headroom). Part of the gradient error is the rounding
    /// of the stored weights alone, the rest compute rounding (the residual stream and its
    /// gradient are in the dtype). A broken gradient path is off by O(1), i.e. 256 bf16 or 2048
    /// f16 epsilons.
    #[test]
    fn bf16_and_f16_lora_gradients_agree_with_f32() {
        for arch in Arch::ALL {
            let (loss32, layout, g32) = grads_in(arch, DType::F32, 1.0, 1.0, true);
            for (dtype, max_eps) in [(DType::BF16, 40.0), (DType::F16, 40.0)] {
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
        for arch in [Arch::Llama, Arch::Qwen3] {
            let model = test_model(arch, 1);
            let layout = Layout::new(&model.cfg, 2, 4.0, &Module::ALL);
            let params = layout.init(5);
            let bt = batch(&dev);
            let st = LoraStep::from_host(&layout, &params, model.dtype, &dev, 0.1, 4).unwrap();
            let (mut g1, mut g2) = (LoraGrads::new(), LoraGrads::new());
            model.loss_and_grad(&bt, Some(&st), 1.0, Some(&mut g1), true).unwrap();
            model.loss_and_grad(&bt, Some(&st), 1.0, Some(&mut g2), false).unwrap();
            assert_eq!(g1.to_vec(layout.len).unwrap(), g2.to_vec(layout.len).unwrap(), "{arch:?}");
        }
    }

    /// The inference forward (KV-cached, its own code) and the training forward give the same
    /// loss, for every architecture.
    #[test]
    fn inference_and_training_forwards_agree() {
        let dev = Device::Cpu;
        let ids: Vec<u32> = vec![3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5];
        let labels: Vec<i64> = ids.iter().map(|&x| i64::from(x)).collect();
        let bt = Batch::new(&[(&ids, labels)], 0, &dev).unwrap();
        for arch in Arch::ALL {
            let model = test_model(arch, 3);
            let train = scalar(&model.loss_and_grad(&bt, None, 1.0, None, true).unwrap().0);
            let logits = model.forward_infer(&ids, &mut KvCache::new(model.cfg.num_layers)).unwrap();
            let logp = candle_nn::ops::log_softmax(&logits, 1).unwrap().to_vec2::<f32>().unwrap();
            let infer: f64 = (0..ids.len() - 1).map(|j| -f64::from(logp[j][ids[j + 1] as usize])).sum();
            assert!((train - infer).abs() < 1e-5 * infer, "{arch:?}: training {train} vs inference {infer}");
        }
    }

    #[test]
    fn merged_weights_give_the_adapter_logits_and_kv_cache_matches_full_forward() {
        for arch in [Arch::Qwen2, Arch::Qwen3] {
            merged_weights_and_kv_cache(arch);
        }
    }

    fn merged_weights_and_kv_cache(arch: Arch) {
        let dev = Device::Cpu;
        let mut model = test_model(arch, 2);
        let layout = Layout::new(&model.cfg, 2, 4.0, &[Module::Q, Module::V, Module::Down]);
        let mut params = layout.init(9);
        for (i, x) in params.iter_mut().enumerate() {
            *x += (i % 5) as f32 * 0.01;
        }
        let ids: Vec<u32> = vec![3, 1, 4, 1, 5, 9, 2, 6];
        // Loss with the adapter (dropout 0) vs loss of the merged model.
        let labels: Vec<i64> = ids.iter().map(|&x| i64::from(x)).collect();
        let bt = Batch::new(&[(&ids, labels)], 0, &dev).unwrap();
        let st = LoraStep::from_host(&layout, &params, model.dtype, &dev, 0.0, 0).unwrap();
        let with_adapter = scalar(&model.loss_and_grad(&bt, Some(&st), 1.0, None, true).unwrap().0);
        let base = scalar(&model.loss_and_grad(&bt, None, 1.0, None, true).unwrap().0);
        model.merge_lora(&layout, &params).unwrap();
        let merged = scalar(&model.loss_and_grad(&bt, None, 1.0, None, true).unwrap().0);
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
