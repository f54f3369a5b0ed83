//! AdamW over one flat parameter buffer, gradient clipping, and learning-rate schedules.
//!
//! Matches `torch.optim.AdamW` (decoupled weight decay applied before the moment update, bias
//! correction, `eps` added after the square root) and transformers' linear/cosine schedules with
//! warmup, so loss curves compare with peft's step for step.
//!
//! Training runs [`DeviceAdamW`]: the moments are f32 tensors on the model's device and one
//! update is a dozen whole-buffer tensor ops in f32 (as torch computes it for f32 parameters),
//! with nothing copied to the host. [`AdamW`] is the host form: what checkpoints hold, and the
//! f64-arithmetic reference the device update is tested against. [`grad_norm_sq`] is the
//! global norm's square on the device, in f64, so a step needs one scalar read for clipping,
//! logging and the overflow check.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// Optimizer state: first and second moments and the step count.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AdamW {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub t: u64,
}

impl AdamW {
    /// Zeroed state for `n` parameters.
    pub fn new(n: usize) -> AdamW {
        AdamW { m: vec![0.0; n], v: vec![0.0; n], t: 0 }
    }

    /// One update of `params` with `grads` at learning rate `lr`.
    pub fn step(&mut self, cfg: &AdamWConfig, params: &mut [f32], grads: &[f32], lr: f64) {
        self.t += 1;
        let (b1, b2) = (cfg.beta1, cfg.beta2);
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        let step_size = lr / bc1;
        let decay = (1.0 - lr * cfg.weight_decay) as f32;
        let bc2_sqrt = bc2.sqrt();
        for i in 0..params.len() {
            let g = f64::from(grads[i]);
            let m = b1 * f64::from(self.m[i]) + (1.0 - b1) * g;
            let v = b2 * f64::from(self.v[i]) + (1.0 - b2) * g * g;
            self.m[i] = m as f32;
            self.v[i] = v as f32;
            let denom = (f64::from(self.v[i])).sqrt() / bc2_sqrt + cfg.eps;
            params[i] = params[i] * decay - (step_size * f64::from(self.m[i]) / denom) as f32;
        }
    }
}

/// AdamW state on the model's device: both moments as flat f32 tensors.
#[derive(Debug, Clone)]
pub struct DeviceAdamW {
    pub m: Tensor,
    pub v: Tensor,
    /// Updates applied.
    pub t: u64,
}

impl DeviceAdamW {
    /// The host state (zeroed or from a checkpoint), uploaded.
    pub fn from_host(opt: &AdamW, device: &Device) -> candle_core::Result<DeviceAdamW> {
        let up = |v: &[f32]| Tensor::from_slice(v, v.len(), device);
        Ok(DeviceAdamW { m: up(&opt.m)?, v: up(&opt.v)?, t: opt.t })
    }

    /// The state on the host (for a checkpoint).
    pub fn to_host(&self) -> candle_core::Result<AdamW> {
        let down = |t: &Tensor| t.to_device(&Device::Cpu)?.to_vec1::<f32>();
        Ok(AdamW { m: down(&self.m)?, v: down(&self.v)?, t: self.t })
    }

    /// One update: returns the new parameters (flat f32, `params`' shape) given `grads`.
    pub fn step(&mut self, cfg: &AdamWConfig, params: &Tensor, grads: &Tensor, lr: f64) -> candle_core::Result<Tensor> {
        self.t += 1;
        let (b1, b2) = (cfg.beta1, cfg.beta2);
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        self.m = (self.m.affine(b1, 0.0)? + grads.affine(1.0 - b1, 0.0)?)?;
        self.v = (self.v.affine(b2, 0.0)? + grads.sqr()?.affine(1.0 - b2, 0.0)?)?;
        // sqrt(v / bc2) + eps, then m / that * lr / bc1.
        let denom = self.v.sqrt()?.affine(1.0 / bc2.sqrt(), cfg.eps)?;
        let update = (&self.m / denom)?.affine(lr / bc1, 0.0)?;
        let decayed = if cfg.weight_decay == 0.0 { params.clone() } else { params.affine(1.0 - lr * cfg.weight_decay, 0.0)? };
        decayed - update
    }
}

/// The squared global L2 norm of a flat gradient, summed in f64 on its device (a scalar
/// tensor). It is finite exactly when every gradient is (an f32's square cannot overflow f64).
pub fn grad_norm_sq(grads: &Tensor) -> candle_core::Result<Tensor> {
    grads.to_dtype(DType::F64)?.sqr()?.sum_all()
}

