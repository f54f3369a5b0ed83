//! Fused forward/backward ops for the decoder's explicit backward: RMS norm, RoPE, SwiGLU,
//! cross-entropy, LoRA dropout, the LoRA path of a projection, and causal attention.
//!
//! Each op is one function on candle [`Tensor`]s that dispatches on the device:
//!
//! 1. **CPU**: a composition of candle's generic tensor ops ([`generic`]); this is the reference.
//! 2. **CUDA** (`--features cuda`): one hand-written kernel per op (two for cross-entropy and
//!    for the attention backward; a pass or two plus small fixed-order reductions for LoRA), from `kernels/*.cu`, compiled to PTX by `build.rs` and
//!    loaded once per device. The same [`generic`] compositions also run on CUDA, as the
//!    baseline the kernels are timed against (`examples/ops_check.rs`).
//!
//! The ops are in explicit-backward style: a forward returns what its backward needs (RMS norm's
//! `rstd`), and backwards recompute cheap intermediates (SwiGLU's sigmoid) instead of taking them
//! as saved tensors. No op records an autograd graph.
//!
//! # Dtypes
//! Activations may be f32, bf16 or f16 (f64 too on the CPU, which the tests use for finite
//! differences). Kernels load each element, compute in f32, accumulate every reduction in f32,
//! and round the result to the activations' dtype once, as the CPU reference does. Side outputs
//! are f32: RMS norm's `rstd`, the cross-entropy loss. RoPE tables may come in any float dtype;
//! they are used in f32.
//!
//! # Testing
//! - Unit tests (CPU, in CI): each op against a plain f64 reference in f32/bf16/f16, and each
//!   backward against central finite differences of its forward, in f64.
//! - `scripts/kernel-emu/run.sh`: the CUDA kernels themselves on the CPU (a thread per CUDA
//!   thread), against naive f64 loops; no GPU or nvcc needed.
//! - `examples/ops_check.rs` (GPU): every op's kernel against the CPU reference on SmolLM2-135M,
//!   7B-like and odd shapes in f32/bf16/f16, and timings against the generic composition.
//!
//! # Where llama.rs uses them
//! Forward: `rms_norm_fwd` for each norm (the block caches `x`, `rstd`); `rope_fwd` on the
//! `[B, T, heads, D]` projection viewed through `transpose(1, 2)` (no `contiguous`);
//! `attention_fwd` with K/V un-repeated (the block caches `q`, `k`, `v`, `o`, `lse`; no
//! `[B, H, T, T]` probabilities); `swiglu_fwd` (cache `g`, `u`); for each LoRA projection
//! `lora_down` (cache `z`) and `lora_up_add` on the frozen matmul's output. Backward: `lora_bwd`
//! after each frozen input-gradient matmul (it writes dA, dB into the step's gradient buffer); `swiglu_bwd`; `rms_norm_bwd`; `attention_bwd` on `dout` viewed as
//! `[B, H, T, D]`; `rope_bwd_tokens` on `dq`, `dk`, which yields the projections'
//! `[B * T, heads * D]` gradient by a reshape. Loss: `cross_entropy_fwd_bwd` per chunk of labelled rows,
//! `loss_sum` summed on the device. Inference (`forward_infer`, with a KV cache) uses
//! `rms_norm_fwd`, `rope_fwd` and `swiglu_fwd`, and keeps its own attention (queries and keys
//! of different lengths).
//!
//! # Limits
//! - The kernels index rows and hidden sizes with 32-bit integers (element counts are 64-bit).
//! - A cross-entropy label outside `[0, V)` other than [`IGNORE_INDEX`] is an error on the CPU
//!   and a NaN loss on CUDA (checking it there would need a copy to the host).
//! - The LoRA kernels take ranks up to [`LORA_KERNEL_MAX_RANK`] (compiled for 8, 16, 32, 64; a
//!   rank in between runs the next one with zero padding); larger ranks, and f64, run the
//!   [`generic`] composition on the GPU. At most 65535 * 128 rows.

use candle_core::{bail, DType, Device, Result, Tensor, D};

#[cfg(feature = "cuda")]
mod cuda;
pub mod generic;

/// The label of a position without loss (PyTorch's and Hugging Face's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

fn is_cuda(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cuda(_))
}

fn check_float(what: &str, t: &Tensor) -> Result<()> {
    match t.dtype() {
        DType::F32 | DType::BF16 | DType::F16 | DType::F64 => Ok(()),
        dt => bail!("{what}: expected a float tensor, got {dt:?}"),
    }
}

fn check_same(what: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dims() != b.dims() || a.dtype() != b.dtype() {
        bail!("{what}: shapes/dtypes differ: {:?} {:?} vs {:?} {:?}", a.dims(), a.dtype(), b.dims(), b.dtype());
    }
    if !a.device().same_device(b.device()) {
        bail!("{what}: tensors on different devices");
    }
    Ok(())
}

/// NF4 dequantization on a GPU (lora-train's `base_quant: nf4`): `n` values in `dtype` from
/// bitsandbytes' packed indices (u8), double-quantized block scales (u8), their scales (f32) and
/// the 256-value dynamic map (f32), all contiguous on one CUDA device. The CPU reference is
/// [`crate::model::base_quant::Nf4::dequantize`]; the kernel does the same f32 operations.
#[cfg(feature = "cuda")]
pub fn nf4_dequantize(
    packed: &Tensor,
    qabsmax: &Tensor,
    absmax2: &Tensor,
    code8: &Tensor,
    offset: f32,
    n: usize,
    dtype: DType,
) -> Result<Tensor> {
    if packed.elem_count() != n.div_ceil(2) || qabsmax.elem_count() != n.div_ceil(64) || code8.elem_count() != 256 {
        bail!("nf4_dequantize: {} packed bytes and {} scales for {n} values", packed.elem_count(), qabsmax.elem_count());
    }
    cuda::nf4_dequantize(packed, qabsmax, absmax2, code8, offset, n, dtype)
}

/// RMS norm over the last dimension: `rstd = 1 / sqrt(mean(x^2) + eps)`, `y = (x * rstd) * w`.
///
/// `x: [.., H]`, `w: [H]` (x's dtype or f32). Returns `y` (x's shape and dtype) and `rstd`
/// (x's leading dims, f32), which [`rms_norm_bwd`] takes.
pub fn rms_norm_fwd(x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    check_float("rms_norm_fwd x", x)?;
    check_float("rms_norm_fwd w", w)?;
    let h = x.dim(D::Minus1)?;
    if w.dims() != [h] {
        bail!("rms_norm_fwd: w is {:?}, expected [{h}]", w.dims());
    }
    if is_cuda(x) {
        #[cfg(feature = "cuda")]
        return cuda::rms_norm_fwd(x, w, eps);
    }
    generic::rms_norm_fwd(x, w, eps)
}

