//! The LoRA training loop: data order, micro-batches, accumulation, clipping, AdamW, schedule,
//! logging, checkpoints and exact resume.
//!
//! Determinism is by construction: epoch `e`'s record order is a ChaCha8 permutation seeded by
//! (seed, e); optimizer step `s` consumes micro-batches `s * accum ..` of the epoch it falls in;
//! micro-batch `k`'s dropout masks are seeded by (seed, k). Given the step count of a checkpoint,
//! a resumed run does exactly the arithmetic an uninterrupted run would, so on the CPU the final
//! adapter is bit-identical.
//!
//! [`train_rank`] is the same loop as one rank of data-parallel training: two hooks, where the
//! step's micro-batches are built (this rank's shard of each) and where its gradient is complete
//! (summed across ranks); see [`super::parallel`].
//!
//! Precision follows the model's dtype ([`Model::dtype`]): the LoRA weights, gradients and AdamW
//! moments are f32 whatever it is. An f16 model trains with dynamic loss scaling
//! ([`super::scaler`]): a step whose scaled gradients overflow is skipped (its micro-batches are
//! still consumed, as in transformers' Trainer, and the learning-rate schedule does not advance)
//! and logged with `"skipped": true`. A non-finite *loss* is never an overflow of the scaling: it
//! stops training in every dtype.
//!
//! Everything a step touches stays on the model's device: the flat LoRA parameters, the
//! gradient accumulator and the AdamW moments are f32 tensors there; each micro-batch's loss is
//! summed there. One read per optimizer step brings the loss and the squared gradient norm to
//! the host (logging, the non-finite check, the f16 overflow check and the clipping factor all
//! follow from those two numbers); clipping, unscaling and AdamW are tensor ops on the whole
//! buffer. Only a checkpoint copies the parameters and moments to the host.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, State};
use super::optim::{grad_norm_sq, AdamW, AdamWConfig, DeviceAdamW, Schedule};
use super::parallel::{GradReduce, World};
use super::scaler::{LossScaler, ScalerConfig, StepOutcome};
use crate::model::llama::{Batch, LoraGrads, LoraStep, Model};
use crate::model::lora::{Layout, Module};
use crate::model::rng::splitmix;

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
    /// Dynamic loss scaling, used when the model computes in f16 (GradScaler's defaults).
    pub loss_scaler: ScalerConfig,
    /// A peft adapter folder to start from instead of the seeded init (`layout.init(seed)`);
    /// its r, alpha and targets must be the training's. A resumed checkpoint wins over it.
    #[serde(default)]
    pub init: Option<PathBuf>,
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
    /// The f16 loss scale this step ran with (`None` without loss scaling).
    pub loss_scale: Option<f64>,
    /// The scaled gradients overflowed and the optimizer step was skipped.
    pub skipped: bool,
}

/// One line of the training log (the node's `log` output, JSON lines), for the steps
/// `logging_steps` selects. Deterministic (no timings), so `pipe verify` can compare it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Optimizer steps done.
    pub step: u64,
    /// Epochs done, fractional.
    pub epoch: f64,
    /// Mean loss over the step's labelled tokens.
    pub loss: f64,
    /// The learning rate the step used.
    pub lr: f64,
    /// The gradient norm before clipping; `null` for a step skipped for f16 overflow.
    pub grad_norm: Option<f64>,
    /// Tokens in the step's micro-batches, padding included.
    pub tokens: usize,
    /// With f16 loss scaling only.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<LossScaling>,
}

/// The f16 loss scaling of one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaling {
    /// The scale the step ran with.
    pub loss_scale: f64,
    /// The scaled gradients overflowed and the optimizer step was skipped.
    pub skipped: bool,
}

