//! The LoRA training loop: data order, micro-batches, accumulation, clipping, AdamW, schedule,
//! logging, checkpoints and exact resume.
//!
//! Determinism is by construction: epoch `e`'s record order is a ChaCha8 permutation seeded by
//! (seed, e); optimizer step `s` consumes micro-batches `s * accum ..` of the epoch it falls in;
//! micro-batch `k`'s dropout masks are seeded by (seed, k). Given the step count of a checkpoint,
//! a resumed run does exactly the arithmetic an uninterrupted run would, so on the CPU the final
//! adapter is bit-identical.

use std::path::Path;
use std::time::Instant;

use candle_core::Device;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, State};
use super::optim::{clip_grad_norm, AdamW, AdamWConfig, Schedule};
use crate::model::llama::{splitmix, Batch, LoraStep, Model};
use crate::model::lora::{Layout, Module};

/// Training hyper-parameters (the tutorial's defaults live in the node's schema).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub r: usize,
    pub alpha: f32,
    pub dropout: f32,
    pub targets: Vec<Module>,
    pub lr: f64,
    pub schedule: Schedule,
    pub warmup_steps: u64,
    pub adamw: AdamWConfig,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub epochs: usize,
    /// 0: run `epochs` epochs; else stop after this many optimizer steps.
    pub max_steps: u64,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub checkpointing: bool,
    pub logging_steps: u64,
    pub save_steps: u64,
    pub save_total_limit: usize,
}

/// One optimizer step, for progress reporting.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub step: u64,
    pub total: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub tokens_per_sec: f64,
}

/// Training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Model(#[from] candle_core::Error),
    #[error("writing a checkpoint in {path}: {source}")]
    Checkpoint { path: std::path::PathBuf, source: std::io::Error },
    #[error("the loss became {loss} at step {step}; stopped (the last good checkpoint, step {last_good}, is kept)")]
    NonFinite { step: u64, loss: f64, last_good: u64 },
    #[error("{0}")]
    Data(String),
}

/// What training produced.
pub struct Trained {
    pub layout: Layout,
    pub params: Vec<f32>,
    /// JSON lines: step, epoch, loss, lr, grad_norm, tokens.
    pub log: Vec<String>,
    /// The step a resumed run started from (0 when fresh).
    pub resumed_from: u64,
}

/// Optimizer steps per epoch and in total.
pub fn plan(n_records: usize, cfg: &TrainConfig) -> (u64, u64) {
    let batches = n_records.div_ceil(cfg.batch_size.max(1)) as u64;
    let per_epoch = batches.div_ceil(cfg.grad_accum.max(1) as u64).max(1);
    let total = if cfg.max_steps > 0 { cfg.max_steps } else { per_epoch * cfg.epochs as u64 };
    (per_epoch, total)
}

fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(splitmix(seed ^ splitmix(epoch)));
    idx.shuffle(&mut rng);
    idx
}

