//! GPU check of the fused ops in `pipe::model::ops`: correctness of each CUDA kernel against the
//! CPU reference, and its speed against candle's generic composition of the same op on the GPU.
//!
//! For every op, shape and dtype it draws random inputs, runs the op on the CPU (the reference)
//! and on CUDA (the kernel), and prints the max absolute error, the error relative to the largest
//! reference value, and PASS/FAIL against the dtype's tolerance. On the larger shapes (SmolLM2-135M
//! and 7B-like) it then times the kernel, the generic composition (`ops::generic`, what a candle
//! decoder would run without the kernels) and, where candle has one, candle's own fused
//! forward-only kernel: the median over samples of the wall time of back-to-back calls divided
//! by their number, with the device synchronized around each sample (so launch overhead counts).
//! Exits 1 if any check fails (an op that errors counts as failed; the others still run).
//!
//! Every output buffer the fused ops allocate is filled with NaN before its kernel runs
//! (`PIPE_CUDA_POISON=1`, set here unless the caller set it), so a kernel that leaves part of its
//! output unwritten fails instead of passing on what the memory pool handed back.
//! `PIPE_FUSED_LORA=off` runs the generic composition instead of the fused LoRA kernels (see `ops::FusedLora`).
//!
//!     CUDA_COMPUTE_CAP=90 cargo build --release --features cuda --example ops_check
//!     ops_check [--samples 15] [--reps 10] [--no-time] [--small] [--only lora,attention]
//!
//! `--small` keeps only the small (untimed) shapes, for the slower sanitizer tools; `--only`
//! runs the named op groups (rms_norm, rope, swiglu, cross_entropy, dropout, attention, lora,
//! dequant: the frozen-weight dequantization of `base_quant`, bit for bit against the CPU).

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use pipe::model::ops::{self, generic, IGNORE_INDEX};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Opts {
    samples: usize,
    reps: usize,
    time: bool,
    /// Only the untimed (small) shapes.
    small: bool,
    /// Op groups to run; empty: all.
    only: Vec<String>,
}

impl Opts {
    /// Whether a shape of op group `op` runs (`timed`: one of the large, timed shapes).
    fn runs(&self, op: &str, timed: bool) -> bool {
        (self.only.is_empty() || self.only.iter().any(|o| o == op)) && !(self.small && timed)
    }
}

struct Check {
    cpu: Device,
    gpu: Device,
    opts: Opts,
    rng: ChaCha8Rng,
    failed: usize,
}

fn tol(dt: DType) -> f64 {
    match dt {
        DType::F32 => 1e-5,
        DType::F16 => 2e-3,
        _ => 1e-2,
    }
}

fn name(dt: DType) -> &'static str {
    match dt {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "?",
    }
}

fn vals(t: &Tensor) -> Result<Vec<f64>> {
    t.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1()
}

/// (max |a - b|, max |a - b| / max |b|).
fn err(got: &Tensor, want: &Tensor) -> Result<(f64, f64)> {
    let (a, b) = (vals(got)?, vals(want)?);
    assert_eq!(a.len(), b.len(), "output sizes differ");
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
    let abs = a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    // A NaN anywhere must fail.
    let abs = if a.iter().any(|x| x.is_nan()) != b.iter().any(|x| x.is_nan()) { f64::NAN } else { abs };
    Ok((abs, abs / scale))
}

