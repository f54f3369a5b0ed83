//! Dynamic loss scaling for f16 training, as `torch.amp.GradScaler` does it.
//!
//! f16 has five exponent bits: gradients below ~6e-8 flush to zero. So the loss gradient is
//! multiplied by a large power of two (the scale) before the backward pass, and the f32 LoRA
//! gradients are divided by it before clipping and the optimizer step. When a scaled gradient
//! overflows (an inf or NaN anywhere in the gradient buffer), the step is skipped: no optimizer
//! update, no learning-rate schedule advance, and the scale is halved. After
//! [`ScalerConfig::growth_interval`] clean steps in a row the scale doubles, probing for the
//! largest scale that does not overflow.
//!
//! The defaults are GradScaler's: initial scale 2^16, growth factor 2 every 2000 clean steps,
//! backoff 0.5. The scale is always a power of two, so scaling and unscaling are exact. The
//! state ([`LossScaler::scale`] and the clean-step count) goes into each checkpoint, so a resumed
//! run scales exactly as an uninterrupted one. bf16 and f32 have f32's exponent range and need no
//! scaling: [`LossScaler::disabled`] is the identity and never skips.

use serde::{Deserialize, Serialize};

/// Loss-scaler hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScalerConfig {
    /// The first scale (GradScaler: 2^16).
    pub init_scale: f32,
    /// Factor applied after `growth_interval` clean steps (2).
    pub growth_factor: f32,
    /// Factor applied on overflow (0.5).
    pub backoff_factor: f32,
    /// Clean steps in a row before the scale grows (2000).
    pub growth_interval: u64,
}

impl Default for ScalerConfig {
    fn default() -> Self {
        ScalerConfig { init_scale: 65536.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000 }
    }
}

/// What the scaler keeps between steps (and in checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScalerState {
    /// The current scale.
    pub scale: f32,
    /// Clean steps since the last growth or overflow.
    pub growth_tracker: u64,
}

/// The outcome of one step's gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// The gradients were finite and are now unscaled: take the optimizer step.
    Apply,
    /// A scaled gradient overflowed: skip the optimizer step (the scale has backed off).
    Skip,
}

/// A dynamic loss scaler, or the identity when disabled.
#[derive(Debug, Clone, PartialEq)]
pub struct LossScaler {
    cfg: ScalerConfig,
    state: Option<ScalerState>,
}

impl LossScaler {
    /// A scaler that scales by 1 and never skips (f32, bf16).
    pub fn disabled() -> LossScaler {
        LossScaler { cfg: ScalerConfig::default(), state: None }
    }

    /// A dynamic scaler starting at `cfg.init_scale` (f16).
    pub fn dynamic(cfg: ScalerConfig) -> LossScaler {
        LossScaler { cfg, state: Some(ScalerState { scale: cfg.init_scale, growth_tracker: 0 }) }
    }

    /// Continues from a checkpoint's state (ignored when disabled).
    pub fn with_state(mut self, state: Option<ScalerState>) -> LossScaler {
        if let (Some(s), Some(_)) = (state, self.state) {
            self.state = Some(s);
        }
        self
    }

    /// Whether loss scaling is on.
    pub fn enabled(&self) -> bool {
        self.state.is_some()
    }

    /// The state to checkpoint (`None` when disabled).
    pub fn state(&self) -> Option<ScalerState> {
        self.state
    }

    /// The factor to multiply the loss gradient by this step (1 when disabled).
    pub fn scale(&self) -> f32 {
        self.state.map_or(1.0, |s| s.scale)
    }

    /// Checks the scaled gradients of one step and updates the scale. On [`StepOutcome::Apply`]
    /// the gradients have been divided by the scale they were computed with; on
    /// [`StepOutcome::Skip`] they are left as they are (garbage). Disabled: always `Apply`, the
    /// gradients untouched.
    pub fn unscale_and_update(&mut self, grads: &mut [f32]) -> StepOutcome {
        let Some(st) = self.state else { return StepOutcome::Apply };
        let outcome = self.update(grads.iter().all(|g| g.is_finite()));
        if outcome == StepOutcome::Apply {
            // GradScaler multiplies by the f32 reciprocal; exact for a power-of-two scale.
            let inv = 1.0 / st.scale;
            for g in grads.iter_mut() {
                *g *= inv;
            }
        }
        outcome
    }

