//! CUDA launchers for the fused ops: the kernels in `kernels/*.cu`, compiled to PTX by `build.rs`
//! and loaded once per device through candle's custom-module cache.
//!
//! Tensors are passed to kernels as raw device pointers (with the storage offset applied), so one
//! launcher serves every dtype; the kernel name carries the dtype (`rms_norm_fwd_bf16_f32`).
//! Inputs are made contiguous first, except RoPE's, which reads through strides. Outputs are
//! fresh, uninitialized allocations that every kernel writes in full.

use std::mem::size_of;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg, SyncOnDrop,
};
use candle_core::cuda_backend::{CudaDType, CudaStorageSlice, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{bail, CudaDevice, CudaStorage, DType, Device, Layout, Shape, Storage, StorageRef, Tensor, D};
use candle_core::{CpuStorage, InplaceOp1};
use half::{bf16, f16};

use super::{CrossEntropy, LoraGradSlot};
use candle_core::Result;

const RMS_NORM: (&str, &str) = ("pipe_rms_norm", include_str!(concat!(env!("OUT_DIR"), "/rms_norm.ptx")));
const ROPE: (&str, &str) = ("pipe_rope", include_str!(concat!(env!("OUT_DIR"), "/rope.ptx")));
const SWIGLU: (&str, &str) = ("pipe_swiglu", include_str!(concat!(env!("OUT_DIR"), "/swiglu.ptx")));
const CROSS_ENTROPY: (&str, &str) = ("pipe_cross_entropy", include_str!(concat!(env!("OUT_DIR"), "/cross_entropy.ptx")));
const DROPOUT: (&str, &str) = ("pipe_dropout", include_str!(concat!(env!("OUT_DIR"), "/dropout.ptx")));
const ATTENTION: (&str, &str) = ("pipe_attention", include_str!(concat!(env!("OUT_DIR"), "/attention.ptx")));
const ATTENTION_TC: (&str, &str) = ("pipe_attention_tc", include_str!(concat!(env!("OUT_DIR"), "/attention_tc.ptx")));
const LORA: (&str, &str) = ("pipe_lora", include_str!(concat!(env!("OUT_DIR"), "/lora.ptx")));
const NF4: (&str, &str) = ("pipe_nf4", include_str!(concat!(env!("OUT_DIR"), "/nf4.ptx")));

/// A kernel argument.
enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    U32(u32),
    U64(u64),
    F32(f32),
    Strides(Strides),
}

fn cuda_device(t: &Tensor) -> Result<CudaDevice> {
    match t.device() {
        Device::Cuda(d) => Ok(d.clone()),
        d => bail!("expected a CUDA tensor, got one on {d:?}"),
    }
}

/// The dtype suffix of kernel names.
fn suffix(dt: DType) -> Result<&'static str> {
    Ok(match dt {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        dt => bail!("the CUDA fused ops take f32, bf16 or f16, not {dt:?}"),
    })
}

fn launch(dev: &CudaDevice, module: (&str, &str), name: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
    let func = dev.get_or_load_custom_func(name, module.0, module.1)?;
    let mut b = func.builder();
    for a in args {
        match a {
            Arg::Ptr(v) | Arg::U64(v) => b.arg(v),
            Arg::I32(v) => b.arg(v),
            Arg::I64(v) => b.arg(v),
            Arg::U32(v) => b.arg(v),
            Arg::F32(v) => b.arg(v),
            Arg::Strides(v) => b.arg(v),
        };
    }
    // SAFETY: each launcher passes the kernel's parameter list in order, pointers to buffers of
    // the sizes the kernel indexes, and a grid that covers (only) its index range.
    unsafe { b.launch(cfg) }.w()?;
    Ok(())
}

/// [`launch`] for a kernel whose dynamic shared memory (`cfg.shared_mem_bytes`) may exceed the
/// default 48 KiB: raises the function's limit first.
fn launch_smem(dev: &CudaDevice, module: (&str, &str), name: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute_enum;
    let func = dev.get_or_load_custom_func(name, module.0, module.1)?;
    let attr = CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
    func.set_attribute(attr, cfg.shared_mem_bytes as i32).w()?;
    launch(dev, module, name, cfg, args)
}

fn grid(n: usize, block: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (n.div_ceil(block as usize) as u32, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}

/// A read lock on a CUDA tensor's storage.
struct Read<'a> {
    guard: StorageRef<'a>,
    layout: &'a Layout,
}

impl<'a> Read<'a> {
    fn new(t: &'a Tensor) -> Read<'a> {
        let (guard, layout) = t.storage_and_layout();
        Read { guard, layout }
    }

    /// The device pointer of the tensor's first element, and the guard that orders this read
    /// after earlier writes; keep it alive until the launch is issued.
    fn ptr<'s>(&'s self, stream: &'s CudaStream) -> Result<(u64, SyncOnDrop<'s>)> {
        let Storage::Cuda(s) = &*self.guard else { bail!("expected CUDA storage") };
        let lo = self.layout.start_offset();
        fn at<'s, T>(v: &'s CudaSlice<T>, lo: usize, stream: &'s CudaStream) -> (u64, SyncOnDrop<'s>) {
            let (p, g) = v.device_ptr(stream);
            (p + (lo * size_of::<T>()) as u64, g)
        }
        Ok(match &s.slice {
            CudaStorageSlice::F32(v) => at(v, lo, stream),
            CudaStorageSlice::BF16(v) => at(v, lo, stream),
            CudaStorageSlice::F16(v) => at(v, lo, stream),
            CudaStorageSlice::I64(v) => at(v, lo, stream),
            CudaStorageSlice::U32(v) => at(v, lo, stream),
            CudaStorageSlice::U8(v) => at(v, lo, stream),
            _ => bail!("unexpected dtype {:?} for a fused-op kernel", s.dtype()),
        })
    }
}