impl Check {
    fn randn(&mut self, shape: &[usize], dt: DType, amp: f32) -> Result<(Tensor, Tensor)> {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.rng.random_range(-amp..amp)).collect();
        let cpu = Tensor::from_vec(v, shape, &self.cpu)?.to_dtype(dt)?;
        let gpu = cpu.to_device(&self.gpu)?;
        Ok((cpu, gpu))
    }

    fn report(&mut self, op: &str, shape: &str, dt: DType, (abs, rel): (f64, f64), tol: f64) {
        let ok = rel <= tol;
        if !ok {
            self.failed += 1;
        }
        println!(
            "{:<22} {:<20} {:<5} max abs {:>10.3e}  rel {:>10.3e}  tol {:>7.0e}  {}",
            op,
            shape,
            name(dt),
            abs,
            rel,
            tol,
            if ok { "PASS" } else { "FAIL" }
        );
    }

    /// Counts an op whose check stopped on an error as a failure, and carries on with the rest.
    fn guard(&mut self, op: &str, r: Result<()>) {
        if let Err(e) = r {
            self.failed += 1;
            println!("{op:<22} ERROR {e}");
        }
    }

    /// Median microseconds per call of `f` on the GPU.
    fn time(&self, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        for _ in 0..3 {
            f()?;
        }
        self.gpu.synchronize()?;
        let mut us = Vec::with_capacity(self.opts.samples);
        for _ in 0..self.opts.samples {
            self.gpu.synchronize()?;
            let t0 = Instant::now();
            for _ in 0..self.opts.reps {
                f()?;
            }
            self.gpu.synchronize()?;
            us.push(t0.elapsed().as_secs_f64() * 1e6 / self.opts.reps as f64);
        }
        us.sort_by(|a, b| a.total_cmp(b));
        Ok(us[us.len() / 2])
    }

    fn timing(&self, op: &str, shape: &str, dt: DType, kernel: f64, generic: f64, candle: Option<f64>) {
        let candle = candle.map(|c| format!("{c:>10.1}")).unwrap_or_else(|| format!("{:>10}", "-"));
        println!(
            "TIME {:<17} {:<20} {:<5} kernel {:>9.1} us  generic {:>9.1} us  speedup {:>6.2}x  candle fused fwd {} us",
            op,
            shape,
            name(dt),
            kernel,
            generic,
            generic / kernel,
            candle
        );
    }

    fn rms_norm(&mut self, n: usize, h: usize, dt: DType, time: bool) -> Result<()> {
        let shape = format!("{n}x{h}");
        let (x, xg) = self.randn(&[n, h], dt, 2.0)?;
        let (w, wg) = self.randn(&[h], dt, 1.5)?;
        let (dy, dyg) = self.randn(&[n, h], dt, 1.0)?;
        let (y, rstd) = ops::rms_norm_fwd(&x, &w, 1e-5)?;
        let (yg, rstdg) = ops::rms_norm_fwd(&xg, &wg, 1e-5)?;
        self.report("rms_norm_fwd y", &shape, dt, err(&yg, &y)?, tol(dt));
        self.report("rms_norm_fwd rstd", &shape, dt, err(&rstdg, &rstd)?, 1e-5);
        let dx = ops::rms_norm_bwd(&dy, &x, &w, &rstd)?;
        let dxg = ops::rms_norm_bwd(&dyg, &xg, &wg, &rstdg)?;
        self.report("rms_norm_bwd dx", &shape, dt, err(&dxg, &dx)?, tol(dt));
        if time {
            let k = self.time(|| ops::rms_norm_fwd(&xg, &wg, 1e-5).map(drop))?;
            let g = self.time(|| generic::rms_norm_fwd(&xg, &wg, 1e-5).map(drop))?;
            let c = self.time(|| candle_nn::ops::rms_norm(&xg, &wg, 1e-5).map(drop))?;
            self.timing("rms_norm_fwd", &shape, dt, k, g, Some(c));
            let k = self.time(|| ops::rms_norm_bwd(&dyg, &xg, &wg, &rstdg).map(drop))?;
            let g = self.time(|| generic::rms_norm_bwd(&dyg, &xg, &wg, &rstdg).map(drop))?;
            self.timing("rms_norm_bwd", &shape, dt, k, g, None);
        }
        Ok(())
    }

    fn rope(&mut self, b: usize, heads: usize, t: usize, d: usize, dt: DType, time: bool) -> Result<()> {
        let shape = format!("{b}x{heads}x{t}x{d}");
        let half = d / 2;
        let ang: Vec<f32> =
            (0..t).flat_map(|p| (0..half).map(move |i| p as f32 * 10000f32.powf(-(i as f32) / half as f32))).collect();
        let cos = Tensor::from_vec(ang.iter().map(|a| a.cos()).collect::<Vec<_>>(), (t, half), &self.cpu)?;
        let sin = Tensor::from_vec(ang.iter().map(|a| a.sin()).collect::<Vec<_>>(), (t, half), &self.cpu)?;
        let (cosg, sing) = (cos.to_device(&self.gpu)?, sin.to_device(&self.gpu)?);
        // The projection layout [B, T, heads, D]; the op reads it as a transposed view.
        let (p, pg) = self.randn(&[b, t, heads, d], dt, 2.0)?;
        let (x, xg) = (p.transpose(1, 2)?.contiguous()?, pg.transpose(1, 2)?.contiguous()?);
        let y = ops::rope_fwd(&x, &cos, &sin)?;
        self.report("rope_fwd", &shape, dt, err(&ops::rope_fwd(&xg, &cosg, &sing)?, &y)?, tol(dt));
        let strided = ops::rope_fwd(&pg.transpose(1, 2)?, &cosg, &sing)?;
        self.report("rope_fwd (strided in)", &shape, dt, err(&strided, &y)?, tol(dt));
        let dx = ops::rope_bwd(&x, &cos, &sin)?;
        self.report("rope_bwd", &shape, dt, err(&ops::rope_bwd(&xg, &cosg, &sing)?, &dx)?, tol(dt));
        let dxt = ops::rope_bwd_tokens(&xg, &cosg, &sing)?;
        self.report("rope_bwd_tokens", &shape, dt, err(&dxt, &dx.transpose(1, 2)?.contiguous()?)?, tol(dt));
        if time {
            let (cosd, sind) = (cosg.to_dtype(dt)?, sing.to_dtype(dt)?);
            let k = self.time(|| ops::rope_fwd(&xg, &cosg, &sing).map(drop))?;
            let g = self.time(|| generic::rope_fwd(&xg, &cosg, &sing).map(drop))?;
            let c = self.time(|| candle_nn::rotary_emb::rope(&xg, &cosd, &sind).map(drop))?;
            self.timing("rope_fwd", &shape, dt, k, g, Some(c));
            // As llama.rs would use it: from the projection's layout, through a copy for candle.
            let k = self.time(|| ops::rope_fwd(&pg.transpose(1, 2)?, &cosg, &sing).map(drop))?;
            let g = self.time(|| generic::rope_fwd(&pg.transpose(1, 2)?.contiguous()?, &cosg, &sing).map(drop))?;
            let c = self.time(|| candle_nn::rotary_emb::rope(&pg.transpose(1, 2)?.contiguous()?, &cosd, &sind).map(drop))?;
            self.timing("rope_fwd from [B,T,H,D]", &shape, dt, k, g, Some(c));
            let k = self.time(|| ops::rope_bwd_tokens(&xg, &cosg, &sing).map(drop))?;
            let g = self.time(|| generic::rope_bwd_tokens(&xg, &cosg, &sing).map(drop))?;
            self.timing("rope_bwd_tokens", &shape, dt, k, g, None);
        }
        Ok(())
    }

    fn swiglu(&mut self, n: usize, i: usize, dt: DType, time: bool) -> Result<()> {
        let shape = format!("{n}x{i}");
        let (g, gg) = self.randn(&[n, i], dt, 4.0)?;
        let (u, ug) = self.randn(&[n, i], dt, 2.0)?;
        let (dy, dyg) = self.randn(&[n, i], dt, 1.0)?;
        let y = ops::swiglu_fwd(&g, &u)?;
        self.report("swiglu_fwd", &shape, dt, err(&ops::swiglu_fwd(&gg, &ug)?, &y)?, tol(dt));
        let (dg, du) = ops::swiglu_bwd(&dy, &g, &u)?;
        let (dgg, dug) = ops::swiglu_bwd(&dyg, &gg, &ug)?;
        self.report("swiglu_bwd dgate", &shape, dt, err(&dgg, &dg)?, tol(dt));
        self.report("swiglu_bwd dup", &shape, dt, err(&dug, &du)?, tol(dt));
        if time {
            let k = self.time(|| ops::swiglu_fwd(&gg, &ug).map(drop))?;
            let c = self.time(|| generic::swiglu_fwd(&gg, &ug).map(drop))?;
            self.timing("swiglu_fwd", &shape, dt, k, c, None);
            let k = self.time(|| ops::swiglu_bwd(&dyg, &gg, &ug).map(drop))?;
            let c = self.time(|| generic::swiglu_bwd(&dyg, &gg, &ug).map(drop))?;
            self.timing("swiglu_bwd", &shape, dt, k, c, None);
        }
        Ok(())
    }

    fn cross_entropy(&mut self, n: usize, v: usize, dt: DType, time: bool) -> Result<()> {
        let shape = format!("{n}x{v}");
        let (z, zg) = self.randn(&[n, v], dt, 8.0)?;
        let labels: Vec<i64> = (0..n)
            .map(|_| if self.rng.random_range(0..4) == 0 { IGNORE_INDEX } else { self.rng.random_range(0..v as i64) })
            .collect();
        let lab = Tensor::from_vec(labels, n, &self.cpu)?;
        let labg = lab.to_device(&self.gpu)?;
        let scale = 1.0 / n as f64;
        let want = ops::cross_entropy_fwd_bwd(&z, &lab, scale)?;
        let got = ops::cross_entropy_fwd_bwd(&zg, &labg, scale)?;
        let count_ok = want.count.to_scalar::<u32>()? == got.count.to_device(&self.cpu)?.to_scalar::<u32>()?;
        let loss_err = err(&got.loss_sum, &want.loss_sum)?;
        self.report("ce loss_sum", &shape, dt, if count_ok { loss_err } else { (f64::NAN, f64::NAN) }, 1e-5);
        let (dl, dlg) = (want.dlogits.expect("gradient"), got.dlogits.expect("gradient"));
        self.report("ce dlogits", &shape, dt, err(&dlg, &dl)?, tol(dt));
        let eval = ops::cross_entropy_loss(&zg, &labg)?;
        self.report("ce loss (no grad)", &shape, dt, err(&eval.loss_sum, &want.loss_sum)?, 1e-5);
        if time {
            let k = self.time(|| ops::cross_entropy_fwd_bwd(&zg, &labg, scale).map(drop))?;
            let g = self.time(|| generic::cross_entropy_fwd_bwd(&zg, &labg, scale).map(drop))?;
            self.timing("ce fwd+bwd", &shape, dt, k, g, None);
        }
        Ok(())
    }

    fn dropout(&mut self, n: usize, d: usize, dt: DType, time: bool) -> Result<()> {
        let shape = format!("{n}x{d}");
        let (x, xg) = self.randn(&[n, d], dt, 2.0)?;
        let seed = self.rng.random::<u64>();
        let want = ops::lora_dropout(&x, seed, 0.1)?;
        // Bit-identical masks: the result must match exactly in every dtype.
        self.report("lora_dropout", &shape, dt, err(&ops::lora_dropout(&xg, seed, 0.1)?, &want)?, 0.0);
        // A data-parallel shard starting at an odd element of its micro-batch.
        let want = ops::lora_dropout_at(&x, seed, 0.1, 7)?;
        self.report("lora_dropout_at 7", &shape, dt, err(&ops::lora_dropout_at(&xg, seed, 0.1, 7)?, &want)?, 0.0);
        if time {
            let k = self.time(|| ops::lora_dropout(&xg, seed, 0.1).map(drop))?;
            let g = self.time(|| generic::lora_dropout(&xg, seed, 0.1, 0).map(drop))?;
            self.timing("lora_dropout", &shape, dt, k, g, None);
        }
        Ok(())
    }
    /// The fused LoRA ops against the CPU composition: `dims` = (N, in, out, r, first, p), with
    /// `first` the shard offset in rows. The backward writes into a buffer with guard values
    /// around an odd-offset slot, checked untouched, and runs twice to check the gradients are
    /// bitwise reproducible.
    fn lora(&mut self, dims: (usize, usize, usize, usize, usize, f32), dt: DType, time: bool) -> Result<()> {
        let (n, k, o, r, first_row, p) = dims;
        let shape = format!("{n}x{k}>{o} r{r}{}", if first_row > 0 { format!(" @{first_row}") } else { String::new() });
        let first = (first_row * k) as u64;
        let seed = self.rng.random::<u64>();
        let (x, xg) = self.randn(&[n, k], dt, 2.0)?;
        let (a, ag) = self.randn(&[r, k], dt, 0.5)?;
        let (sb, sbg) = self.randn(&[o, r], dt, 0.5)?;
        let (y, yg) = self.randn(&[n, o], dt, 2.0)?;
        let (dy, dyg) = self.randn(&[n, o], dt, 1.0)?;
        let (dx, dxg) = self.randn(&[n, k], dt, 1.0)?;
        let z = ops::lora_down(&x, &a, seed, p, first)?;
        let zg = ops::lora_down(&xg, &ag, seed, p, first)?;
        self.report("lora_down z", &shape, dt, err(&zg, &z)?, tol(dt));
        // The CPU's z on both sides, so each op is checked on its own.
        let zc = z.to_device(&self.gpu)?;
        let up = ops::lora_up_add(&y, &z, &sb)?;
        self.report("lora_up_add", &shape, dt, err(&ops::lora_up_add(&yg, &zc, &sbg)?, &up)?, tol(dt));
        let (sa, sbo) = (3, 4 + r * k);
        let len = sbo + o * r + 5;
        let guard = -3f32;
        let buf = Tensor::full(guard, len, &self.cpu)?;
        let bufg = Tensor::full(guard, len, &self.gpu)?;
        let slot = |buf| ops::LoraGradSlot { buf, a: sa, b: sbo, scaling: 2.0 };
        let dxo = ops::lora_bwd(&dy, &x, &z, &dx, &a, &sb, seed, p, first, &slot(&buf))?;
        let dxog = ops::lora_bwd(&dyg, &xg, &zc, &dxg, &ag, &sbg, seed, p, first, &slot(&bufg))?;
        self.report("lora_bwd dx", &shape, dt, err(&dxog, &dxo)?, tol(dt));
        let part = |b: &Tensor, at: usize, len: usize| b.narrow(0, at, len);
        self.report("lora_bwd dA", &shape, dt, err(&part(&bufg, sa, r * k)?, &part(&buf, sa, r * k)?)?, tol(dt));
        self.report("lora_bwd dB", &shape, dt, err(&part(&bufg, sbo, o * r)?, &part(&buf, sbo, o * r)?)?, tol(dt));
        let outside = |b: &Tensor| -> Result<Vec<f32>> {
            let v = b.to_device(&self.cpu)?.to_vec1::<f32>()?;
            Ok([&v[..sa], &v[sa + r * k..sbo], &v[sbo + o * r..]].concat())
        };
        let untouched = outside(&bufg)?.iter().all(|v| *v == guard);
        self.report("lora_bwd guards", &shape, dt, if untouched { (0.0, 0.0) } else { (f64::NAN, f64::NAN) }, 0.0);
        let again = Tensor::full(guard, len, &self.gpu)?;
        ops::lora_bwd(&dyg, &xg, &zc, &dxg, &ag, &sbg, seed, p, first, &slot(&again))?;
        self.report("lora_bwd repeat", &shape, dt, err(&again, &bufg)?, 0.0);
        if time {
            let k = self.time(|| ops::lora_up_add(&yg, &ops::lora_down(&xg, &ag, seed, p, first)?, &sbg).map(drop))?;
            let g = self.time(|| generic::lora_up_add(&yg, &generic::lora_down(&xg, &ag, seed, p, first)?, &sbg).map(drop))?;
            self.timing("lora fwd", &shape, dt, k, g, None);
            let k = self.time(|| ops::lora_bwd(&dyg, &xg, &zc, &dxg, &ag, &sbg, seed, p, first, &slot(&bufg)).map(drop))?;
            let g = self.time(|| generic::lora_bwd(&dyg, &xg, &zc, &dxg, &ag, &sbg, seed, p, first, &slot(&bufg)).map(drop))?;
            self.timing("lora bwd", &shape, dt, k, g, None);
        }
        Ok(())
    }

    fn attention(&mut self, dims: (usize, usize, usize, usize, usize), dt: DType, time: bool) -> Result<()> {
        let (b, hq, hkv, t, d) = dims;
        let shape = format!("{b}x{hq}/{hkv}x{t}x{d}");
        let scale = 1.0 / (d as f64).sqrt();
        // Projection layouts [B, T, heads, D], read as [B, heads, T, D] views on the GPU.
        let (q, qg) = self.randn(&[b, t, hq, d], dt, 2.0)?;
        let (k, kg) = self.randn(&[b, t, hkv, d], dt, 2.0)?;
        let (v, vg) = self.randn(&[b, t, hkv, d], dt, 2.0)?;
        let (dout, doutg) = self.randn(&[b, t, hq, d], dt, 1.0)?;
        let view = |x: &Tensor| x.transpose(1, 2);
        let (q, k, v, dout) =
            (view(&q)?.contiguous()?, view(&k)?.contiguous()?, view(&v)?.contiguous()?, view(&dout)?.contiguous()?);
        let (qg, kg, vg, doutg) = (view(&qg)?, view(&kg)?, view(&vg)?, view(&doutg)?);
        let (o, lse) = ops::attention_fwd(&q, &k, &v, scale)?;
        let (og, lseg) = ops::attention_fwd(&qg, &kg, &vg, scale)?;
        self.report("attention_fwd o", &shape, dt, err(&og, &o)?, tol(dt));
        self.report("attention_fwd lse", &shape, dt, err(&lseg, &lse)?, 1e-5);
        let (dq, dk, dv) = ops::attention_bwd(&dout, &q, &k, &v, &o, &lse, scale)?;
        let (dqg, dkg, dvg) = ops::attention_bwd(&doutg, &qg, &kg, &vg, &og, &lseg, scale)?;
        self.report("attention_bwd dq", &shape, dt, err(&dqg, &dq)?, tol(dt));
        self.report("attention_bwd dk", &shape, dt, err(&dkg, &dk)?, tol(dt));
        self.report("attention_bwd dv", &shape, dt, err(&dvg, &dv)?, tol(dt));
        if time {
            let k = self.time(|| ops::attention_fwd(&qg, &kg, &vg, scale).map(drop))?;
            let g = self.time(|| generic::attention_fwd(&qg, &kg, &vg, scale).map(drop))?;
            self.timing("attention_fwd", &shape, dt, k, g, None);
            let k = self.time(|| ops::attention_bwd(&doutg, &qg, &kg, &vg, &og, &lseg, scale).map(drop))?;
            let g = self.time(|| generic::attention_bwd(&doutg, &qg, &kg, &vg, &og, &lseg, scale).map(drop))?;
            self.timing("attention_bwd", &shape, dt, k, g, None);
        }
        Ok(())
    }
}