impl LogEntry {
    /// The entry as one line of JSON.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("a log entry serializes")
    }
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
    /// The `init` adapter could not be read for this model.
    #[error("reading the init adapter {path}: {source}")]
    InitRead { path: PathBuf, source: Box<crate::model::error::ModelError> },
    /// The `init` adapter's shape is not the training's.
    #[error("the init adapter {path} has {what} {adapter}, but training has {what} {training}")]
    InitMismatch { path: PathBuf, what: &'static str, adapter: String, training: String },
    /// A data-parallel rank's GPU could not be opened.
    #[error("opening cuda:{gpu}: {source}")]
    OpenDevice { gpu: usize, source: candle_core::Error },
    /// A data-parallel rank's copy of the model could not be loaded.
    #[error("loading on cuda:{gpu}: {source}")]
    LoadModel { gpu: usize, source: crate::model::load::LoadError },
    /// Summing across data-parallel ranks failed.
    #[error(transparent)]
    Reduce(#[from] super::parallel::ReduceError),
    /// The NCCL group of the ranks could not be set up.
    #[error("setting up NCCL: {0}")]
    NcclSetup(super::parallel::ReduceError),
}

/// What training produced.
pub struct Trained {
    pub layout: Layout,
    pub params: Vec<f32>,
    /// The training log.
    pub log: Vec<LogEntry>,
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
    train_rank(model, records, cfg, work, None, on_step, note)
}

/// [`train`] as one rank of a data-parallel group ([`super::parallel`]): with `reduce`, this
/// rank trains on its shard of every micro-batch and sums the loss and gradients with the other
/// ranks before each optimizer step; only rank 0 writes checkpoints. `None` is one device.
pub fn train_rank(
    model: &Model,
    records: &[(Vec<u32>, Vec<i64>)],
    cfg: &TrainConfig,
    work: &Path,
    mut reduce: Option<&mut dyn GradReduce>,
    on_step: &mut dyn FnMut(&StepReport),
    note: &mut dyn FnMut(&str),
) -> Result<Trained, TrainError> {
    let world = reduce.as_ref().map(|r| r.world()).unwrap_or(World::SINGLE);
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
    let scaler = match model.dtype {
        DType::F16 => LossScaler::dynamic(cfg.loss_scaler),
        _ => LossScaler::disabled(),
    };
    let (mut step, params, opt, mut log, mut scaler) = match checkpoint::latest(work, layout.len) {
        Some((state, params, opt)) if state.step <= total => {
            note(&format!("resuming from checkpoint at step {} of {total}", state.step));
            (state.step, params, opt, state.log, scaler.with_state(state.loss_scaler))
        }
        _ => (0, initial_params(&layout, &model.cfg, cfg)?, AdamW::new(layout.len), Vec::new(), scaler),
    };
    let resumed_from = step;
    let bs = cfg.batch_size.max(1);
    let accum = cfg.grad_accum.max(1);
    let n_batches = records.len().div_ceil(bs);
    let mut last_saved = step;
    // A checkpoint rank 0 failed to write, reported to the other ranks at the next step.
    let mut pending: Option<TrainError> = None;
    let device: &Device = &model.device;
    let mut params = Tensor::from_vec(params, layout.len, device)?;
    let mut opt = DeviceAdamW::from_host(&opt, device)?;
    while step < total {
        let t0 = Instant::now();
        let epoch = step / per_epoch;
        let in_epoch = step % per_epoch;
        let order = epoch_order(records.len(), cfg.seed, epoch);
        let first = in_epoch as usize * accum;
        let last = (first + accum).min(n_batches);
        // Each rank builds its shard of every micro-batch (one device: all of it), padded to the
        // micro-batch's length; the denominator and token count are the whole step's.
        let micro_rows: Vec<&[usize]> = (first..last).map(|j| &order[j * bs..((j + 1) * bs).min(records.len())]).collect();
        let denom: usize = micro_rows.iter().map(|rows| target_count(records, rows)).sum();
        let tokens: usize = micro_rows.iter().map(|rows| rows.len() * padded_len(records, rows)).sum();
        let loss_scale = scaler.scale();
        // Dividing by denom / scale multiplies the loss gradient by the scale, exactly (a power of two).
        let grad_denom = denom.max(1) as f32 / loss_scale;
        let mut grads = LoraGrads::new();
        let mut loss_sum: Option<Tensor> = None;
        // One cast of the master weights to the compute dtype serves every micro-batch.
        let mut st = LoraStep::new(&layout, &params, model.dtype, cfg.dropout, 0)?;
        let mut local = || -> Result<(), TrainError> {
            for (k, rows) in micro_rows.iter().enumerate() {
                let shard = world.shard(rows.len());
                if shard.is_empty() {
                    continue;
                }
                let t = padded_len(records, rows);
                let seqs: Vec<(&[u32], Vec<i64>)> =
                    rows[shard.clone()].iter().map(|&i| (records[i].0.as_slice(), records[i].1.clone())).collect();
                let b = Batch::with_len(&seqs, 0, t, device)?;
                let micro = epoch * n_batches as u64 + (first + k) as u64;
                st.seed = splitmix(cfg.seed ^ splitmix(micro));
                st.first_row = shard.start * t;
                let (l, _) = model.loss_and_grad(&b, Some(&st), grad_denom, Some(&mut grads), cfg.checkpointing)?;
                loss_sum = Some(match loss_sum.take() {
                    None => l,
                    Some(s) => (s + l)?,
                });
            }
            Ok(())
        };
        let local = local();
        drop(st);
        let zeros = || Tensor::zeros(layout.len, DType::F32, device);
        let mut grads = match grads.tensor() {
            Some(g) => g.clone(),
            None => zeros()?,
        };
        let mut loss_sum = match loss_sum {
            Some(l) => l.to_dtype(DType::F64)?,
            None => Tensor::zeros((), DType::F64, device)?,
        };
        if let Some(r) = reduce.as_deref_mut() {
            // Status first: a rank that failed (here, or writing the last checkpoint) stops every
            // rank at this step instead of leaving them waiting in the gradient sum.
            let failed = local.is_err() || pending.is_some();
            let mine = if local.is_ok() { loss_sum.to_scalar::<f64>()? } else { 0.0 };
            let mut status = [mine, f64::from(u8::from(failed))];
            r.sum_f64(&mut status)?;
            if status[1] > 0.0 {
                local?;
                return Err(pending.take().unwrap_or_else(|| {
                    TrainError::Data(format!("data-parallel training stopped at step {}: another rank failed", step + 1))
                }));
            }
            loss_sum = Tensor::new(status[0], device)?;
            grads = r.sum_tensor(&grads)?;
        }
        local?;
        // The step's one host read: the loss and the squared norm of the (scaled) gradients.
        let stats = Tensor::stack(&[loss_sum, grad_norm_sq(&grads)?], 0)?.to_vec1::<f64>()?;
        let (loss, norm_sq) = (stats[0] / denom.max(1) as f64, stats[1]);
        // Without loss scaling a non-finite gradient is as fatal as a non-finite loss; with it, a
        // non-finite gradient (of a finite loss) is an overflow of the scale.
        if !loss.is_finite() || (!scaler.enabled() && !norm_sq.is_finite()) {
            return Err(TrainError::NonFinite { step: step + 1, loss, last_good: last_saved });
        }
        // The schedule follows the updates applied (skipped steps do not advance it, as in
        // transformers' Trainer); without skips that is `step`.
        let lr = cfg.schedule.lr(cfg.lr, opt.t, total, cfg.warmup_steps);
        let skipped = scaler.update(norm_sq.is_finite()) == StepOutcome::Skip;
        let grad_norm = if skipped {
            f64::NAN
        } else {
            // Unscaling by a power of two is exact, in the gradients as in their f64 norm.
            let inv = 1.0 / f64::from(loss_scale);
            let norm = norm_sq.sqrt() * inv;
            // As torch's clip_grad_norm_: scale by max / (norm + 1e-6) (rounded to f32) when over.
            let clip = if cfg.max_grad_norm > 0.0 && norm > cfg.max_grad_norm {
                f64::from((cfg.max_grad_norm / (norm + 1e-6)) as f32)
            } else {
                1.0
            };
            // One multiply for both (g * inv is exact, so this rounds as clipping alone would).
            let g = if inv * clip != 1.0 { grads.affine(inv * clip, 0.0)? } else { grads };
            params = opt.step(&cfg.adamw, &params, &g, lr)?;
            norm
        };
        step += 1;
        let secs = t0.elapsed().as_secs_f64();
        let loss_scale = scaler.enabled().then_some(f64::from(loss_scale));
        let report = StepReport {
            step,
            total,
            loss,
            lr,
            grad_norm,
            tokens,
            tokens_per_sec: tokens as f64 / secs.max(1e-9),
            loss_scale,
            skipped,
        };
        if step % cfg.logging_steps.max(1) == 0 || step == total || step == 1 || skipped {
            log.push(LogEntry {
                step,
                epoch: step as f64 / per_epoch as f64,
                loss,
                lr,
                grad_norm: (!skipped).then_some(grad_norm),
                tokens,
                scaling: loss_scale.map(|loss_scale| LossScaling { loss_scale, skipped }),
            });
        }
        on_step(&report);
        if cfg.save_steps > 0 && step % cfg.save_steps == 0 && step < total && world.rank == 0 {
            let state = State {
                version: 1,
                step,
                n_params: layout.len,
                log: log.clone(),
                optimizer_steps: Some(opt.t),
                loss_scaler: scaler.state(),
            };
            let (host_params, host_opt) = (params.to_vec1::<f32>()?, opt.to_host()?);
            match checkpoint::save(work, &state, &host_params, &host_opt, cfg.save_total_limit) {
                Ok(_) => last_saved = step,
                // The other ranks learn of it at the next step's status reduction.
                Err(source) if world.size > 1 => pending = Some(TrainError::Checkpoint { path: work.to_path_buf(), source }),
                Err(source) => return Err(TrainError::Checkpoint { path: work.to_path_buf(), source }),
            }
        } else if cfg.save_steps > 0 && step % cfg.save_steps == 0 && step < total {
            // Other ranks keep rank 0's bookkeeping: the last good checkpoint's step.
            last_saved = step;
        }
    }
    match pending {
        Some(e) => Err(e),
        None => Ok(Trained { layout, params: params.to_device(&Device::Cpu)?.to_vec1()?, log, resumed_from }),
    }
}

/// The LoRA parameters a fresh run starts from: the `init` adapter when given (checked against
/// the training's r, alpha and targets), else peft's init seeded by `seed`.
fn initial_params(layout: &Layout, model: &crate::model::config::Config, cfg: &TrainConfig) -> Result<Vec<f32>, TrainError> {
    let Some(dir) = &cfg.init else { return Ok(layout.init(cfg.seed)) };
    let (theirs, params) = crate::model::peft::read_adapter(dir, model)
        .map_err(|e| TrainError::InitRead { path: dir.clone(), source: Box::new(e) })?;
    let mismatch =
        |what, adapter: String, training: String| TrainError::InitMismatch { path: dir.clone(), what, adapter, training };
    if theirs.r != layout.r {
        return Err(mismatch("r", theirs.r.to_string(), layout.r.to_string()));
    }
    if theirs.scaling != layout.scaling {
        let alpha = |l: &Layout| (l.scaling * l.r as f32).to_string();
        return Err(mismatch("alpha", alpha(&theirs), alpha(layout)));
    }
    let modules = |l: &Layout| {
        let mut m: Vec<&str> = l.entries.iter().filter(|e| e.layer == 0).map(|e| e.module.hf_name()).collect();
        m.sort_unstable();
        m.join(", ")
    };
    if theirs.entries != layout.entries {
        return Err(mismatch("targets", modules(&theirs), modules(layout)));
    }
    Ok(params)
}

/// The length a micro-batch of these records pads to (as [`Batch::new`] would).
fn padded_len(records: &[(Vec<u32>, Vec<i64>)], rows: &[usize]) -> usize {
    rows.iter().map(|&i| records[i].0.len()).max().unwrap_or(1).max(1)
}

/// The micro-batch's positions with a next-token label ([`Batch::n_targets`] without building it).
fn target_count(records: &[(Vec<u32>, Vec<i64>)], rows: &[usize]) -> usize {
    let t = padded_len(records, rows);
    rows.iter().map(|&i| records[i].1.iter().take(t).skip(1).filter(|&&l| l != -100).count()).sum()
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
            loss_scaler: ScalerConfig::default(),
            init: None,
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

    fn log_values(t: &Trained, key: &str) -> Vec<serde_json::Value> {
        t.log.iter().map(|l| serde_json::to_value(l).unwrap()[key].clone()).collect()
    }

    /// f16 with a loss scale far too large: the first steps overflow and are skipped, each
    /// halving the scale, without advancing the schedule; then training proceeds, the scale grows
    /// after `growth_interval` clean steps, and a run killed midway resumes (scale and count from
    /// the checkpoint) to the same bits as an uninterrupted one.
    #[test]
    fn f16_overflow_skips_steps_backs_off_and_a_killed_run_resumes_exactly() {
        let model = Model::random_with_std(tiny(), 3, 0.2, &Device::Cpu).unwrap().to_dtype(DType::F16).unwrap();
        let mut c = cfg(12);
        c.schedule = Schedule::Constant;
        c.warmup_steps = 3;
        c.loss_scaler = ScalerConfig { init_scale: 2f32.powi(21), growth_interval: 3, ..ScalerConfig::default() };
        let dir = tempfile::tempdir().unwrap();
        let full = train(&model, &records(), &c, dir.path(), &mut |_| {}, &mut |_| {}).unwrap();
        let skipped: Vec<bool> = log_values(&full, "skipped").iter().map(|v| v.as_bool().unwrap()).collect();
        let scales: Vec<f64> = log_values(&full, "loss_scale").iter().map(|v| v.as_f64().unwrap()).collect();
        let lrs: Vec<f64> = log_values(&full, "lr").iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(full.log.len(), 12);
        let first_clean = skipped.iter().position(|s| !s).expect("some step must apply");
        assert!(first_clean >= 1 && skipped[..first_clean].iter().all(|&s| s), "{skipped:?}");
        for i in 1..scales.len() {
            let want = if skipped[i - 1] { scales[i - 1] / 2.0 } else { scales[i] };
            assert_eq!(scales[i], want, "step {}: a skipped step halves the scale ({scales:?})", i + 1);
        }
        assert!(log_values(&full, "grad_norm")[0].is_null(), "a skipped step has no gradient norm");
        // Warmup counts applied updates: the first applied step still runs at lr 0.
        assert_eq!(lrs[first_clean], 0.0, "{lrs:?}");
        assert!(scales.windows(2).any(|w| w[1] == 2.0 * w[0]), "3 clean steps in a row grow the scale: {scales:?}");
        // Kill (a panic in the progress callback, before that step's checkpoint) after the skips.
        let dir = tempfile::tempdir().unwrap();
        let kill_at = first_clean as u64 + 3;
        let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut on_step = |r: &StepReport| assert!(r.step < kill_at, "killed");
            train(&model, &records(), &c, dir.path(), &mut on_step, &mut |_| {})
        }));
        assert!(killed.is_err());
        let resumed = train(&model, &records(), &c, dir.path(), &mut |_| {}, &mut |_| {}).unwrap();
        assert_eq!(resumed.resumed_from, kill_at - 1);
        assert!(resumed.log == full.log, "resumed log differs:\n{:?}\nvs\n{:?}", resumed.log, full.log);
        assert!(resumed.params == full.params, "the resumed adapter differs from the uninterrupted one");
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