/// Whether fresh output buffers are filled with NaN (all-ones bytes) before their kernel runs:
/// `PIPE_CUDA_POISON=1` (read once). A kernel that leaves part of its output unwritten then
/// shows NaN there instead of whatever the memory pool handed back, which can be the previous,
/// identical result; ops_check and the GPU suite set it.
fn poison() -> bool {
    static POISON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *POISON.get_or_init(|| std::env::var_os("PIPE_CUDA_POISON").is_some_and(|v| !v.is_empty() && v != "0"))
}

/// A fresh output buffer of `n` elements (NaN-filled under [`poison`]).
fn alloc(dev: &CudaDevice, dt: DType, n: usize) -> Result<CudaStorage> {
    fn a<T: DeviceRepr + CudaDType>(dev: &CudaDevice, n: usize) -> Result<CudaStorage> {
        // SAFETY: every launcher's kernel writes all `n` elements before anything reads them.
        let mut s = unsafe { dev.alloc::<T>(n.max(1))? };
        if poison() {
            let stream = dev.cuda_stream();
            let bytes = s.num_bytes();
            let (p, _g) = s.device_ptr_mut(&stream);
            // SAFETY: `p` is the start of `bytes` bytes just allocated on this stream; all ones
            // is a NaN in f32, bf16 and f16 (and u32::MAX), valid bits for every output type.
            unsafe { candle_core::cuda_backend::cudarc::driver::result::memset_d8_async(p, 0xFF, bytes, stream.cu_stream()) }
                .w()?;
        }
        Ok(CudaStorage::wrap_cuda_slice(s, dev.clone()))
    }
    match dt {
        DType::F32 => a::<f32>(dev, n),
        DType::BF16 => a::<bf16>(dev, n),
        DType::F16 => a::<f16>(dev, n),
        DType::U32 => a::<u32>(dev, n),
        dt => bail!("unexpected output dtype {dt:?}"),
    }
}

/// The device pointer of an output buffer, and the guard that orders this write after earlier
/// uses and records it for later ones.
fn ptr_mut<'s>(s: &'s mut CudaStorage, stream: &'s CudaStream) -> Result<(u64, SyncOnDrop<'s>)> {
    Ok(match &mut s.slice {
        CudaStorageSlice::F32(v) => v.device_ptr_mut(stream),
        CudaStorageSlice::BF16(v) => v.device_ptr_mut(stream),
        CudaStorageSlice::F16(v) => v.device_ptr_mut(stream),
        CudaStorageSlice::U32(v) => v.device_ptr_mut(stream),
        _ => bail!("unexpected output storage"),
    })
}

fn tensor(s: CudaStorage, shape: impl Into<Shape>) -> Tensor {
    Tensor::from_storage(Storage::Cuda(s), shape, BackpropOp::none(), false)
}

fn i32_of(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).or_else(|_| bail!("{what} = {n} is too large for the fused-op kernels"))
}

/// See [`super::rms_norm_fwd`].
pub(super) fn rms_norm_fwd(x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let dev = cuda_device(x)?;
    let stream = dev.cuda_stream();
    let x = x.contiguous()?;
    let w = norm_weight(w, x.dtype())?;
    let h = x.dim(D::Minus1)?;
    let rows = x.elem_count() / h.max(1);
    let mut y = alloc(&dev, x.dtype(), x.elem_count())?;
    let mut rstd = alloc(&dev, DType::F32, rows)?;
    if x.elem_count() > 0 {
        let name = format!("rms_norm_fwd_{}_{}", suffix(x.dtype())?, suffix(w.dtype())?);
        let (xr, wr) = (Read::new(&x), Read::new(&w));
        let (xp, _xg) = xr.ptr(&stream)?;
        let (wp, _wg) = wr.ptr(&stream)?;
        let (yp, _yg) = ptr_mut(&mut y, &stream)?;
        let (rp, _rg) = ptr_mut(&mut rstd, &stream)?;
        let (rows_, h_) = (Arg::I32(i32_of(rows, "rows")?), Arg::I32(i32_of(h, "hidden")?));
        let args = [Arg::Ptr(xp), Arg::Ptr(wp), Arg::Ptr(yp), Arg::Ptr(rp), rows_, h_, Arg::F32(eps as f32)];
        launch(&dev, RMS_NORM, &name, rows_per_warp(rows), &args)?;
    }
    let rshape = x.dims()[..x.rank() - 1].to_vec();
    Ok((tensor(y, x.shape()), tensor(rstd, rshape)))
}

/// See [`super::rms_norm_bwd`].
pub(super) fn rms_norm_bwd(dy: &Tensor, x: &Tensor, w: &Tensor, rstd: &Tensor) -> Result<Tensor> {
    let dev = cuda_device(x)?;
    let stream = dev.cuda_stream();
    let (dy, x) = (dy.contiguous()?, x.contiguous()?);
    let w = norm_weight(w, x.dtype())?;
    let rstd = rstd.to_dtype(DType::F32)?.contiguous()?;
    let h = x.dim(D::Minus1)?;
    let rows = x.elem_count() / h.max(1);
    let mut dx = alloc(&dev, x.dtype(), x.elem_count())?;
    if x.elem_count() > 0 {
        let name = format!("rms_norm_bwd_{}_{}", suffix(x.dtype())?, suffix(w.dtype())?);
        let (dyr, xr, wr, rr) = (Read::new(&dy), Read::new(&x), Read::new(&w), Read::new(&rstd));
        let (dyp, _dyg) = dyr.ptr(&stream)?;
        let (xp, _xg) = xr.ptr(&stream)?;
        let (wp, _wg) = wr.ptr(&stream)?;
        let (rp, _rg) = rr.ptr(&stream)?;
        let (dxp, _dxg) = ptr_mut(&mut dx, &stream)?;
        let (rows_, h_) = (Arg::I32(i32_of(rows, "rows")?), Arg::I32(i32_of(h, "hidden")?));
        let args = [Arg::Ptr(dyp), Arg::Ptr(xp), Arg::Ptr(wp), Arg::Ptr(rp), Arg::Ptr(dxp), rows_, h_];
        launch(&dev, RMS_NORM, &name, rows_per_warp(rows), &args)?;
    }
    Ok(tensor(dx, x.shape()))
}