impl Check {
    /// The frozen-weight dequantization of lora-train's `base_quant`: each format's GPU
    /// dequantization against the CPU's, which must give the same values (the same f32 operations,
    /// one rounding; a zero may come with the other sign); on the 7B MLP shape, also its time and the bandwidth it reaches.
    fn dequant(&mut self, rows: usize, cols: usize, time: bool) -> Result<()> {
        use pipe::gguf::quant::GgmlKind;
        use pipe::model::base_quant::{Format, QuantWeight};
        let values: Vec<f32> = (0..rows * cols).map(|_| self.rng.random::<f32>() * 0.1 - 0.05).collect();
        let mut formats = vec![Format::Nf4];
        for k in [GgmlKind::Q8_0, GgmlKind::Q4_0, GgmlKind::Q4_1, GgmlKind::Q5_0, GgmlKind::Q4_K, GgmlKind::Q5_K, GgmlKind::Q6_K] {
            if cols.is_multiple_of(k.block_size()) {
                formats.push(Format::Ggml(k));
            }
        }
        for format in formats {
            let cpu = QuantWeight::quantize(&values, rows, cols, format, &self.cpu)?;
            let gpu = QuantWeight::quantize(&values, rows, cols, format, &self.gpu)?;
            for dt in [DType::F32, DType::BF16] {
                let want = cpu.dequantize(dt)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let got = gpu.dequantize(dt)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                // Values must be equal; a zero may differ in sign only (candle's Q4_0 kernel
                // computes `d * q - 8 * d`, which is +0 where ggml's `(q - 8) * d` is -0 for a
                // negative scale: the same number in every sum and product).
                let wrong = want.iter().zip(&got).filter(|(a, b)| a != b && !(a.is_nan() && b.is_nan())).count();
                let zero_signs = want.iter().zip(&got).filter(|(a, b)| a.to_bits() != b.to_bits() && a == b).count();
                let ok = wrong == 0;
                if !ok {
                    self.failed += 1;
                }
                println!(
                    "dequant {format} [{rows}, {cols}] -> {}: {wrong} of {} values differ from the CPU's ({zero_signs} zeros of the other sign) {}",
                    name(dt),
                    want.len(),
                    if ok { "PASS" } else { "FAIL" }
                );
            }
            if time && self.opts.time {
                let us = self.time(|| gpu.dequantize(DType::BF16).map(|_| ()))?;
                let bytes = gpu.byte_len() + rows * cols * 2;
                println!(
                    "dequant {format} [{rows}, {cols}] -> bf16: {us:.1} us, {:.0} GB/s (quantized read + bf16 written)",
                    bytes as f64 / (us * 1e-6) / 1e9
                );
            }
        }
        Ok(())
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |flag: &str, default: usize| {
        args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let opts = Opts {
        samples: arg("--samples", 15),
        reps: arg("--reps", 10),
        time: !args.iter().any(|a| a == "--no-time"),
        small: args.iter().any(|a| a == "--small"),
        only,
    };
    if std::env::var_os("PIPE_CUDA_POISON").is_none() {
        // Before the first allocation: the fused ops read it once.
        std::env::set_var("PIPE_CUDA_POISON", "1");
    }
    let gpu = Device::new_cuda(0).unwrap_or_else(|e| {
        eprintln!("ops_check needs a CUDA device and a build with --features cuda: {e}");
        std::process::exit(2)
    });
    println!(
        "fused LoRA kernels: {:?}; outputs poisoned: {}",
        ops::FusedLora::get(),
        std::env::var("PIPE_CUDA_POISON").unwrap_or_default()
    );
    let mut c = Check { cpu: Device::Cpu, gpu, opts, rng: ChaCha8Rng::seed_from_u64(7), failed: 0 };
    let t0 = Instant::now();
    let timed = c.opts.time;
    // (shape, timed) per op: SmolLM2-135M (H 576, I 1536, 9 heads / 3 kv x 64, V 49152, 8 x 384
    // tokens), a 7B-like shape (H 4096, I 11008, 32 x 128, V 102400), and odd sizes.
    for dt in [DType::F32, DType::BF16] {
        for (n, h, tm) in [(3072, 576, true), (3072, 4096, true), (7, 33, false), (1, 3, false)] {
            if c.opts.runs("rms_norm", tm) {
                let r = c.rms_norm(n, h, dt, tm && timed);
                c.guard("rms_norm", r);
            }
        }
        for (b, hh, t, d, tm) in [(8, 9, 384, 64, true), (8, 3, 384, 64, false), (8, 32, 384, 128, true), (2, 3, 5, 6, false)] {
            if c.opts.runs("rope", tm) {
                let r = c.rope(b, hh, t, d, dt, tm && timed);
                c.guard("rope", r);
            }
        }
        for (n, i, tm) in [(3072, 1536, true), (3072, 11008, true), (7, 13, false)] {
            if c.opts.runs("swiglu", tm) {
                let r = c.swiglu(n, i, dt, tm && timed);
                c.guard("swiglu", r);
            }
        }
        for (n, v, tm) in [(1024, 49152, true), (1024, 102400, true), (37, 1000, false), (3, 1, false)] {
            if c.opts.runs("cross_entropy", tm) {
                let r = c.cross_entropy(n, v, dt, tm && timed);
                c.guard("cross_entropy", r);
            }
        }
        for (n, d, tm) in [(3072, 576, true), (3072, 1536, true), (7, 13, false)] {
            if c.opts.runs("dropout", tm) {
                let r = c.dropout(n, d, dt, tm && timed);
                c.guard("dropout", r);
            }
        }
        // (B, Hq, Hkv, T, D); head dim 32 runs the generic fallback on the GPU.
        for (b, hq, hkv, t, d, tm) in [
            (8, 9, 3, 384, 64, true),
            (8, 32, 32, 384, 128, true),
            (2, 4, 2, 37, 64, false),
            (3, 6, 2, 70, 128, false),
            (1, 2, 1, 2, 64, false),
            (1, 2, 2, 17, 32, false),
        ] {
            if c.opts.runs("attention", tm) {
                let r = c.attention((b, hq, hkv, t, d), dt, tm && timed);
                c.guard("attention", r);
            }
        }
    }
    // LoRA (N, in, out, r, first row, p): SmolLM2-135M and 7B projections (q, gate/up, down),
    // rank 16, no dropout, a shard, odd widths (scalar loads), widths that are not a whole number
    // of column tiles (576, 96, 64, 40, 33), rank 40 (the r = 64 kernels) and rank 80 (the
    // generic fallback on the GPU).
    for dt in [DType::F32, DType::BF16] {
        for (dims, tm) in [
            ((3072, 576, 576, 8, 0, 0.1), true),
            ((3072, 576, 1536, 8, 0, 0.1), true),
            ((3072, 1536, 576, 8, 0, 0.1), true),
            ((3072, 4096, 4096, 8, 0, 0.1), true),
            ((3072, 4096, 11008, 8, 0, 0.1), true),
            ((3072, 11008, 4096, 8, 0, 0.1), true),
            ((3072, 4096, 4096, 16, 0, 0.1), true),
            ((3072, 4096, 4096, 8, 0, 0.0), true),
            ((1536, 576, 1536, 8, 1536, 0.1), false),
            ((300, 576, 576, 8, 0, 0.1), false),
            ((7, 33, 13, 3, 5, 0.1), false),
            ((37, 64, 96, 8, 3, 0.1), false),
            ((130, 70, 45, 5, 7, 0.3), false),
            ((300, 96, 130, 16, 0, 0.1), false),
            ((20, 40, 33, 40, 1, 0.1), false),
            ((5, 13, 7, 80, 0, 0.1), false),
        ] {
            if c.opts.runs("lora", tm) {
                let r = c.lora(dims, dt, tm && timed);
                c.guard("lora", r);
            }
        }
    }
    // f16: correctness only, small shapes.
    if c.opts.runs("rms_norm", false) {
        let r = c.rms_norm(7, 576, DType::F16, false);
        c.guard("rms_norm", r);
    }
    if c.opts.runs("rope", false) {
        let r = c.rope(2, 3, 7, 64, DType::F16, false);
        c.guard("rope", r);
    }
    if c.opts.runs("swiglu", false) {
        let r = c.swiglu(7, 1536, DType::F16, false);
        c.guard("swiglu", r);
    }
    if c.opts.runs("cross_entropy", false) {
        let r = c.cross_entropy(37, 1000, DType::F16, false);
        c.guard("cross_entropy", r);
    }
    if c.opts.runs("dropout", false) {
        let r = c.dropout(7, 13, DType::F16, false);
        c.guard("dropout", r);
    }
    if c.opts.runs("attention", false) {
        let r = c.attention((2, 4, 2, 37, 64), DType::F16, false);
        c.guard("attention", r);
    }
    if c.opts.runs("lora", false) {
        let r = c.lora((37, 64, 96, 8, 3, 0.1), DType::F16, false);
        c.guard("lora", r);
    }
    if c.opts.runs("dequant", false) {
        let r = c.dequant(3, 1000, false);
        c.guard("dequant", r);
        let r = c.dequant(96, 576, false);
        c.guard("dequant", r);
    }
    if c.opts.runs("dequant", true) {
        let r = c.dequant(11008, 4096, true);
        c.guard("dequant", r);
    }
    let verdict = if c.failed == 0 { "all PASS".to_string() } else { format!("{} FAIL", c.failed) };
    println!("ops_check: {verdict} in {:.1}s", t0.elapsed().as_secs_f64());
    std::process::exit(if c.failed == 0 { 0 } else { 1 })
}