    /// Updates the scale after a step whose scaled gradients were (or were not) all finite,
    /// without touching them: the caller unscales them, by the scale they were computed with
    /// (read [`LossScaler::scale`] before this call), when the outcome is
    /// [`StepOutcome::Apply`]. The training loop uses this form: its gradients live on the
    /// device and only their norm, which is finite exactly when they all are, comes to the host.
    pub fn update(&mut self, finite: bool) -> StepOutcome {
        let Some(st) = self.state.as_mut() else { return StepOutcome::Apply };
        if !finite {
            st.scale *= self.cfg.backoff_factor;
            st.growth_tracker = 0;
            return StepOutcome::Skip;
        }
        st.growth_tracker += 1;
        if st.growth_tracker >= self.cfg.growth_interval {
            let grown = st.scale * self.cfg.growth_factor;
            if grown.is_finite() {
                st.scale = grown;
            }
            st.growth_tracker = 0;
        }
        StepOutcome::Apply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overflow_skips_the_step_and_halves_the_scale() {
        let mut s = LossScaler::dynamic(ScalerConfig::default());
        assert_eq!(s.scale(), 65536.0);
        let mut g = vec![1.0, f32::INFINITY, 2.0];
        assert_eq!(s.unscale_and_update(&mut g), StepOutcome::Skip);
        assert_eq!(s.scale(), 32768.0);
        let mut g = vec![f32::NAN];
        assert_eq!(s.unscale_and_update(&mut g), StepOutcome::Skip);
        assert_eq!(s.scale(), 16384.0);
        // Finite gradients are unscaled exactly.
        let mut g = vec![16384.0, -3.0 * 16384.0, 0.5];
        assert_eq!(s.unscale_and_update(&mut g), StepOutcome::Apply);
        assert_eq!(g, vec![1.0, -3.0, 0.5 / 16384.0]);
        assert_eq!(s.state().unwrap(), ScalerState { scale: 16384.0, growth_tracker: 1 });
    }

    #[test]
    fn the_scale_doubles_after_growth_interval_clean_steps_and_an_overflow_resets_the_count() {
        let cfg = ScalerConfig { growth_interval: 3, ..ScalerConfig::default() };
        let mut s = LossScaler::dynamic(cfg);
        let clean = |s: &mut LossScaler| s.unscale_and_update(&mut [1.0f32, 2.0]);
        assert_eq!((clean(&mut s), clean(&mut s)), (StepOutcome::Apply, StepOutcome::Apply));
        assert_eq!(s.scale(), 65536.0);
        // An overflow after two clean steps: back off, and the count starts again.
        assert_eq!(s.unscale_and_update(&mut [f32::NEG_INFINITY]), StepOutcome::Skip);
        assert_eq!(s.scale(), 32768.0);
        clean(&mut s);
        clean(&mut s);
        assert_eq!(s.scale(), 32768.0, "two clean steps since the overflow are not enough");
        clean(&mut s);
        assert_eq!(s.scale(), 65536.0);
        assert_eq!(s.state().unwrap().growth_tracker, 0);
        // GradScaler's defaults: 2000 clean steps.
        let mut s = LossScaler::dynamic(ScalerConfig::default());
        for _ in 0..1999 {
            clean(&mut s);
        }
        assert_eq!(s.scale(), 65536.0);
        clean(&mut s);
        assert_eq!(s.scale(), 131072.0);
    }

    #[test]
    fn a_disabled_scaler_is_the_identity_and_a_restored_state_continues() {
        let mut d = LossScaler::disabled();
        let mut g = vec![3.0, f32::NAN];
        assert_eq!(d.unscale_and_update(&mut g), StepOutcome::Apply, "non-finite gradients are the caller's error");
        assert_eq!((d.scale(), d.state(), g[0]), (1.0, None, 3.0));
        let st = ScalerState { scale: 512.0, growth_tracker: 7 };
        assert_eq!(LossScaler::disabled().with_state(Some(st)).state(), None);
        let r = LossScaler::dynamic(ScalerConfig::default()).with_state(Some(st));
        assert_eq!(r.state(), Some(st));
    }
}