/// One warp per row, four rows per block.
fn rows_per_warp(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.div_ceil(4) as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 }
}

/// The norm weight, contiguous, in the activations' dtype or f32 (the kernels' two variants).
fn norm_weight(w: &Tensor, dt: DType) -> Result<Tensor> {
    let w = if w.dtype() == dt || w.dtype() == DType::F32 { w.clone() } else { w.to_dtype(DType::F32)? };
    w.contiguous()
}

/// RoPE with `sin` times `sign`; the output is `[B, heads, T, D]`, or `[B, T, heads, D]` with
/// `tokens_out`, contiguous either way.
pub(super) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, sign: f32, tokens_out: bool) -> Result<Tensor> {
    let dev = cuda_device(x)?;
    let stream = dev.cuda_stream();
    let x = if x.stride()[3] == 1 { x.clone() } else { x.contiguous()? };
    let (b, h, t, d) = x.dims4()?;
    let table = |c: &Tensor| c.narrow(0, 0, t)?.to_dtype(DType::F32)?.contiguous();
    let (cos, sin) = (table(cos)?, table(sin)?);
    let mut y = alloc(&dev, x.dtype(), x.elem_count())?;
    let (shape, ys) = if tokens_out { ((b, t, h, d), [t * h * d, d, h * d]) } else { ((b, h, t, d), [h * t * d, t * d, d]) };
    let total = b * h * t * (d / 2);
    if total > 0 {
        let name = format!("rope_{}", suffix(x.dtype())?);
        let xs = x.stride();
        let (xr, cr, sr) = (Read::new(&x), Read::new(&cos), Read::new(&sin));
        let (xp, _xg) = xr.ptr(&stream)?;
        let (cp, _cg) = cr.ptr(&stream)?;
        let (sp, _sg) = sr.ptr(&stream)?;
        let (yp, _yg) = ptr_mut(&mut y, &stream)?;
        let mut args = vec![Arg::Ptr(xp), Arg::Ptr(cp), Arg::Ptr(sp), Arg::Ptr(yp)];
        args.extend([h, t, d].map(|v| Arg::I32(v as i32)));
        args.extend([xs[0], xs[1], xs[2], ys[0], ys[1], ys[2]].map(|v| Arg::I64(v as i64)));
        args.extend([Arg::U64(total as u64), Arg::F32(sign)]);
        launch(&dev, ROPE, &name, grid(total, 256), &args)?;
    }
    Ok(tensor(y, shape))
}

/// Whether an elementwise kernel can take eight 16-bit (or f32) values per thread: `n` a multiple
/// of 8 and every buffer 16-byte aligned.
fn by8(n: usize, ptrs: &[u64]) -> bool {
    n % 8 == 0 && ptrs.iter().all(|p| p % 16 == 0)
}

/// See [`super::nf4_dequantize`].
pub(super) fn nf4_dequantize(
    packed: &Tensor,
    qabsmax: &Tensor,
    absmax2: &Tensor,
    code8: &Tensor,
    offset: f32,
    n: usize,
    dtype: DType,
) -> Result<Tensor> {
    let dev = cuda_device(packed)?;
    let stream = dev.cuda_stream();
    let mut y = alloc(&dev, dtype, n)?;
    if n > 0 {
        let name = format!("nf4_dequant_{}", suffix(dtype)?);
        let (pr, qr, ar, cr) = (Read::new(packed), Read::new(qabsmax), Read::new(absmax2), Read::new(code8));
        let (pp, _pg) = pr.ptr(&stream)?;
        let (qp, _qg) = qr.ptr(&stream)?;
        let (ap, _ag) = ar.ptr(&stream)?;
        let (cp, _cg) = cr.ptr(&stream)?;
        let (yp, _yg) = ptr_mut(&mut y, &stream)?;
        let args =
            [Arg::Ptr(pp), Arg::Ptr(qp), Arg::Ptr(ap), Arg::Ptr(cp), Arg::F32(offset), Arg::Ptr(yp), Arg::U64(n as u64)];
        launch(&dev, NF4, &name, grid(n.div_ceil(2), 256), &args)?;
    }
    Ok(tensor(y, n))
}

/// See [`super::swiglu_fwd`].
pub(super) fn swiglu_fwd(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let dev = cuda_device(gate)?;
    let stream = dev.cuda_stream();
    let (g, u) = (gate.contiguous()?, up.contiguous()?);
    let n = g.elem_count();
    let mut y = alloc(&dev, g.dtype(), n)?;
    if n > 0 {
        let name = format!("swiglu_fwd_{}", suffix(g.dtype())?);
        let (gr, ur) = (Read::new(&g), Read::new(&u));
        let (gp, _gg) = gr.ptr(&stream)?;
        let (up_, _ug) = ur.ptr(&stream)?;
        let (yp, _yg) = ptr_mut(&mut y, &stream)?;
        let args = [Arg::Ptr(gp), Arg::Ptr(up_), Arg::Ptr(yp), Arg::U64(n as u64)];
        if by8(n, &[gp, up_, yp]) {
            launch(&dev, SWIGLU, &name.replace("fwd", "fwd8"), grid(n / 8, 256), &args)?;
        } else {
            launch(&dev, SWIGLU, &name, grid(n, 256), &args)?;
        }
    }
    Ok(tensor(y, g.shape()))
}