/// The input gradient of [`rms_norm_fwd`] (`w` is frozen, so there is no `dw`):
/// `dx = rstd * (dn - n * mean(dn * n))` with `n = x * rstd`, `dn = dy * w`.
pub fn rms_norm_bwd(dy: &Tensor, x: &Tensor, w: &Tensor, rstd: &Tensor) -> Result<Tensor> {
    check_float("rms_norm_bwd x", x)?;
    check_same("rms_norm_bwd dy/x", dy, x)?;
    let h = x.dim(D::Minus1)?;
    if w.dims() != [h] || rstd.dims() != &x.dims()[..x.rank() - 1] {
        bail!("rms_norm_bwd: x {:?} with w {:?} and rstd {:?}", x.dims(), w.dims(), rstd.dims());
    }
    if is_cuda(x) {
        #[cfg(feature = "cuda")]
        return cuda::rms_norm_bwd(dy, x, w, rstd);
    }
    generic::rms_norm_bwd(dy, x, w, rstd)
}

fn check_rope(what: &str, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<()> {
    check_float(what, x)?;
    let (_, _, t, d) = x.dims4()?;
    let ok = |c: &Tensor| matches!(c.dims(), &[tc, h] if tc >= t && h * 2 == d);
    if d % 2 != 0 || !ok(cos) || !ok(sin) {
        bail!("{what}: x {:?} needs cos/sin [>= {t}, {}], got {:?} and {:?}", x.dims(), d / 2, cos.dims(), sin.dims());
    }
    Ok(())
}

/// Rotary position embedding, rotate-half convention (Hugging Face; candle's `rope`, which
/// llama.rs used before this op): with `x1, x2` the two halves of the last dimension,
/// `y = [x1 * cos - x2 * sin, x2 * cos + x1 * sin]`.
///
/// `x: [B, heads, T, D]`, any strides with a unit last stride (the CUDA kernel reads through
/// them, so the transposed view of a `[B, T, heads, D]` projection needs no copy first);
/// `cos`, `sin: [>= T, D / 2]`, rows for positions `0..T` first. Returns a contiguous
/// `[B, heads, T, D]` in x's dtype.
pub fn rope_fwd(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    check_rope("rope_fwd", x, cos, sin)?;
    if is_cuda(x) {
        #[cfg(feature = "cuda")]
        return cuda::rope(x, cos, sin, 1.0, false);
    }
    generic::rope_fwd(x, cos, sin)
}

/// The input gradient of [`rope_fwd`]: the transpose rotation (`sin` negated). Shapes as there.
pub fn rope_bwd(dy: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    check_rope("rope_bwd", dy, cos, sin)?;
    if is_cuda(dy) {
        #[cfg(feature = "cuda")]
        return cuda::rope(dy, cos, sin, -1.0, false);
    }
    generic::rope_bwd(dy, cos, sin)
}

/// [`rope_bwd`] with the output in token-major layout, contiguous `[B, T, heads, D]`, so that
/// reshaping it to the projection's `[B * T, heads * D]` gradient is free.
pub fn rope_bwd_tokens(dy: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    check_rope("rope_bwd_tokens", dy, cos, sin)?;
    if is_cuda(dy) {
        #[cfg(feature = "cuda")]
        return cuda::rope(dy, cos, sin, -1.0, true);
    }
    generic::rope_bwd_tokens(dy, cos, sin)
}

/// SwiGLU: `silu(gate) * up` with `silu(g) = g * sigmoid(g)`. Same shape and dtype in and out.
pub fn swiglu_fwd(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    check_float("swiglu_fwd", gate)?;
    check_same("swiglu_fwd gate/up", gate, up)?;
    if is_cuda(gate) {
        #[cfg(feature = "cuda")]
        return cuda::swiglu_fwd(gate, up);
    }
    generic::swiglu_fwd(gate, up)
}

/// The gradients `(dgate, dup)` of [`swiglu_fwd`]; the sigmoid is recomputed from `gate`.
pub fn swiglu_bwd(dy: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> {
    check_float("swiglu_bwd", gate)?;
    check_same("swiglu_bwd gate/up", gate, up)?;
    check_same("swiglu_bwd dy/gate", dy, gate)?;
    if is_cuda(gate) {
        #[cfg(feature = "cuda")]
        return cuda::swiglu_bwd(dy, gate, up);
    }
    generic::swiglu_bwd(dy, gate, up)
}

/// What [`cross_entropy_fwd_bwd`] returns. The loss and count stay on the device, so a training
/// step can sum them over micro-batches and read them once.
#[derive(Debug)]
pub struct CrossEntropy {
    /// Sum over labelled rows of `logsumexp(z) - z[label]`: a scalar, f32 (f64 for f64 logits).
    pub loss_sum: Tensor,
    /// The number of labelled rows: a scalar, u32.
    pub count: Tensor,
    /// `(softmax(z) - onehot(label)) * scale`, zero on ignored rows; logits' shape and dtype.
    /// `None` from [`cross_entropy_loss`].
    pub dlogits: Option<Tensor>,
}

fn check_ce(logits: &Tensor, labels: &Tensor) -> Result<()> {
    check_float("cross_entropy logits", logits)?;
    let (n, v) = logits.dims2()?;
    if labels.dims() != [n] || labels.dtype() != DType::I64 || v == 0 {
        bail!("cross_entropy: logits {:?} need i64 labels [{n}], got {:?} {:?}", logits.dims(), labels.dtype(), labels.dims());
    }
    if !logits.device().same_device(labels.device()) {
        bail!("cross_entropy: logits and labels on different devices");
    }
    if !is_cuda(logits) {
        // The kernel cannot report a bad label; the CPU can, cheaply.
        if let Some(bad) = labels.to_vec1::<i64>()?.into_iter().find(|&l| l != IGNORE_INDEX && !(0..v as i64).contains(&l)) {
            bail!("cross_entropy: label {bad} outside [0, {v}) and not {IGNORE_INDEX}");
        }
    }
    Ok(())
}

/// Fused log-softmax + NLL + gradient over `logits: [N, V]` and `labels: [N]` (i64,
/// [`IGNORE_INDEX`] for rows without loss). The gradient is of `loss_sum * scale`
/// (`scale = 1 / tokens` for a mean). On CUDA one kernel reads each row twice and writes its
/// gradient once, never materializing the softmax; a second, one-block kernel sums the row
/// losses in a fixed order, so the loss is reproducible bit for bit.
pub fn cross_entropy_fwd_bwd(logits: &Tensor, labels: &Tensor, scale: f64) -> Result<CrossEntropy> {
    check_ce(logits, labels)?;
    if is_cuda(logits) {
        #[cfg(feature = "cuda")]
        return cuda::cross_entropy(logits, labels, Some(scale));
    }
    generic::cross_entropy(logits, labels, Some(scale))
}

/// [`cross_entropy_fwd_bwd`] without the gradient (evaluation): `dlogits` is `None`.
pub fn cross_entropy_loss(logits: &Tensor, labels: &Tensor) -> Result<CrossEntropy> {
    check_ce(logits, labels)?;
    if is_cuda(logits) {
        #[cfg(feature = "cuda")]
        return cuda::cross_entropy(logits, labels, None);
    }
    generic::cross_entropy(logits, labels, None)
}

/// LoRA dropout: `x * mask`, the mask of 0 and `1 / (1 - p)` a pure function of `(seed, element
/// index)`, bit-identical to the host-built masks llama.rs used before (element `e` keeps when its half of
/// `splitmix(seed ^ splitmix(e / 2))` is at least `p * u32::MAX`). The backward is the same call
/// on the gradient, so no mask is stored; on CUDA none is built on the host or uploaded either.
/// `p = 0` returns `x` unchanged.
pub fn lora_dropout(x: &Tensor, seed: u64, p: f32) -> Result<Tensor> {
    lora_dropout_at(x, seed, p, 0)
}

/// [`lora_dropout`] for a tensor whose first element is element `first` of a larger one (a
/// data-parallel shard's rows of its micro-batch): it gets exactly that part of the larger
/// tensor's mask.
pub fn lora_dropout_at(x: &Tensor, seed: u64, p: f32, first: u64) -> Result<Tensor> {
    check_float("lora_dropout", x)?;
    check_dropout_p("lora_dropout", p)?;
    if p == 0.0 {
        return Ok(x.clone());
    }
    if is_cuda(x) {
        #[cfg(feature = "cuda")]
        return cuda::lora_dropout(x, seed, p, first);
    }
    generic::lora_dropout(x, seed, p, first)
}

fn check_dropout_p(what: &str, p: f32) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        bail!("{what}: dropout p = {p} outside [0, 1)");
    }
    Ok(())
}