/// Scales `grads` so their global L2 norm is at most `max_norm`; returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f64) -> f64 {
    let norm = grads.iter().map(|&g| f64::from(g) * f64::from(g)).sum::<f64>().sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let s = (max_norm / (norm + 1e-6)) as f32;
        for g in grads.iter_mut() {
            *g *= s;
        }
    }
    norm
}

/// The learning-rate multiplier schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Linear,
    Cosine,
    Constant,
}

impl Schedule {
    /// The learning rate for optimizer step `step` (0-based) of `total`, as transformers computes it.
    pub fn lr(self, base: f64, step: u64, total: u64, warmup: u64) -> f64 {
        if step < warmup {
            return base * step as f64 / warmup.max(1) as f64;
        }
        let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
        match self {
            Schedule::Constant => base,
            Schedule::Linear => base * (1.0 - progress).max(0.0),
            Schedule::Cosine => base * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_first_step_moves_each_param_by_lr() {
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let mut p = vec![1.0f32, -1.0];
        let mut opt = AdamW::new(2);
        opt.step(&cfg, &mut p, &[0.5, -2.0], 0.1);
        assert!((p[0] - 0.9).abs() < 1e-6 && (p[1] + 0.9).abs() < 1e-6, "{p:?}");
    }

    /// The device update (f32 tensor ops, on the CPU here) against the host's f64 reference,
    /// over a few steps with weight decay and varied gradients: within a few f32 ulps.
    #[test]
    fn the_device_update_matches_the_host_reference() {
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
        let n = 257;
        let mut p: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0).collect();
        let mut host = AdamW::new(n);
        let mut dev = DeviceAdamW::from_host(&host, &Device::Cpu).unwrap();
        let mut pt = Tensor::from_slice(&p, n, &Device::Cpu).unwrap();
        for s in 0..5 {
            let g: Vec<f32> = (0..n).map(|i| (((i * 13 + s * 7) % 29) as f32 - 14.0) * 10f32.powi(i as i32 % 7 - 4)).collect();
            host.step(&cfg, &mut p, &g, 1e-3);
            pt = dev.step(&cfg, &pt, &Tensor::from_slice(&g, n, &Device::Cpu).unwrap(), 1e-3).unwrap();
        }
        let got: Vec<f32> = pt.to_vec1().unwrap();
        for (i, (a, b)) in got.iter().zip(&p).enumerate() {
            assert!((a - b).abs() <= 4.0 * f32::EPSILON * b.abs().max(1e-3), "param {i}: device {a} vs host {b}");
        }
        let back = dev.to_host().unwrap();
        assert_eq!(back.t, 5);
        for (a, b) in back.v.iter().zip(&host.v) {
            assert!((a - b).abs() <= 4.0 * f32::EPSILON * b.abs(), "v: {a} vs {b}");
        }
    }

    #[test]
    fn the_device_norm_is_the_host_norm_and_sees_non_finite_values() {
        let g = vec![3.0f32, 4.0, 1e30, -1e30];
        let want = g.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>();
        let got = grad_norm_sq(&Tensor::from_slice(&g, 4, &Device::Cpu).unwrap()).unwrap().to_scalar::<f64>().unwrap();
        assert!((got - want).abs() <= 1e-12 * want, "{got} vs {want}");
        let bad = Tensor::new(&[1.0f32, f32::NAN], &Device::Cpu).unwrap();
        assert!(!grad_norm_sq(&bad).unwrap().to_scalar::<f64>().unwrap().is_finite());
    }

    #[test]
    fn schedules_warm_up_then_decay() {
        assert_eq!(Schedule::Linear.lr(1.0, 0, 10, 2), 0.0);
        assert_eq!(Schedule::Linear.lr(1.0, 1, 10, 2), 0.5);
        assert_eq!(Schedule::Linear.lr(1.0, 2, 10, 2), 1.0);
        assert!((Schedule::Linear.lr(1.0, 6, 10, 2) - 0.5).abs() < 1e-12);
        assert!((Schedule::Cosine.lr(1.0, 6, 10, 2) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn clipping_caps_the_global_norm() {
        let mut g = vec![3.0f32, 4.0];
        assert!((clip_grad_norm(&mut g, 1.0) - 5.0).abs() < 1e-9);
        assert!((g[0] - 0.6).abs() < 1e-5);
    }
}