/// See [`super::swiglu_bwd`].
pub(super) fn swiglu_bwd(dy: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> {
    let dev = cuda_device(gate)?;
    let stream = dev.cuda_stream();
    let (dy, g, u) = (dy.contiguous()?, gate.contiguous()?, up.contiguous()?);
    let n = g.elem_count();
    let mut dg = alloc(&dev, g.dtype(), n)?;
    let mut du = alloc(&dev, g.dtype(), n)?;
    if n > 0 {
        let name = format!("swiglu_bwd_{}", suffix(g.dtype())?);
        let (dr, gr, ur) = (Read::new(&dy), Read::new(&g), Read::new(&u));
        let (dp, _dg) = dr.ptr(&stream)?;
        let (gp, _gg) = gr.ptr(&stream)?;
        let (up_, _ug) = ur.ptr(&stream)?;
        let (dgp, _dgg) = ptr_mut(&mut dg, &stream)?;
        let (dup, _dug) = ptr_mut(&mut du, &stream)?;
        let args = [Arg::Ptr(dp), Arg::Ptr(gp), Arg::Ptr(up_), Arg::Ptr(dgp), Arg::Ptr(dup), Arg::U64(n as u64)];
        if by8(n, &[dp, gp, up_, dgp, dup]) {
            launch(&dev, SWIGLU, &name.replace("bwd", "bwd8"), grid(n / 8, 256), &args)?;
        } else {
            launch(&dev, SWIGLU, &name, grid(n, 256), &args)?;
        }
    }
    Ok((tensor(dg, g.shape()), tensor(du, g.shape())))
}

/// See [`super::cross_entropy_fwd_bwd`]; `scale: None` skips the gradient.
pub(super) fn cross_entropy(logits: &Tensor, labels: &Tensor, scale: Option<f64>) -> Result<CrossEntropy> {
    let dev = cuda_device(logits)?;
    let stream = dev.cuda_stream();
    let (z, labels) = (logits.contiguous()?, labels.contiguous()?);
    let (n, v) = z.dims2()?;
    if n == 0 {
        let dev = z.device();
        let dlogits = scale.map(|_| Tensor::zeros((0, v), z.dtype(), dev)).transpose()?;
        return Ok(CrossEntropy {
            loss_sum: Tensor::zeros((), DType::F32, dev)?,
            count: Tensor::zeros((), DType::U32, dev)?,
            dlogits,
        });
    }
    let mut row_loss = alloc(&dev, DType::F32, n)?;
    let mut grad = scale.map(|_| alloc(&dev, z.dtype(), n * v)).transpose()?;
    let mut loss = alloc(&dev, DType::F32, 1)?;
    let mut count = alloc(&dev, DType::U32, 1)?;
    {
        let name = format!("ce_fwd_bwd_{}", suffix(z.dtype())?);
        let (zr, lr) = (Read::new(&z), Read::new(&labels));
        let (zp, _zg) = zr.ptr(&stream)?;
        let (lp, _lg) = lr.ptr(&stream)?;
        let (rp, _rg) = ptr_mut(&mut row_loss, &stream)?;
        let (gp, _gg) = match grad.as_mut() {
            Some(g) => {
                let (p, guard) = ptr_mut(g, &stream)?;
                (p, Some(guard))
            }
            None => (0, None),
        };
        let block = if v >= 16384 {
            1024
        } else if v >= 2048 {
            256
        } else {
            64
        };
        let cfg = LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 };
        let args = [
            Arg::Ptr(zp),
            Arg::Ptr(lp),
            Arg::Ptr(gp),
            Arg::Ptr(rp),
            Arg::I32(i32_of(v, "vocab")?),
            Arg::F32(scale.unwrap_or(0.0) as f32),
        ];
        launch(&dev, CROSS_ENTROPY, &name, cfg, &args)?;
    }
    {
        let row_loss = tensor(row_loss, n);
        let rr = Read::new(&row_loss);
        let lr = Read::new(&labels);
        let (rp, _rg) = rr.ptr(&stream)?;
        let (lp, _lg) = lr.ptr(&stream)?;
        let (op, _og) = ptr_mut(&mut loss, &stream)?;
        let (cp, _cg) = ptr_mut(&mut count, &stream)?;
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
        let args = [Arg::Ptr(rp), Arg::Ptr(lp), Arg::I32(i32_of(n, "rows")?), Arg::Ptr(op), Arg::Ptr(cp)];
        launch(&dev, CROSS_ENTROPY, "ce_reduce", cfg, &args)?;
    }
    Ok(CrossEntropy { loss_sum: tensor(loss, ()), count: tensor(count, ()), dlogits: grad.map(|g| tensor(g, (n, v))) })
}

/// See [`super::lora_dropout`].
pub(super) fn lora_dropout(x: &Tensor, seed: u64, p: f32, first: u64) -> Result<Tensor> {
    let dev = cuda_device(x)?;
    let stream = dev.cuda_stream();
    let x = x.contiguous()?;
    let n = x.elem_count();
    let mut y = alloc(&dev, x.dtype(), n)?;
    if n > 0 {
        let (threshold, keep) = super::generic::dropout_params(p);
        let name = format!("dropout_{}", suffix(x.dtype())?);
        let xr = Read::new(&x);
        let (xp, _xg) = xr.ptr(&stream)?;
        let (yp, _yg) = ptr_mut(&mut y, &stream)?;
        let args = [
            Arg::Ptr(xp),
            Arg::Ptr(yp),
            Arg::U64(n as u64),
            Arg::U64(first),
            Arg::U64(seed),
            Arg::U32(threshold),
            Arg::F32(keep),
        ];
        launch(&dev, DROPOUT, &name, grid(n, 256), &args)?;
    }
    Ok(tensor(y, x.shape()))
}

/// (batch, head, position) strides of a logical `[B, H, T, D]` tensor: the kernels' `Strides`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Strides {
    b: i64,
    h: i64,
    t: i64,
}

// SAFETY: plain old data with the layout of the kernels' `struct Strides { long long b, h, t; }`.
unsafe impl DeviceRepr for Strides {}

fn strides(t: &Tensor) -> Strides {
    let s = t.stride();
    Strides { b: s[0] as i64, h: s[1] as i64, t: s[2] as i64 }
}