/// `t` is a 2-D tensor of `x`'s dtype and device: its `(rows, cols)`.
fn lora_dims(what: &str, t: &Tensor, x: &Tensor) -> Result<(usize, usize)> {
    if t.dtype() != x.dtype() || !t.device().same_device(x.device()) {
        bail!("{what}: dtype/device differ from the activations' ({:?} vs {:?})", t.dtype(), x.dtype());
    }
    match t.dims() {
        &[rows, cols] => Ok((rows, cols)),
        d => bail!("{what}: expected a matrix, got {d:?}"),
    }
}

/// The largest LoRA rank the CUDA kernels take; larger ranks run [`generic`] on the GPU.
pub const LORA_KERNEL_MAX_RANK: usize = 64;

/// Whether the fused LoRA kernels run, from `PIPE_FUSED_LORA` (read once): `on` (the default) at
/// every width, `off` never (the generic composition everywhere, for checking the kernels against
/// it). Both give the same results within rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusedLora {
    On,
    Off,
}

impl FusedLora {
    /// The process's setting; an unknown value is the default (and says so once on stderr).
    pub fn get() -> FusedLora {
        static MODE: std::sync::OnceLock<FusedLora> = std::sync::OnceLock::new();
        *MODE.get_or_init(|| match std::env::var("PIPE_FUSED_LORA").as_deref() {
            Err(_) | Ok("") | Ok("on") => FusedLora::On,
            Ok("off") => FusedLora::Off,
            Ok(v) => {
                eprintln!("warning: PIPE_FUSED_LORA={v:?} is neither on nor off; using on");
                FusedLora::On
            }
        })
    }
}

/// Whether the LoRA kernels take activations `x` with rank `r` (see [`FusedLora`]). Every width
/// runs them, including those that end in a partly filled column tile (SmolLM2's 576).
fn lora_kernel_fits(x: &Tensor, r: usize) -> bool {
    is_cuda(x)
        && FusedLora::get() == FusedLora::On
        && matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && r >= 1
        && lora_kernel_rank(r).is_some()
        && x.elem_count() > 0
}

/// The compiled rank `R >= r` of the LoRA kernels (8, 16, 32 or 64), `None` above
/// [`LORA_KERNEL_MAX_RANK`].
fn lora_kernel_rank(r: usize) -> Option<usize> {
    [8, 16, 32, 64].into_iter().find(|&v| r <= v)
}

/// Columns per lane of the rank-`rank` forward kernels (`LORA_C_FWD` in lora.cu); a warp's
/// column tile is 32 times that.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn lora_cols_fwd(rank: usize) -> usize {
    (64 / rank).max(1)
}

/// Columns per lane of the rank-`rank` backward kernels (`LORA_C_BWD` in lora.cu).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn lora_cols_bwd(rank: usize) -> usize {
    (32 / rank).max(1)
}

/// LoRA's down projection of dropped-out activations: `z = lora_dropout_at(x, seed, p, first) A^T`.
///
/// `x: [N, in]`, `a: [r, in]` (same dtype); returns `z: [N, r]` in that dtype. The mask is
/// [`lora_dropout_at`]'s, bit for bit (`first` is the index of x's first element in its
/// micro-batch). On CUDA one pass over `x` hashes the mask on the fly, rounds the dropped-out
/// value to the dtype (as [`lora_dropout_at`] does), accumulates in f32 and rounds `z` once;
/// the sum over `in` is split into fixed column tiles summed in order (deterministic).
pub fn lora_down(x: &Tensor, a: &Tensor, seed: u64, p: f32, first: u64) -> Result<Tensor> {
    check_float("lora_down x", x)?;
    check_dropout_p("lora_down", p)?;
    let (_, k) = lora_dims("lora_down x", x, x)?;
    let (r, ka) = lora_dims("lora_down a", a, x)?;
    if ka != k {
        bail!("lora_down: x {:?} and a {:?} do not fit", x.dims(), a.dims());
    }
    if lora_kernel_fits(x, r) {
        #[cfg(feature = "cuda")]
        return cuda::lora_down(x, a, seed, p, first);
    }
    generic::lora_down(x, a, seed, p, first)
}

/// LoRA's up projection added to the frozen projection's output: `y + z sB^T`.
///
/// `y: [N, out]`, `z: [N, r]` (from [`lora_down`]), `sb: [out, r]` (B times the LoRA scaling),
/// one dtype. Returns a fresh `[N, out]`; on CUDA in one pass (read `y`, write the result),
/// the sum in f32, rounded once.
pub fn lora_up_add(y: &Tensor, z: &Tensor, sb: &Tensor) -> Result<Tensor> {
    check_float("lora_up_add y", y)?;
    let (n, o) = lora_dims("lora_up_add y", y, y)?;
    let (nz, r) = lora_dims("lora_up_add z", z, y)?;
    if nz != n || lora_dims("lora_up_add sb", sb, y)? != (o, r) {
        bail!("lora_up_add: y {:?}, z {:?} and sb {:?} do not fit", y.dims(), z.dims(), sb.dims());
    }
    if lora_kernel_fits(y, r) {
        #[cfg(feature = "cuda")]
        return cuda::lora_up_add(y, z, sb);
    }
    generic::lora_up_add(y, z, sb)
}

/// Where [`lora_bwd`] writes one LoRA entry's gradients: a flat f32 buffer (contiguous, on the
/// activations' device) and the offsets of `dA` (`[r, in]`, row-major) and `dB` (`[out, r]`).
#[derive(Debug, Clone, Copy)]
pub struct LoraGradSlot<'a> {
    /// Flat f32 `[len]`.
    pub buf: &'a Tensor,
    /// Offset of `dA`.
    pub a: usize,
    /// Offset of `dB`.
    pub b: usize,
    /// The LoRA scaling `alpha / r`: `dB` is the gradient of B, not of `sB`.
    pub scaling: f32,
}