/// Trains LoRA on `records` (token ids, unshifted labels); checkpoints go to `work`.
pub fn train(
    model: &Model,
    records: &[(Vec<u32>, Vec<i64>)],
    cfg: &TrainConfig,
    work: &Path,
    on_step: &mut dyn FnMut(&StepReport),
    note: &mut dyn FnMut(&str),
) -> Result<Trained, TrainError> {
    if records.is_empty() {
        return Err(TrainError::Data("the dataset has no records".into()));
    }
    let vocab = model.cfg.vocab_size as u32;
    if let Some((i, id)) = records.iter().enumerate().find_map(|(i, r)| r.0.iter().find(|&&id| id >= vocab).map(|&id| (i, id))) {
        return Err(TrainError::Data(format!(
            "record {} has token id {id}, but the model's vocabulary has {vocab} entries: was the dataset tokenized with this model's tokenizer?",
            i + 1
        )));
    }
    let layout = Layout::new(&model.cfg, cfg.r, cfg.alpha, &cfg.targets);
    let (per_epoch, total) = plan(records.len(), cfg);
    let (mut step, mut params, mut opt, mut log) = match checkpoint::latest(work, layout.len) {
        Some((state, params, opt)) if state.step <= total => {
            note(&format!("resuming from checkpoint at step {} of {total}", state.step));
            (state.step, params, opt, state.log)
        }
        _ => (0, layout.init(cfg.seed), AdamW::new(layout.len), Vec::new()),
    };
    let resumed_from = step;
    let bs = cfg.batch_size.max(1);
    let accum = cfg.grad_accum.max(1);
    let n_batches = records.len().div_ceil(bs);
    let mut last_saved = step;
    let device: &Device = &model.device;
    while step < total {
        let t0 = Instant::now();
        let epoch = step / per_epoch;
        let in_epoch = step % per_epoch;
        let order = epoch_order(records.len(), cfg.seed, epoch);
        let first = in_epoch as usize * accum;
        let last = (first + accum).min(n_batches);
        let batches: Vec<Batch> = (first..last)
            .map(|j| {
                let seqs: Vec<(&[u32], Vec<i64>)> = order[j * bs..((j + 1) * bs).min(records.len())]
                    .iter()
                    .map(|&i| (records[i].0.as_slice(), records[i].1.clone()))
                    .collect();
                Batch::new(&seqs, 0, device)
            })
            .collect::<Result<_, _>>()?;
        let denom: usize = batches.iter().map(Batch::n_targets).sum();
        let mut grads = vec![0f32; layout.len];
        let mut loss_sum = 0f64;
        let mut tokens = 0usize;
        for (k, b) in batches.iter().enumerate() {
            let micro = epoch * n_batches as u64 + (first + k) as u64;
            let st =
                LoraStep { layout: &layout, params: &params, dropout: cfg.dropout, seed: splitmix(cfg.seed ^ splitmix(micro)) };
            let (l, _) = model.loss_and_grad(b, Some(&st), denom.max(1) as f32, Some(&mut grads), cfg.checkpointing)?;
            loss_sum += l;
            tokens += b.b * b.t;
        }
        let loss = loss_sum / denom.max(1) as f64;
        if !loss.is_finite() || grads.iter().any(|g| !g.is_finite()) {
            return Err(TrainError::NonFinite { step: step + 1, loss, last_good: last_saved });
        }
        let grad_norm = clip_grad_norm(&mut grads, cfg.max_grad_norm);
        let lr = cfg.schedule.lr(cfg.lr, step, total, cfg.warmup_steps);
        opt.step(&cfg.adamw, &mut params, &grads, lr);
        step += 1;
        let secs = t0.elapsed().as_secs_f64();
        let report = StepReport { step, total, loss, lr, grad_norm, tokens, tokens_per_sec: tokens as f64 / secs.max(1e-9) };
        if step % cfg.logging_steps.max(1) == 0 || step == total || step == 1 {
            log.push(
                serde_json::json!({
                    "step": step, "epoch": (step as f64 / per_epoch as f64), "loss": loss, "lr": lr,
                    "grad_norm": grad_norm, "tokens": tokens,
                })
                .to_string(),
            );
        }
        on_step(&report);
        if cfg.save_steps > 0 && step % cfg.save_steps == 0 && step < total {
            let state = State { version: 1, step, n_params: layout.len, log: log.clone() };
            checkpoint::save(work, &state, &params, &opt, cfg.save_total_limit)
                .map_err(|source| TrainError::Checkpoint { path: work.to_path_buf(), source })?;
            last_saved = step;
        }
    }
    Ok(Trained { layout, params, log, resumed_from })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{Arch, Config};

    fn tiny() -> Config {
        Config::tiny(Arch::Llama, 32, 16)
    }

    fn cfg(max_steps: u64) -> TrainConfig {
        TrainConfig {
            r: 2,
            alpha: 4.0,
            dropout: 0.1,
            targets: Module::ALL.to_vec(),
            lr: 0.01,
            schedule: Schedule::Linear,
            warmup_steps: 0,
            adamw: AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
            batch_size: 2,
            grad_accum: 2,
            epochs: 1,
            max_steps,
            max_grad_norm: 1.0,
            seed: 1,
            checkpointing: true,
            logging_steps: 1,
            save_steps: 1,
            save_total_limit: 1,
        }
    }

    fn records() -> Vec<(Vec<u32>, Vec<i64>)> {
        (0..6u32)
            .map(|i| {
                let ids: Vec<u32> = (0..8).map(|j| (i * 3 + j * 5) % 32).collect();
                let labels = ids.iter().enumerate().map(|(j, &x)| if j < 2 { -100 } else { i64::from(x) }).collect();
                (ids, labels)
            })
            .collect()
    }

    #[test]
    fn a_non_finite_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut model = Model::random_with_std(tiny(), 3, 0.2, &Device::Cpu).unwrap();
        train(&model, &records(), &cfg(2), dir.path(), &mut |_| {}, &mut |_| {}).unwrap();
        // 2 steps with save_steps 1 leave checkpoint-1 (the last step is not checkpointed: the
        // outputs are the result). Poison the weights: the resumed step 2 must fail by name.
        model.norm = (model.norm.clone() * f64::NAN).unwrap();
        let err = train(&model, &records(), &cfg(4), dir.path(), &mut |_| {}, &mut |_| {}).err().expect("NaN must stop training");
        let msg = err.to_string();
        assert!(msg.contains("at step 2") && msg.contains("step 1"), "{msg}");
        assert!(dir.path().join("checkpoint-1").join("state.json").exists());
    }

    #[test]
    fn tokens_outside_the_vocabulary_are_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let model = Model::random(tiny(), 3, &Device::Cpu).unwrap();
        let bad = vec![(vec![1, 99], vec![-100, 99])];
        let err = train(&model, &bad, &cfg(1), dir.path(), &mut |_| {}, &mut |_| {}).err().unwrap();
        assert!(err.to_string().contains("token id 99"), "{err}");
    }
}
