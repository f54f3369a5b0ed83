//! AdamW over one flat parameter buffer, gradient clipping, and learning-rate schedules.
//!
//! Matches `torch.optim.AdamW` (decoupled weight decay applied before the moment update, bias
//! correction, `eps` added after the square root) and transformers' linear/cosine schedules with
//! warmup, so loss curves compare with peft's step for step.

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