/// The backward of [`lora_down`] + [`lora_up_add`] given `dy` (the gradient of the sum) and
/// `dx` (the input gradient through the frozen weight, `dy W`). With `xd = lora_dropout_at(x)`,
/// `dz = dy sB`:
///
/// - writes `dA = dz^T xd` and `dB = scaling * dy^T z` (f32) into `slot.buf` at its offsets,
///   leaving the rest of the buffer alone;
/// - returns `dx + lora_dropout_at(dz A)` (the same mask), x's dtype.
///
/// Shapes: `dy: [N, out]`, `x`, `dx: [N, in]`, `z: [N, r]`, `a: [r, in]`, `sb: [out, r]`, one
/// dtype. On CUDA: a pass over `dy` (`dz` and partial `dB`), a pass over `x` and `dx` (the
/// result and partial `dA`), and small kernels that sum the partials in a fixed order (so the
/// gradients are reproducible bit for bit) and write them into the buffer; `dz` is rounded to
/// the dtype once, as the CPU's matmul rounds it.
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
    check_float("lora_bwd x", x)?;
    check_dropout_p("lora_bwd", p)?;
    let (n, k) = lora_dims("lora_bwd x", x, x)?;
    let (r, ka) = lora_dims("lora_bwd a", a, x)?;
    let (ny, o) = lora_dims("lora_bwd dy", dy, x)?;
    let fits = ka == k
        && ny == n
        && lora_dims("lora_bwd dx", dx, x)? == (n, k)
        && lora_dims("lora_bwd z", z, x)? == (n, r)
        && lora_dims("lora_bwd sb", sb, x)? == (o, r);
    if !fits {
        bail!(
            "lora_bwd: dy {:?}, x {:?}, z {:?}, dx {:?}, a {:?}, sb {:?} do not fit",
            dy.dims(),
            x.dims(),
            z.dims(),
            dx.dims(),
            a.dims(),
            sb.dims()
        );
    }
    let buf = slot.buf;
    let len = buf.elem_count();
    if buf.dtype() != DType::F32 || buf.rank() != 1 || !buf.is_contiguous() || !buf.device().same_device(x.device()) {
        bail!("lora_bwd: the gradient buffer must be a contiguous f32 vector on the activations' device");
    }
    if slot.a + r * k > len || slot.b + o * r > len {
        bail!("lora_bwd: dA at {} ({r} x {k}) or dB at {} ({o} x {r}) runs past the buffer ({len})", slot.a, slot.b);
    }
    if lora_kernel_fits(x, r) && dy.elem_count() > 0 {
        #[cfg(feature = "cuda")]
        return cuda::lora_bwd(dy, x, z, dx, a, sb, seed, p, first, slot);
    }
    generic::lora_bwd(dy, x, z, dx, a, sb, seed, p, first, slot)
}