/// Strides of a `[B, T, H, D]` buffer seen as `[B, H, T, D]`.
fn token_major(t_len: usize, h: usize, d: usize) -> Strides {
    Strides { b: (t_len * h * d) as i64, h: d as i64, t: (h * d) as i64 }
}

fn unit_last(t: &Tensor) -> Result<Tensor> {
    if t.stride()[3] == 1 {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// A `[B, T, H, D]` buffer as a `[B, H, T, D]` view.
fn bhtd_view(s: CudaStorage, b: usize, h: usize, t: usize, d: usize) -> Result<Tensor> {
    tensor(s, (b, t, h, d)).transpose(1, 2)
}

/// Eight query (or key) rows per block, one warp each, as `WARPS` in attention.cu.
fn attention_grid(t: usize, heads: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (t.div_ceil(8) as u32, heads as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// Shared-memory bytes of the tensor-core kernels (attention_tc.cu's 64-row tiles), 16-bit dtypes.
struct TcSmem {
    fwd: u32,
    dq: u32,
    dkv: u32,
}

fn tc_smem(d: usize) -> TcSmem {
    let tile_bytes = 64 * (d + 8) * 2;
    TcSmem { fwd: (4 * tile_bytes) as u32, dq: (6 * tile_bytes) as u32, dkv: (6 * tile_bytes + 4 * 64 * 4) as u32 }
}

/// Whether the tensor-core kernels take these tensors: a 16-bit dtype, and every row start
/// 16-byte aligned (the kernels read rows as 16-byte vectors): pointers and the strides of
/// dims longer than 1 multiples of 8 elements. The f32 path and other layouts run the CUDA-core
/// kernels of attention.cu.
fn tc_fits(dev: &CudaDevice, name: &str, rows: &[(u64, &Tensor)]) -> bool {
    let aligned =
        rows.iter().all(|(p, t)| p % 16 == 0 && t.dims()[..3].iter().zip(t.stride()).all(|(&n, &s)| n == 1 || s % 8 == 0));
    let dtype_ok = rows.iter().all(|(_, t)| matches!(t.dtype(), DType::BF16 | DType::F16));
    // A build for a pre-Ampere card compiles the tensor-core kernels out.
    dtype_ok && aligned && dev.get_or_load_custom_func(name, ATTENTION_TC.0, ATTENTION_TC.1).is_ok()
}

/// 64 query (or key) rows per block, four warps, as `TILE` and `TC_WARPS` in attention_tc.cu.
fn tc_grid(t: usize, heads: usize, smem: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (t.div_ceil(64) as u32, heads as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: smem }
}

/// See [`super::attention_fwd`].
pub(super) fn attention_fwd(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<(Tensor, Tensor)> {
    let dev = cuda_device(q)?;
    let stream = dev.cuda_stream();
    let (q, k, v) = (unit_last(q)?, unit_last(k)?, unit_last(v)?);
    let (b, hq, t, d) = q.dims4()?;
    let hkv = k.dim(1)?;
    let mut o = alloc(&dev, q.dtype(), q.elem_count())?;
    let mut lse = alloc(&dev, DType::F32, b * hq * t)?;
    if q.elem_count() > 0 {
        let sfx = suffix(q.dtype())?;
        let (qr, kr, vr) = (Read::new(&q), Read::new(&k), Read::new(&v));
        let (qp, _qg) = qr.ptr(&stream)?;
        let (kp, _kg) = kr.ptr(&stream)?;
        let (vp, _vg) = vr.ptr(&stream)?;
        let (op, _og) = ptr_mut(&mut o, &stream)?;
        let (lp, _lg) = ptr_mut(&mut lse, &stream)?;
        let mut args = vec![Arg::Ptr(qp), Arg::Ptr(kp), Arg::Ptr(vp), Arg::Ptr(op), Arg::Ptr(lp)];
        args.extend([Arg::I32(hq as i32), Arg::I32(hkv as i32), Arg::I32(i32_of(t, "seq")?)]);
        args.extend([strides(&q), strides(&k), strides(&v), token_major(t, hq, d)].map(Arg::Strides));
        args.push(Arg::F32(scale as f32));
        let tc_name = format!("attn_fwd_tc_{sfx}_d{d}");
        if tc_fits(&dev, &tc_name, &[(qp, &q), (kp, &k), (vp, &v)]) {
            launch_smem(&dev, ATTENTION_TC, &tc_name, tc_grid(t, b * hq, tc_smem(d).fwd), &args)?;
        } else {
            launch(&dev, ATTENTION, &format!("attn_fwd_{sfx}_d{d}"), attention_grid(t, b * hq), &args)?;
        }
    }
    Ok((bhtd_view(o, b, hq, t, d)?, tensor(lse, (b, hq, t))))
}

/// See [`super::attention_bwd`].
pub(super) fn attention_bwd(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    scale: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dev = cuda_device(q)?;
    let stream = dev.cuda_stream();
    let (q, k, v, o, dout) = (unit_last(q)?, unit_last(k)?, unit_last(v)?, unit_last(o)?, unit_last(dout)?);
    let lse = lse.to_dtype(DType::F32)?.contiguous()?;
    let (b, hq, t, d) = q.dims4()?;
    let hkv = k.dim(1)?;
    let mut dq = alloc(&dev, q.dtype(), q.elem_count())?;
    let mut dk = alloc(&dev, q.dtype(), k.elem_count())?;
    let mut dv = alloc(&dev, q.dtype(), k.elem_count())?;
    let mut delta = alloc(&dev, DType::F32, b * hq * t)?;
    if q.elem_count() > 0 {
        let sfx = suffix(q.dtype())?;
        let sizes = || [Arg::I32(hq as i32), Arg::I32(hkv as i32), Arg::I32(t as i32)];
        let (qr, kr, vr, or, dor, lr) =
            (Read::new(&q), Read::new(&k), Read::new(&v), Read::new(&o), Read::new(&dout), Read::new(&lse));
        let (qp, _qg) = qr.ptr(&stream)?;
        let (kp, _kg) = kr.ptr(&stream)?;
        let (vp, _vg) = vr.ptr(&stream)?;
        let (op, _og) = or.ptr(&stream)?;
        let (dop, _dog) = dor.ptr(&stream)?;
        let (lp, _lg) = lr.ptr(&stream)?;
        let dq_tc = format!("attn_bwd_dq_tc_{sfx}_d{d}");
        let tc = tc_fits(&dev, &dq_tc, &[(qp, &q), (kp, &k), (vp, &v), (dop, &dout)]);
        if tc {
            // delta = rowsum(dout * o) first; both backward kernels read it.
            let (dp, _dg) = ptr_mut(&mut delta, &stream)?;
            let mut args = vec![Arg::Ptr(op), Arg::Ptr(dop), Arg::Ptr(dp), Arg::I32(hq as i32), Arg::I32(t as i32)];
            args.extend([Arg::I32(d as i32), Arg::Strides(strides(&o)), Arg::Strides(strides(&dout))]);
            let cfg = LaunchConfig {
                grid_dim: (t.div_ceil(8) as u32, (b * hq) as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            launch(&dev, ATTENTION_TC, &format!("attn_delta_{sfx}"), cfg, &args)?;
        }
        {
            let (dp, _dg) = ptr_mut(&mut delta, &stream)?;
            let (dqp, _dqg) = ptr_mut(&mut dq, &stream)?;
            if tc {
                let mut args = vec![Arg::Ptr(qp), Arg::Ptr(kp), Arg::Ptr(vp), Arg::Ptr(dop), Arg::Ptr(lp)];
                args.extend([Arg::Ptr(dp), Arg::Ptr(dqp)]);
                args.extend(sizes());
                let st = [strides(&q), strides(&k), strides(&v), strides(&dout), token_major(t, hq, d)];
                args.extend(st.map(Arg::Strides));
                args.push(Arg::F32(scale as f32));
                launch_smem(&dev, ATTENTION_TC, &dq_tc, tc_grid(t, b * hq, tc_smem(d).dq), &args)?;
            } else {
                let mut args = vec![Arg::Ptr(qp), Arg::Ptr(kp), Arg::Ptr(vp), Arg::Ptr(op), Arg::Ptr(dop), Arg::Ptr(lp)];
                args.extend([Arg::Ptr(dp), Arg::Ptr(dqp)]);
                args.extend(sizes());
                let st = [strides(&q), strides(&k), strides(&v), strides(&o), strides(&dout), token_major(t, hq, d)];
                args.extend(st.map(Arg::Strides));
                args.push(Arg::F32(scale as f32));
                launch(&dev, ATTENTION, &format!("attn_bwd_dq_{sfx}_d{d}"), attention_grid(t, b * hq), &args)?;
            }
        }
        let delta = tensor(delta, (b, hq, t));
        let dr = Read::new(&delta);
        let (dp, _dg) = dr.ptr(&stream)?;
        let (dkp, _dkg) = ptr_mut(&mut dk, &stream)?;
        let (dvp, _dvg) = ptr_mut(&mut dv, &stream)?;
        let mut args = vec![Arg::Ptr(qp), Arg::Ptr(kp), Arg::Ptr(vp), Arg::Ptr(dop), Arg::Ptr(lp), Arg::Ptr(dp)];
        args.extend([Arg::Ptr(dkp), Arg::Ptr(dvp)]);
        args.extend(sizes());
        let st = [strides(&q), strides(&k), strides(&v), strides(&dout), token_major(t, hkv, d), token_major(t, hkv, d)];
        args.extend(st.map(Arg::Strides));
        args.push(Arg::F32(scale as f32));
        if tc {
            let name = format!("attn_bwd_dkv_tc_{sfx}_d{d}");
            launch_smem(&dev, ATTENTION_TC, &name, tc_grid(t, b * hkv, tc_smem(d).dkv), &args)?;
        } else {
            launch(&dev, ATTENTION, &format!("attn_bwd_dkv_{sfx}_d{d}"), attention_grid(t, b * hkv), &args)?;
        }
    }
    Ok((bhtd_view(dq, b, hq, t, d)?, bhtd_view(dk, b, hkv, t, d)?, bhtd_view(dv, b, hkv, t, d)?))
}

/// Rows per block of the LoRA kernels (`LORA_BLOCK_ROWS` in lora.cu) and threads per block.
const LORA_BLOCK_ROWS: usize = 128;
const LORA_THREADS: u32 = 256;

/// The compiled rank `R >= r` of the LoRA kernels (8, 16, 32 or 64) and the columns per lane of
/// its forward and backward kernels (`LORA_C_FWD`, `LORA_C_BWD` in lora.cu).
struct LoraVariant {
    rank: usize,
    cols_fwd: usize,
    cols_bwd: usize,
}

fn lora_variant(r: usize) -> Result<LoraVariant> {
    let Some(rank) = super::lora_kernel_rank(r) else {
        bail!("LoRA rank {r} is above the kernels' {}", super::LORA_KERNEL_MAX_RANK)
    };
    Ok(LoraVariant { rank, cols_fwd: super::lora_cols_fwd(rank), cols_bwd: super::lora_cols_bwd(rank) })
}

/// Column tiles of `32 * cols` by row blocks of [`LORA_BLOCK_ROWS`] over an `[n, k]` activation.
fn lora_grid(n: usize, k: usize, cols: usize) -> Result<LaunchConfig> {
    let blocks = n.div_ceil(LORA_BLOCK_ROWS);
    if blocks > 65535 {
        bail!("{n} rows are too many for the LoRA kernels");
    }
    i32_of(n, "rows")?;
    i32_of(k, "hidden")?;
    Ok(LaunchConfig {
        grid_dim: (k.div_ceil(32 * cols) as u32, blocks as u32, 1),
        block_dim: (LORA_THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// One `lora_reduce` launch: `out[row * s_row + j * s_j] = sum over parts of part[p][row][j]`
/// for `row < rows`, `j < cols` (see lora.cu for `mode`).
struct LoraReduce {
    part: u64,
    parts: usize,
    rows: usize,
    cols: usize,
    r: usize,
    rank: usize,
    out: u64,
    s_row: usize,
    s_j: usize,
    scale: f32,
    mode: i32,
}

fn lora_reduce(dev: &CudaDevice, dt: DType, l: LoraReduce) -> Result<()> {
    let name = format!("lora_reduce_{}", suffix(dt)?);
    let args = [
        Arg::Ptr(l.part),
        Arg::I32(i32_of(l.parts, "partials")?),
        Arg::U64((l.rows * l.rank) as u64),
        Arg::I32(i32_of(l.rows, "rows")?),
        Arg::I32(l.cols as i32),
        Arg::I32(l.r as i32),
        Arg::I32(l.rank as i32),
        Arg::Ptr(l.out),
        Arg::I64(l.s_row as i64),
        Arg::I64(l.s_j as i64),
        Arg::F32(l.scale),
        Arg::I32(l.mode),
    ];
    launch(dev, LORA, &name, grid(l.rows * l.cols, 256), &args)
}

/// The kernels' dropout arguments: masked (0/1), threshold, keep.
fn lora_mask_args(p: f32) -> [Arg; 3] {
    let (threshold, keep) = super::generic::dropout_params(p);
    [Arg::I32(i32::from(p > 0.0)), Arg::U32(threshold), Arg::F32(keep)]
}

/// See [`super::lora_down`].
pub(super) fn lora_down(x: &Tensor, a: &Tensor, seed: u64, p: f32, first: u64) -> Result<Tensor> {
    let dev = cuda_device(x)?;
    let stream = dev.cuda_stream();
    let (x, a) = (x.contiguous()?, a.contiguous()?);
    let (n, k) = x.dims2()?;
    let r = a.dim(0)?;
    let v = lora_variant(r)?;
    let sfx = suffix(x.dtype())?;
    let cfg = lora_grid(n, k, v.cols_fwd)?;
    let tiles = cfg.grid_dim.0 as usize;
    let mut zp = alloc(&dev, DType::F32, tiles * n * v.rank)?;
    let mut z = alloc(&dev, x.dtype(), n * r)?;
    {
        let (xr, ar) = (Read::new(&x), Read::new(&a));
        let (xp, _xg) = xr.ptr(&stream)?;
        let (ap, _ag) = ar.ptr(&stream)?;
        let (zpp, _zpg) = ptr_mut(&mut zp, &stream)?;
        let [masked, threshold, keep] = lora_mask_args(p);
        let args = [
            Arg::Ptr(xp),
            Arg::Ptr(ap),
            Arg::Ptr(zpp),
            Arg::I32(n as i32),
            Arg::I32(k as i32),
            Arg::I32(r as i32),
            masked,
            Arg::U64(first),
            Arg::U64(seed),
            threshold,
            keep,
        ];
        launch(&dev, LORA, &format!("lora_down_{sfx}_r{}", v.rank), cfg, &args)?;
    }
    {
        let (zpp, _zpg) = ptr_mut(&mut zp, &stream)?;
        let (zptr, _zg) = ptr_mut(&mut z, &stream)?;
        let reduce = LoraReduce {
            part: zpp,
            parts: tiles,
            rows: n,
            cols: r,
            r,
            rank: v.rank,
            out: zptr,
            s_row: r,
            s_j: 1,
            scale: 1.0,
            mode: 0,
        };
        lora_reduce(&dev, x.dtype(), reduce)?;
    }
    Ok(tensor(z, (n, r)))
}

/// See [`super::lora_up_add`].
pub(super) fn lora_up_add(y: &Tensor, z: &Tensor, sb: &Tensor) -> Result<Tensor> {
    let dev = cuda_device(y)?;
    let stream = dev.cuda_stream();
    let (y, z, sb) = (y.contiguous()?, z.contiguous()?, sb.contiguous()?);
    let (n, k) = y.dims2()?;
    let r = z.dim(1)?;
    let v = lora_variant(r)?;
    let cfg = lora_grid(n, k, v.cols_fwd)?;
    let mut out = alloc(&dev, y.dtype(), n * k)?;
    {
        let (yr, zr, br) = (Read::new(&y), Read::new(&z), Read::new(&sb));
        let (yp, _yg) = yr.ptr(&stream)?;
        let (zp, _zg) = zr.ptr(&stream)?;
        let (bp, _bg) = br.ptr(&stream)?;
        let (op, _og) = ptr_mut(&mut out, &stream)?;
        let mut args = vec![Arg::Ptr(yp), Arg::Ptr(zp), Arg::Ptr(bp), Arg::Ptr(op)];
        args.extend([n, k, r].map(|v| Arg::I32(v as i32)));
        launch(&dev, LORA, &format!("lora_up_add_{}_r{}", suffix(y.dtype())?, v.rank), cfg, &args)?;
    }
    Ok(tensor(out, (n, k)))
}

/// Sums the backward's dA and dB partials into the gradient buffer (in place: the buffer is the
/// op's destination, the partials its captured inputs).
struct LoraGradWrite {
    /// `[row blocks, in, R]` f32.
    dap: Tensor,
    /// `[row blocks, out, R]` f32.
    dbp: Tensor,
    dt: DType,
    rank: usize,
    r: usize,
    slot_a: usize,
    slot_b: usize,
    scaling: f32,
}

impl InplaceOp1 for LoraGradWrite {
    fn name(&self) -> &'static str {
        "lora-grad-write"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> Result<()> {
        bail!("lora-grad-write runs on CUDA only")
    }

    fn cuda_fwd(&self, buf: &mut CudaStorage, layout: &Layout) -> Result<()> {
        let dev = buf.device().clone();
        let stream = dev.cuda_stream();
        if buf.dtype() != DType::F32 {
            bail!("lora-grad-write: the gradient buffer is {:?}, not f32", buf.dtype());
        }
        let start = layout.start_offset();
        let (bp, _bg) = ptr_mut(buf, &stream)?;
        let at = |off: usize| bp + ((start + off) * size_of::<f32>()) as u64;
        let (ar, br) = (Read::new(&self.dap), Read::new(&self.dbp));
        let (dap, _ag) = ar.ptr(&stream)?;
        let (dbp, _bg2) = br.ptr(&stream)?;
        let (k_in, k_out) = (self.dap.dim(1)?, self.dbp.dim(1)?);
        let parts = self.dap.dim(0)?;
        let (r, rank) = (self.r, self.rank);
        // dA [r, in]: rows are the input columns, so the unit stride is along the rows.
        let da = LoraReduce {
            part: dap,
            parts,
            rows: k_in,
            cols: r,
            r,
            rank,
            out: at(self.slot_a),
            s_row: 1,
            s_j: k_in,
            scale: 1.0,
            mode: 2,
        };
        lora_reduce(&dev, self.dt, da)?;
        let db = LoraReduce {
            part: dbp,
            parts,
            rows: k_out,
            cols: r,
            r,
            rank,
            out: at(self.slot_b),
            s_row: r,
            s_j: 1,
            scale: self.scaling,
            mode: 2,
        };
        lora_reduce(&dev, self.dt, db)
    }
}

/// See [`super::lora_bwd`].
#[allow(clippy::too_many_arguments)]
pub(super) fn lora_bwd(
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
    let dev = cuda_device(x)?;
    let stream = dev.cuda_stream();
    let (dy, x, z, dx) = (dy.contiguous()?, x.contiguous()?, z.contiguous()?, dx.contiguous()?);
    let (a, sb) = (a.contiguous()?, sb.contiguous()?);
    let (n, k_in) = x.dims2()?;
    let k_out = dy.dim(1)?;
    let r = a.dim(0)?;
    let dt = x.dtype();
    let sfx = suffix(dt)?;
    let v = lora_variant(r)?;
    let rank = v.rank;
    // The dy pass: dz partials per column tile, dB partials per row block.
    let cfg_dy = lora_grid(n, k_out, v.cols_bwd)?;
    let (tiles, blocks) = (cfg_dy.grid_dim.0 as usize, cfg_dy.grid_dim.1 as usize);
    let mut dzp = alloc(&dev, DType::F32, tiles * n * rank)?;
    let mut dbp = alloc(&dev, DType::F32, blocks * k_out * rank)?;
    {
        let (dyr, zr, br) = (Read::new(&dy), Read::new(&z), Read::new(&sb));
        let (dyp, _dyg) = dyr.ptr(&stream)?;
        let (zp, _zg) = zr.ptr(&stream)?;
        let (bp, _bg) = br.ptr(&stream)?;
        let (dzpp, _dzpg) = ptr_mut(&mut dzp, &stream)?;
        let (dbpp, _dbpg) = ptr_mut(&mut dbp, &stream)?;
        let mut args = vec![Arg::Ptr(dyp), Arg::Ptr(zp), Arg::Ptr(bp), Arg::Ptr(dzpp), Arg::Ptr(dbpp)];
        args.extend([n, k_out, r].map(|v| Arg::I32(v as i32)));
        launch(&dev, LORA, &format!("lora_bwd_dy_{sfx}_r{rank}"), cfg_dy, &args)?;
    }
    // dz: [n, R] f32 holding values rounded to the dtype, zero beyond r.
    let mut dz = alloc(&dev, DType::F32, n * rank)?;
    {
        let (dzpp, _dzpg) = ptr_mut(&mut dzp, &stream)?;
        let (dzptr, _dzg) = ptr_mut(&mut dz, &stream)?;
        let reduce = LoraReduce {
            part: dzpp,
            parts: tiles,
            rows: n,
            cols: rank,
            r,
            rank,
            out: dzptr,
            s_row: rank,
            s_j: 1,
            scale: 1.0,
            mode: 1,
        };
        lora_reduce(&dev, dt, reduce)?;
    }
    // The x pass: dx + drop(dz A), dA partials per row block.
    let cfg_x = lora_grid(n, k_in, v.cols_bwd)?;
    let mut dap = alloc(&dev, DType::F32, blocks * k_in * rank)?;
    let mut out = alloc(&dev, dt, n * k_in)?;
    {
        let (xr, dxr, ar) = (Read::new(&x), Read::new(&dx), Read::new(&a));
        let (xp, _xg) = xr.ptr(&stream)?;
        let (dxp, _dxg) = dxr.ptr(&stream)?;
        let (ap, _ag) = ar.ptr(&stream)?;
        let (dzptr, _dzg) = ptr_mut(&mut dz, &stream)?;
        let (op, _og) = ptr_mut(&mut out, &stream)?;
        let (dapp, _dapg) = ptr_mut(&mut dap, &stream)?;
        let [masked, threshold, keep] = lora_mask_args(p);
        let mut args = vec![Arg::Ptr(xp), Arg::Ptr(dxp), Arg::Ptr(dzptr), Arg::Ptr(ap), Arg::Ptr(op), Arg::Ptr(dapp)];
        args.extend([n, k_in, r].map(|v| Arg::I32(v as i32)));
        args.extend([masked, Arg::U64(first), Arg::U64(seed), threshold, keep]);
        launch(&dev, LORA, &format!("lora_bwd_x_{sfx}_r{rank}"), cfg_x, &args)?;
    }
    let write = LoraGradWrite {
        dap: tensor(dap, (blocks, k_in, rank)),
        dbp: tensor(dbp, (blocks, k_out, rank)),
        dt,
        rank,
        r,
        slot_a: slot.a,
        slot_b: slot.b,
        scaling: slot.scaling,
    };
    slot.buf.inplace_op1(&write)?;
    Ok(tensor(out, (n, k_in)))
}