fn check_attention(what: &str, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<()> {
    check_float(what, q)?;
    let (b, hq, t, d) = q.dims4()?;
    let (bk, hkv, tk, dk) = k.dims4()?;
    if (bk, tk, dk) != (b, t, d) || hkv == 0 || hq % hkv != 0 {
        bail!("{what}: q {:?} and k {:?} do not fit (k/v heads must divide q heads)", q.dims(), k.dims());
    }
    check_same(&format!("{what} k/v"), k, v)?;
    if q.dtype() != k.dtype() || !q.device().same_device(k.device()) {
        bail!("{what}: q and k/v differ in dtype or device");
    }
    Ok(())
}

/// Whether the CUDA attention kernels take this head dim (others run [`generic`] on the GPU).
fn attention_kernel_fits(q: &Tensor) -> bool {
    matches!(q.dims().last(), Some(64 | 128))
}

/// Causal self-attention (training: queries and keys are the same `T` positions), flash-style
/// on CUDA: no `[T, T]` matrix per head in global memory.
///
/// `q: [B, Hq, T, D]`, `k`, `v: [B, Hkv, T, D]` with `Hkv` dividing `Hq` (grouped-query
/// attention: query head `h` reads KV head `h / (Hq / Hkv)`, without repeating K/V), any strides
/// with a unit last stride. `scale` is usually `1 / sqrt(D)`. Returns `o: [B, Hq, T, D]` in
/// q's dtype and `lse: [B, Hq, T]` (f32: each row's log-sum-exp of scaled scores), which
/// [`attention_bwd`] takes. On CUDA, `o` is a transposed view of a contiguous `[B, T, Hq, D]`
/// buffer, so `o.transpose(1, 2)?.reshape((B * T, Hq * D))` (the output projection's input)
/// copies nothing. The kernels take `D` = 64 or 128; other head dims run the generic
/// composition on the GPU.
pub fn attention_fwd(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<(Tensor, Tensor)> {
    check_attention("attention_fwd", q, k, v)?;
    if is_cuda(q) && attention_kernel_fits(q) {
        #[cfg(feature = "cuda")]
        return cuda::attention_fwd(q, k, v, scale);
    }
    generic::attention_fwd(q, k, v, scale)
}

/// The gradients `(dq, dk, dv)` of [`attention_fwd`] given `dout` (the gradient of `o`), from
/// the forward's inputs, output and `lse`; probabilities are recomputed tile by tile. Shapes as
/// in [`attention_fwd`]; `dk`, `dv` are summed over each KV head's group of query heads. On
/// CUDA all three are transposed views of contiguous `[B, T, heads, D]` buffers (the
/// projections' gradient layout; [`rope_bwd_tokens`] reads `dq`, `dk` as they are).
pub fn attention_bwd(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    scale: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    check_attention("attention_bwd", q, k, v)?;
    check_same("attention_bwd dout/o", dout, o)?;
    if o.dims() != q.dims() || lse.dims() != &q.dims()[..3] {
        bail!("attention_bwd: q {:?} with o {:?} and lse {:?}", q.dims(), o.dims(), lse.dims());
    }
    if is_cuda(q) && attention_kernel_fits(q) {
        #[cfg(feature = "cuda")]
        return cuda::attention_bwd(dout, q, k, v, o, lse, scale);
    }
    generic::attention_bwd(dout, q, k, v, o, lse, scale)
}

#[cfg(test)]
mod tests {
    //! Each op's CPU path against a plain f64 reference (f32 and bf16 inputs), and each backward
    //! against central finite differences of its forward, run in f64.

    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn randn(n: usize, seed: u64) -> Vec<f64> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| r.random_range(-2.0..2.0)).collect()
    }

    fn t(v: &[f64], shape: &[usize], dt: DType) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap().to_dtype(dt).unwrap()
    }

    fn vals(x: &Tensor) -> Vec<f64> {
        x.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The inputs as the op sees them: rounded to `dt`.
    fn rounded(v: &[f64], dt: DType) -> Vec<f64> {
        vals(&t(v, &[v.len()], dt))
    }

    /// max |a - b| / max |b|.
    fn rel_err(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
        a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
        let e = rel_err(got, want);
        assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.0e}");
    }

    fn tol(dt: DType) -> f64 {
        match dt {
            DType::F64 => 1e-12,
            DType::F32 => 1e-5,
            _ => 1e-2,
        }
    }

    /// Central differences of `f` at `x` for a spread of coordinates, against `grad`.
    fn check_fd(what: &str, f: impl Fn(&[f64]) -> f64, x: &[f64], grad: &[f64]) {
        let h = 1e-5;
        let step = (x.len() / 40).max(1);
        let scale = grad.iter().fold(0f64, |m, g| m.max(g.abs())).max(1e-30);
        for i in (0..x.len()).step_by(step) {
            let mut xp = x.to_vec();
            xp[i] += h;
            let mut xm = x.to_vec();
            xm[i] -= h;
            let fd = (f(&xp) - f(&xm)) / (2.0 * h);
            assert!((fd - grad[i]).abs() / scale < 1e-6, "{what}[{i}]: backward {} vs finite difference {fd}", grad[i]);
        }
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    // ---- plain f64 references ----

    fn ref_rms(x: &[f64], w: &[f64], eps: f64) -> (Vec<f64>, Vec<f64>) {
        let h = w.len();
        let mut y = vec![0.0; x.len()];
        let mut rstd = vec![];
        for (xr, yr) in x.chunks(h).zip(y.chunks_mut(h)) {
            let r = 1.0 / (xr.iter().map(|v| v * v).sum::<f64>() / h as f64 + eps).sqrt();
            for i in 0..h {
                yr[i] = xr[i] * r * w[i];
            }
            rstd.push(r);
        }
        (y, rstd)
    }

    fn ref_rms_bwd(dy: &[f64], x: &[f64], w: &[f64], rstd: &[f64]) -> Vec<f64> {
        let h = w.len();
        let mut dx = vec![0.0; x.len()];
        for (row, r) in rstd.iter().enumerate() {
            let o = row * h;
            let dotv: f64 = (0..h).map(|i| dy[o + i] * w[i] * x[o + i] * r).sum::<f64>() / h as f64;
            for i in 0..h {
                dx[o + i] = r * (dy[o + i] * w[i] - x[o + i] * r * dotv);
            }
        }
        dx
    }

    /// `x: [rows, T, D]` flattened (rows = B * heads), tables `[T, D/2]`.
    fn ref_rope(x: &[f64], cos: &[f64], sin: &[f64], t: usize, d: usize, sign: f64) -> Vec<f64> {
        let half = d / 2;
        let mut y = vec![0.0; x.len()];
        for (k, (xr, yr)) in x.chunks(d).zip(y.chunks_mut(d)).enumerate() {
            let ti = k % t;
            for i in 0..half {
                let (c, s) = (cos[ti * half + i], sign * sin[ti * half + i]);
                yr[i] = xr[i] * c - xr[i + half] * s;
                yr[i + half] = xr[i + half] * c + xr[i] * s;
            }
        }
        y
    }

    fn sig(g: f64) -> f64 {
        1.0 / (1.0 + (-g).exp())
    }

    fn ref_ce(z: &[f64], labels: &[i64], v: usize, scale: f64) -> (f64, u32, Vec<f64>) {
        let (mut loss, mut count, mut grad) = (0.0, 0, vec![0.0; z.len()]);
        for (row, &l) in labels.iter().enumerate() {
            if l == IGNORE_INDEX {
                continue;
            }
            let zr = &z[row * v..(row + 1) * v];
            let m = zr.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + zr.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            loss += lse - zr[l as usize];
            count += 1;
            for i in 0..v {
                grad[row * v + i] = ((zr[i] - lse).exp() - if i as i64 == l { 1.0 } else { 0.0 }) * scale;
            }
        }
        (loss, count, grad)
    }

    const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

    // ---- RMS norm ----

    #[test]
    fn rms_norm_matches_f64_reference() {
        for (n, h) in [(3, 8), (7, 576), (2, 33)] {
            for dt in DTYPES {
                let (x, w) = (rounded(&randn(n * h, 1), dt), rounded(&randn(h, 2), dt));
                let (y, rstd) = rms_norm_fwd(&t(&x, &[n, h], dt), &t(&w, &[h], dt), 1e-5).unwrap();
                assert_eq!((y.dtype(), rstd.dtype(), rstd.dims()), (dt, DType::F32, &[n][..]));
                let (want_y, want_r) = ref_rms(&x, &w, 1e-5);
                assert_close("y", &vals(&y), &want_y, tol(dt));
                assert_close("rstd", &vals(&rstd), &want_r, 1e-5);
                let dy = rounded(&randn(n * h, 3), dt);
                let dx = rms_norm_bwd(&t(&dy, &[n, h], dt), &t(&x, &[n, h], dt), &t(&w, &[h], dt), &rstd).unwrap();
                assert_close("dx", &vals(&dx), &ref_rms_bwd(&dy, &x, &w, &want_r), tol(dt));
            }
        }
    }

    #[test]
    fn rms_norm_takes_an_f32_weight_with_bf16_activations() {
        let (x, w) = (rounded(&randn(4 * 16, 4), DType::BF16), randn(16, 5));
        let (y, _) = rms_norm_fwd(&t(&x, &[4, 16], DType::BF16), &t(&w, &[16], DType::F32), 1e-6).unwrap();
        assert_eq!(y.dtype(), DType::BF16);
        assert_close("y", &vals(&y), &ref_rms(&x, &w, 1e-6).0, 1e-2);
    }

    #[test]
    fn rms_norm_bwd_matches_finite_differences() {
        let (n, h) = (3, 12);
        let (x, w, r) = (randn(n * h, 6), randn(h, 7), randn(n * h, 8));
        let wt = t(&w, &[h], DType::F64);
        let loss = |x: &[f64]| dot(&vals(&rms_norm_fwd(&t(x, &[n, h], DType::F64), &wt, 1e-5).unwrap().0), &r);
        let (_, rstd) = rms_norm_fwd(&t(&x, &[n, h], DType::F64), &wt, 1e-5).unwrap();
        let dx = rms_norm_bwd(&t(&r, &[n, h], DType::F64), &t(&x, &[n, h], DType::F64), &wt, &rstd).unwrap();
        check_fd("rms_norm dx", loss, &x, &vals(&dx));
    }

    // ---- RoPE ----

    fn tables(t_len: usize, half: usize) -> (Vec<f64>, Vec<f64>) {
        let ang: Vec<f64> =
            (0..t_len).flat_map(|p| (0..half).map(move |i| p as f64 * 10000f64.powf(-(i as f64) / half as f64))).collect();
        (ang.iter().map(|a| a.cos()).collect(), ang.iter().map(|a| a.sin()).collect())
    }

    #[test]
    fn rope_matches_f64_reference() {
        for (b, h, tl, d) in [(2, 3, 5, 8), (1, 9, 7, 64), (2, 1, 3, 2)] {
            let (cos, sin) = tables(tl + 2, d / 2);
            let (ct, st) = (t(&cos, &[tl + 2, d / 2], DType::F32), t(&sin, &[tl + 2, d / 2], DType::F32));
            for dt in DTYPES {
                let x = rounded(&randn(b * h * tl * d, 9), dt);
                let xt = t(&x, &[b, h, tl, d], dt);
                let y = rope_fwd(&xt, &ct, &st).unwrap();
                assert_eq!((y.dims(), y.dtype()), (&[b, h, tl, d][..], dt));
                assert_close("rope y", &vals(&y), &ref_rope(&x, &cos, &sin, tl, d, 1.0), tol(dt));
                let dx = rope_bwd(&xt, &ct, &st).unwrap();
                assert_close("rope dx", &vals(&dx), &ref_rope(&x, &cos, &sin, tl, d, -1.0), tol(dt));
            }
        }
    }

    #[test]
    fn rope_matches_candles_rope_as_llama_uses_it() {
        let (b, h, tl, d) = (2, 3, 6, 16);
        let (cos, sin) = tables(tl, d / 2);
        let (ct, st) = (t(&cos, &[tl, d / 2], DType::F32), t(&sin, &[tl, d / 2], DType::F32));
        let x = t(&randn(b * h * tl * d, 10), &[b, h, tl, d], DType::F32);
        let want = candle_nn::rotary_emb::rope(&x, &ct, &st).unwrap();
        assert_close("rope vs candle", &vals(&rope_fwd(&x, &ct, &st).unwrap()), &vals(&want), 1e-6);
    }

    #[test]
    fn rope_reads_a_transposed_view_and_writes_token_major() {
        let (b, h, tl, d) = (2, 3, 4, 8);
        let (cos, sin) = tables(tl, d / 2);
        let (ct, st) = (t(&cos, &[tl, d / 2], DType::F32), t(&sin, &[tl, d / 2], DType::F32));
        // A projection output [B, T, heads, D] viewed as [B, heads, T, D].
        let proj = t(&randn(b * tl * h * d, 11), &[b, tl, h, d], DType::F32);
        let view = proj.transpose(1, 2).unwrap();
        let y = rope_fwd(&view, &ct, &st).unwrap();
        assert!(y.is_contiguous());
        assert_close("strided", &vals(&y), &vals(&rope_fwd(&view.contiguous().unwrap(), &ct, &st).unwrap()), 0.0);
        let tok = rope_bwd_tokens(&y, &ct, &st).unwrap();
        assert_eq!(tok.dims(), &[b, tl, h, d]);
        let want = rope_bwd(&y, &ct, &st).unwrap().transpose(1, 2).unwrap();
        assert_close("tokens", &vals(&tok), &vals(&want), 0.0);
        // The backward undoes the forward (the rotation is orthogonal).
        assert_close("inverse", &vals(&tok), &vals(&proj), 1e-6);
    }

    #[test]
    fn rope_bwd_matches_finite_differences() {
        let (b, h, tl, d) = (1, 2, 3, 6);
        let (cos, sin) = tables(tl, d / 2);
        let (ct, st) = (t(&cos, &[tl, d / 2], DType::F64), t(&sin, &[tl, d / 2], DType::F64));
        let (x, r) = (randn(b * h * tl * d, 12), randn(b * h * tl * d, 13));
        let shape = [b, h, tl, d];
        let loss = |x: &[f64]| dot(&vals(&rope_fwd(&t(x, &shape, DType::F64), &ct, &st).unwrap()), &r);
        let dx = rope_bwd(&t(&r, &shape, DType::F64), &ct, &st).unwrap();
        check_fd("rope dx", loss, &x, &vals(&dx));
    }

    // ---- SwiGLU ----

    #[test]
    fn swiglu_matches_f64_reference() {
        for n in [1, 7, 3 * 1536] {
            for dt in DTYPES {
                let (g, u, dy) = (rounded(&randn(n, 14), dt), rounded(&randn(n, 15), dt), rounded(&randn(n, 16), dt));
                let (gt, ut, dyt) = (t(&g, &[n], dt), t(&u, &[n], dt), t(&dy, &[n], dt));
                let y = swiglu_fwd(&gt, &ut).unwrap();
                let want: Vec<f64> = g.iter().zip(&u).map(|(g, u)| g * sig(*g) * u).collect();
                assert_close("swiglu y", &vals(&y), &want, tol(dt));
                let (dg, du) = swiglu_bwd(&dyt, &gt, &ut).unwrap();
                let want_du: Vec<f64> = (0..n).map(|i| dy[i] * g[i] * sig(g[i])).collect();
                let want_dg: Vec<f64> = (0..n).map(|i| dy[i] * u[i] * sig(g[i]) * (1.0 + g[i] * (1.0 - sig(g[i])))).collect();
                assert_close("swiglu du", &vals(&du), &want_du, tol(dt));
                assert_close("swiglu dg", &vals(&dg), &want_dg, tol(dt));
            }
        }
    }

    #[test]
    fn swiglu_bwd_matches_finite_differences() {
        let n = 20;
        let (g, u, r) = (randn(n, 17), randn(n, 18), randn(n, 19));
        let f64t = |v: &[f64]| t(v, &[n], DType::F64);
        let (dg, du) = swiglu_bwd(&f64t(&r), &f64t(&g), &f64t(&u)).unwrap();
        check_fd("swiglu dg", |g| dot(&vals(&swiglu_fwd(&f64t(g), &f64t(&u)).unwrap()), &r), &g, &vals(&dg));
        check_fd("swiglu du", |u| dot(&vals(&swiglu_fwd(&f64t(&g), &f64t(u)).unwrap()), &r), &u, &vals(&du));
    }

    // ---- cross-entropy ----

    fn some_labels(n: usize, v: usize, seed: u64) -> Vec<i64> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|i| if i % 3 == 1 { IGNORE_INDEX } else { r.random_range(0..v as i64) }).collect()
    }

    #[test]
    fn cross_entropy_matches_f64_reference() {
        for (n, v) in [(5, 7), (6, 1000), (1, 1)] {
            let labels = some_labels(n, v, 20);
            let lt = Tensor::from_slice(&labels, n, &Device::Cpu).unwrap();
            for dt in DTYPES {
                let z: Vec<f64> = rounded(&randn(n * v, 21).iter().map(|x| x * 4.0).collect::<Vec<_>>(), dt);
                let ce = cross_entropy_fwd_bwd(&t(&z, &[n, v], dt), &lt, 0.25).unwrap();
                let (loss, count, grad) = ref_ce(&z, &labels, v, 0.25);
                assert_eq!(ce.count.to_scalar::<u32>().unwrap(), count);
                let got = f64::from(ce.loss_sum.to_scalar::<f32>().unwrap());
                assert!((got - loss).abs() <= 1e-5 * loss.abs().max(1.0), "{dt:?} loss {got} vs {loss}");
                let dl = ce.dlogits.unwrap();
                assert_eq!((dl.dims(), dl.dtype()), (&[n, v][..], dt));
                assert_close("dlogits", &vals(&dl), &grad, tol(dt));
                let eval = cross_entropy_loss(&t(&z, &[n, v], dt), &lt).unwrap();
                assert!(eval.dlogits.is_none());
                assert_eq!(eval.loss_sum.to_scalar::<f32>().unwrap(), got as f32);
            }
        }
    }

    #[test]
    fn cross_entropy_ignores_rows_and_rejects_bad_labels() {
        let z = t(&randn(3 * 4, 22), &[3, 4], DType::F32);
        let labels = Tensor::new(&[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX], &Device::Cpu).unwrap();
        let ce = cross_entropy_fwd_bwd(&z, &labels, 1.0).unwrap();
        assert_eq!(ce.loss_sum.to_scalar::<f32>().unwrap(), 0.0);
        assert_eq!(ce.count.to_scalar::<u32>().unwrap(), 0);
        assert!(vals(&ce.dlogits.unwrap()).iter().all(|g| *g == 0.0));
        for bad in [4i64, -1] {
            let labels = Tensor::new(&[0i64, bad, 1], &Device::Cpu).unwrap();
            let err = cross_entropy_fwd_bwd(&z, &labels, 1.0).unwrap_err().to_string();
            assert!(err.contains(&format!("label {bad}")), "{err}");
        }
    }

    #[test]
    fn cross_entropy_grad_matches_finite_differences() {
        let (n, v) = (4, 9);
        let labels = some_labels(n, v, 23);
        let lt = Tensor::from_slice(&labels, n, &Device::Cpu).unwrap();
        let z = randn(n * v, 24);
        let loss = |z: &[f64]| {
            let ce = cross_entropy_loss(&t(z, &[n, v], DType::F64), &lt).unwrap();
            ce.loss_sum.to_scalar::<f64>().unwrap() * 0.5
        };
        let ce = cross_entropy_fwd_bwd(&t(&z, &[n, v], DType::F64), &lt, 0.5).unwrap();
        check_fd("dlogits", loss, &z, &vals(&ce.dlogits.unwrap()));
    }

    // ---- dropout ----

    #[test]
    fn dropout_mask_is_the_counter_based_hash() {
        let (seed, p, n) = (0xDEAD_BEEF_u64, 0.1f32, 9001);
        let mask = generic::dropout_mask(seed, n, p);
        let threshold = (p as f64 * u32::MAX as f64) as u32;
        for (e, m) in mask.iter().enumerate() {
            let r = crate::model::rng::splitmix(seed ^ crate::model::rng::splitmix((e / 2) as u64));
            let bits = if e % 2 == 0 { r as u32 } else { (r >> 32) as u32 };
            assert_eq!(*m, if bits >= threshold { 1.0 / (1.0 - p) } else { 0.0 }, "element {e}");
        }
        let kept = mask.iter().filter(|m| **m > 0.0).count() as f64 / n as f64;
        assert!((kept - 0.9).abs() < 0.02, "kept {kept}");
    }

    #[test]
    fn lora_dropout_applies_the_mask_in_every_dtype() {
        let (n, d) = (5, 7);
        let x = randn(n * d, 25);
        let mask = generic::dropout_mask(42, n * d, 0.25);
        for dt in DTYPES {
            let xr = rounded(&x, dt);
            let y = lora_dropout(&t(&xr, &[n, d], dt), 42, 0.25).unwrap();
            let want: Vec<f64> = xr.iter().zip(&mask).map(|(x, m)| x * f64::from(*m)).collect();
            assert_close("dropout", &vals(&y), &want, tol(dt));
        }
        let xt = t(&x, &[n, d], DType::F32);
        assert_close("p = 0", &vals(&lora_dropout(&xt, 42, 0.0).unwrap()), &vals(&xt), 0.0);
    }

    // ---- LoRA ----

    /// Naive `z = xd a^T` and `dz = dy sb` in f64 on `[n, k]` and `[n, o]` inputs, no rounding.
    fn ref_lora_z(xd: &[f64], a: &[f64], sb: &[f64], dy: &[f64], (n, k, o, r): (usize, usize, usize, usize)) -> [Vec<f64>; 2] {
        let mut z = vec![0.0; n * r];
        let mut dz = vec![0.0; n * r];
        for i in 0..n {
            for j in 0..r {
                z[i * r + j] = (0..k).map(|c| xd[i * k + c] * a[j * k + c]).sum();
                dz[i * r + j] = (0..o).map(|c| dy[i * o + c] * sb[c * r + j]).sum();
            }
        }
        [z, dz]
    }

    #[test]
    fn lora_ops_match_f64_reference_and_write_only_their_slot() {
        let (n, k, o, r, p, seed, first) = (7, 13, 9, 3, 0.25f32, 77u64, 5u64);
        let (x, a, sb) = (randn(n * k, 40), randn(r * k, 41), randn(o * r, 42));
        let (y, dy, dx) = (randn(n * o, 43), randn(n * o, 44), randn(n * k, 45));
        let m: Vec<f64> = generic::dropout_mask_at(seed, first, n * k, p).into_iter().map(f64::from).collect();
        for dt in DTYPES {
            let [x, a, sb, y, dy, dx] = [&x, &a, &sb, &y, &dy, &dx].map(|v| rounded(v, dt));
            // Rounded where the op rounds: the dropped-out input, z and dz.
            let xd = rounded(&x.iter().zip(&m).map(|(x, m)| x * m).collect::<Vec<_>>(), dt);
            let [want_z, dz] = ref_lora_z(&xd, &a, &sb, &dy, (n, k, o, r));
            let (xt, at, sbt) = (t(&x, &[n, k], dt), t(&a, &[r, k], dt), t(&sb, &[o, r], dt));
            let z = lora_down(&xt, &at, seed, p, first).unwrap();
            assert_eq!((z.dims(), z.dtype()), (&[n, r][..], dt));
            assert_close("lora z", &vals(&z), &want_z, tol(dt));
            let zr = vals(&z);
            let up = lora_up_add(&t(&y, &[n, o], dt), &z, &sbt).unwrap();
            let want_up: Vec<f64> =
                (0..n * o).map(|e| y[e] + (0..r).map(|j| zr[(e / o) * r + j] * sb[(e % o) * r + j]).sum::<f64>()).collect();
            assert_close("lora up_add", &vals(&up), &want_up, tol(dt));
            let buf = Tensor::full(-3f32, 4 + r * k + o * r + 2, &Device::Cpu).unwrap();
            let slot = LoraGradSlot { buf: &buf, a: 4 + o * r, b: 2, scaling: 0.5 };
            let (dyt, dxt) = (t(&dy, &[n, o], dt), t(&dx, &[n, k], dt));
            let dxo = lora_bwd(&dyt, &xt, &z, &dxt, &at, &sbt, seed, p, first, &slot).unwrap();
            assert_eq!((dxo.dims(), dxo.dtype()), (&[n, k][..], dt));
            let dz = rounded(&dz, dt);
            let mut want_da = vec![0.0; r * k];
            for (e, w) in want_da.iter_mut().enumerate() {
                *w = (0..n).map(|i| dz[i * r + e / k] * xd[i * k + e % k]).sum();
            }
            let want_db: Vec<f64> =
                (0..o * r).map(|e| 0.5 * (0..n).map(|i| dy[i * o + e / r] * zr[i * r + e % r]).sum::<f64>()).collect();
            let want_dx: Vec<f64> =
                (0..n * k).map(|e| dx[e] + m[e] * (0..r).map(|j| dz[(e / k) * r + j] * a[j * k + e % k]).sum::<f64>()).collect();
            let got = vals(&buf);
            assert_close("lora dA", &got[slot.a..slot.a + r * k], &want_da, tol(dt));
            assert_close("lora dB", &got[slot.b..slot.b + o * r], &want_db, tol(dt));
            assert_close("lora dx", &vals(&dxo), &want_dx, tol(dt));
            let rest = [&got[..2], &got[2 + o * r..slot.a], &got[slot.a + r * k..]];
            assert!(rest.iter().all(|s| s.iter().all(|v| *v == -3.0)), "{dt:?}: wrote outside dA/dB");
        }
    }

    #[test]
    fn lora_bwd_matches_finite_differences() {
        let (n, k, o, r, p, seed, first) = (5, 6, 4, 2, 0.3f32, 9u64, 3u64);
        let f = DType::F64;
        let (x, a, sb, dy) = (randn(n * k, 46), randn(r * k, 47), randn(o * r, 48), randn(n * o, 49));
        let out = |x: &[f64], a: &[f64], sb: &[f64]| {
            let z = lora_down(&t(x, &[n, k], f), &t(a, &[r, k], f), seed, p, first).unwrap();
            dot(&vals(&lora_up_add(&Tensor::zeros((n, o), f, &Device::Cpu).unwrap(), &z, &t(sb, &[o, r], f)).unwrap()), &dy)
        };
        let z = lora_down(&t(&x, &[n, k], f), &t(&a, &[r, k], f), seed, p, first).unwrap();
        let buf = Tensor::zeros(r * k + o * r, DType::F32, &Device::Cpu).unwrap();
        let slot = LoraGradSlot { buf: &buf, a: 0, b: r * k, scaling: 2.0 };
        let zeros = Tensor::zeros((n, k), f, &Device::Cpu).unwrap();
        let (xt, at, sbt) = (t(&x, &[n, k], f), t(&a, &[r, k], f), t(&sb, &[o, r], f));
        let dx = lora_bwd(&t(&dy, &[n, o], f), &xt, &z, &zeros, &at, &sbt, seed, p, first, &slot).unwrap();
        let g = vals(&buf);
        check_fd("lora dx", |v| out(v, &a, &sb), &x, &vals(&dx));
        check_fd("lora dA", |v| out(&x, v, &sb), &a, &g[..r * k]);
        // dB is the gradient of B = sb / scaling.
        let dsb: Vec<f64> = g[r * k..].iter().map(|v| v / 2.0).collect();
        check_fd("lora dB", |v| out(&x, &a, v), &sb, &dsb);
    }

    // ---- attention ----

    /// Naive causal attention on `[B, H, T, D]` flattened tensors: (o, lse).
    fn ref_attention(
        q: &[f64],
        k: &[f64],
        v: &[f64],
        dims: (usize, usize, usize, usize, usize),
        scale: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let (b, hq, hkv, t, d) = dims;
        let (mut o, mut lse) = (vec![0.0; q.len()], vec![0.0; b * hq * t]);
        for bi in 0..b {
            for h in 0..hq {
                let hk = h / (hq / hkv);
                let qa = |i: usize| (bi * hq + h) * t * d + i * d;
                let ka = |j: usize| (bi * hkv + hk) * t * d + j * d;
                for i in 0..t {
                    let s: Vec<f64> = (0..=i).map(|j| scale * dot(&q[qa(i)..qa(i) + d], &k[ka(j)..ka(j) + d])).collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let l = m + s.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                    lse[(bi * hq + h) * t + i] = l;
                    for (j, sj) in s.iter().enumerate() {
                        let p = (sj - l).exp();
                        for x in 0..d {
                            o[qa(i) + x] += p * v[ka(j) + x];
                        }
                    }
                }
            }
        }
        (o, lse)
    }

    #[test]
    fn attention_matches_f64_reference() {
        for (b, hq, hkv, tl, d) in [(2, 4, 2, 5, 8), (1, 3, 3, 9, 64), (1, 2, 1, 1, 4)] {
            let scale = 1.0 / (d as f64).sqrt();
            for dt in DTYPES {
                let (q, k, v) = (
                    rounded(&randn(b * hq * tl * d, 30), dt),
                    rounded(&randn(b * hkv * tl * d, 31), dt),
                    rounded(&randn(b * hkv * tl * d, 32), dt),
                );
                let (qt, kt, vt) = (t(&q, &[b, hq, tl, d], dt), t(&k, &[b, hkv, tl, d], dt), t(&v, &[b, hkv, tl, d], dt));
                let (o, lse) = attention_fwd(&qt, &kt, &vt, scale).unwrap();
                assert_eq!(
                    (o.dims(), o.dtype(), lse.dims(), lse.dtype()),
                    (&[b, hq, tl, d][..], dt, &[b, hq, tl][..], DType::F32)
                );
                let (want_o, want_lse) = ref_attention(&q, &k, &v, (b, hq, hkv, tl, d), scale);
                assert_close("o", &vals(&o), &want_o, tol(dt));
                assert_close("lse", &vals(&lse), &want_lse, 1e-5);
            }
        }
    }

    #[test]
    fn attention_bwd_matches_finite_differences() {
        let (b, hq, hkv, tl, d) = (1, 4, 2, 5, 4);
        let scale = 0.7;
        let f = DType::F64;
        let (qs, ks) = ([b, hq, tl, d], [b, hkv, tl, d]);
        let (q, k, v, r) =
            (randn(b * hq * tl * d, 33), randn(b * hkv * tl * d, 34), randn(b * hkv * tl * d, 35), randn(b * hq * tl * d, 36));
        let loss = |q: &[f64], k: &[f64], v: &[f64]| {
            dot(&vals(&attention_fwd(&t(q, &qs, f), &t(k, &ks, f), &t(v, &ks, f), scale).unwrap().0), &r)
        };
        let (qt, kt, vt) = (t(&q, &qs, f), t(&k, &ks, f), t(&v, &ks, f));
        let (o, lse) = attention_fwd(&qt, &kt, &vt, scale).unwrap();
        let (dq, dk, dv) = attention_bwd(&t(&r, &qs, f), &qt, &kt, &vt, &o, &lse, scale).unwrap();
        assert_eq!((dq.dims(), dk.dims(), dv.dims()), (&qs[..], &ks[..], &ks[..]));
        check_fd("attention dq", |x| loss(x, &k, &v), &q, &vals(&dq));
        check_fd("attention dk", |x| loss(&q, x, &v), &k, &vals(&dk));
        check_fd("attention dv", |x| loss(&q, &k, x), &v, &vals(&dv));
    }
}
