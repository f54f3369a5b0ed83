//! Data-parallel training: N ranks, one per device, each on its shard of every micro-batch, with
//! the LoRA gradients summed across ranks before every optimizer step.
//!
//! # How it works
//! 1. Every rank reads the whole dataset and runs the same loop as one device
//!    ([`super::trainer`]): the same epoch order, the same micro-batches, the same step count.
//! 2. A micro-batch of `batch_size` sequences is split into contiguous shards ([`World::shard`]);
//!    rank `r` builds only its shard, padded to the whole micro-batch's length so its activation
//!    rows are the rows the micro-batch would have there.
//! 3. Each rank computes `loss_and_grad` on its shard with the *global* denominator (the target
//!    count of the step's full micro-batches, which every rank counts from the data it reads), so
//!    the shards' gradients add up to one device's gradient (exactly, in exact arithmetic).
//! 4. Dropout masks are a function of (seed, micro-batch, element of the micro-batch): a shard
//!    starting at global row `k` passes `first_row = k * T` and draws exactly the mask values of
//!    those rows of the whole micro-batch, so N ranks train with one device's masks.
//! 5. [`GradReduce`] sums, over ranks and in place, a small f64 status vector (loss sum, failed
//!    ranks) and then the flat f32 gradient. Every rank then holds the same gradient and takes the
//!    same clipping, loss-scaling and AdamW decisions, so all ranks hold identical weights.
//! 6. Only rank 0 reports progress and writes checkpoints; on resume every rank reads the same
//!    checkpoint before its first step (the first reduction is a barrier, so rank 0 cannot have
//!    written a newer one yet).
//!
//! # Reducers
//! - [`ThreadReduce`]: ranks are threads of one process on any device (the CPU in tests); the
//!   sum is taken on the host in rank order, so results are deterministic.
//! - `NcclReduce` (`--features cuda`): one thread per GPU in one process, NCCL all-reduce on
//!   each rank's candle stream. `libnccl.so.2` is opened at run time ([`nccl`]), so builds and
//!   single-GPU runs never need it.
//!
//! # Errors
//! A rank that fails inside a step (a device error, say) does not leave the others waiting in a
//! reduction: it still joins the step's status reduction with its failure flag set, and every
//! rank stops with an error at that step. A checkpoint rank 0 fails to write is reported the
//! same way at the next step. A panicking [`ThreadReduce`] rank releases the others with an
//! error; a rank that panics under NCCL can leave the others blocked (a bug either way).
//!
//! # Limits
//! - Same results as one device up to floating-point summation order (hence the world size in
//!   the node key), not bit-identical; world size 1 is bit-identical.
//! - Under NCCL the gradients are summed on the GPUs ([`GradReduce::sum_tensor`]); the loss sum
//!   and the status flag cross the host. [`ThreadReduce`] sums everything on the host.

use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};

/// This process's place in a data-parallel group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct World {
    /// 0-based rank; rank 0 logs and checkpoints.
    pub rank: usize,
    /// Number of ranks.
    pub size: usize,
}

impl World {
    /// One device: rank 0 of 1.
    pub const SINGLE: World = World { rank: 0, size: 1 };

    /// The rows of a micro-batch of `rows` sequences this rank trains on: contiguous shards in
    /// rank order, the first `rows % size` one row longer. A rank past the last row gets an empty
    /// range (a short final micro-batch on many GPUs).
    pub fn shard(&self, rows: usize) -> Range<usize> {
        let size = self.size.max(1);
        let (base, extra) = (rows / size, rows % size);
        let start = self.rank * base + self.rank.min(extra);
        let len = base + usize::from(self.rank < extra);
        start.min(rows)..(start + len).min(rows)
    }
}

/// A reduction failed or was abandoned.
#[derive(Debug, thiserror::Error)]
pub enum ReduceError {
    /// Another rank left the group (it panicked).
    #[error("data-parallel rank {rank} of {size}: another rank stopped")]
    Abandoned { rank: usize, size: usize },
    /// NCCL returned an error.
    #[error("NCCL: {0}")]
    Nccl(String),
}

/// Sums buffers across the ranks of a group, in place: on return every rank holds the
/// element-wise sum of what every rank passed. Every rank must make the same calls, with buffers
/// of the same length, in the same order.
pub trait GradReduce: Send {
    /// This handle's rank and the group's size.
    fn world(&self) -> World;
    /// Sums a flat f32 buffer (the LoRA gradient).
    fn sum_f32(&mut self, buf: &mut [f32]) -> Result<(), ReduceError>;
    /// Sums a few f64 values (loss sums, status flags).
    fn sum_f64(&mut self, buf: &mut [f64]) -> Result<(), ReduceError>;
    /// Sums a flat f32 device tensor, returning the sum on the same device (for gradients that
    /// live on the GPU). The default goes through the host.
    fn sum_tensor(&mut self, t: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        let mut v = t.flatten_all()?.to_vec1::<f32>()?;
        self.sum_f32(&mut v).map_err(candle_core::Error::wrap)?;
        candle_core::Tensor::from_vec(v, t.shape(), t.device())
    }
}

enum Payload {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

struct Round {
    /// Completed reductions; a rank waits for this to move past the round it joined.
    generation: u64,
    arrived: usize,
    bufs: Vec<Option<Payload>>,
    result: Option<Payload>,
    abandoned: bool,
}

struct Group {
    size: usize,
    round: Mutex<Round>,
    done: Condvar,
}

/// A [`GradReduce`] for ranks that are threads of one process: a barrier and a host-side sum
/// taken in rank order (`((r0 + r1) + r2) + ...`), deterministic whatever the thread timing.
pub struct ThreadReduce {
    group: Arc<Group>,
    rank: usize,
}

impl ThreadReduce {
    /// Handles for ranks `0..size`; move handle `r` to rank `r`'s thread.
    pub fn group(size: usize) -> Vec<ThreadReduce> {
        let size = size.max(1);
        let group = Arc::new(Group {
            size,
            round: Mutex::new(Round {
                generation: 0,
                arrived: 0,
                bufs: (0..size).map(|_| None).collect(),
                result: None,
                abandoned: false,
            }),
            done: Condvar::new(),
        });
        (0..size).map(|rank| ThreadReduce { group: group.clone(), rank }).collect()
    }

    fn reduce(&mut self, mine: Payload) -> Result<Payload, ReduceError> {
        let abandoned = ReduceError::Abandoned { rank: self.rank, size: self.group.size };
        let mut round = self.group.round.lock().map_err(|_| ReduceError::Abandoned { rank: self.rank, size: self.group.size })?;
        if round.abandoned {
            return Err(abandoned);
        }
        let generation = round.generation;
        round.bufs[self.rank] = Some(mine);
        round.arrived += 1;
        if round.arrived == self.group.size {
            let mut bufs = round.bufs.iter_mut().map(|b| b.take().expect("every rank arrived"));
            let mut acc = bufs.next().expect("a group has a rank");
            for b in bufs {
                match (&mut acc, b) {
                    (Payload::F32(a), Payload::F32(b)) if a.len() == b.len() => a.iter_mut().zip(b).for_each(|(a, b)| *a += b),
                    (Payload::F64(a), Payload::F64(b)) if a.len() == b.len() => a.iter_mut().zip(b).for_each(|(a, b)| *a += b),
                    _ => panic!("ranks reduced buffers of different types or lengths (a bug)"),
                }
            }
            round.result = Some(acc);
            round.arrived = 0;
            round.generation += 1;
            self.group.done.notify_all();
        } else {
            while round.generation == generation && !round.abandoned {
                round =
                    self.group.done.wait(round).map_err(|_| ReduceError::Abandoned { rank: self.rank, size: self.group.size })?;
            }
            if round.generation == generation {
                return Err(abandoned);
            }
        }
        // The result of this round stays until the next round completes, which needs this rank.
        Ok(match round.result.as_ref().expect("a completed round has a result") {
            Payload::F32(v) => Payload::F32(v.clone()),
            Payload::F64(v) => Payload::F64(v.clone()),
        })
    }
}

impl Drop for ThreadReduce {
    fn drop(&mut self) {
        // A rank unwinding out of training must not leave the others waiting forever.
        if std::thread::panicking() {
            if let Ok(mut round) = self.group.round.lock() {
                round.abandoned = true;
            }
            self.group.done.notify_all();
        }
    }
}

impl GradReduce for ThreadReduce {
    fn world(&self) -> World {
        World { rank: self.rank, size: self.group.size }
    }

    fn sum_f32(&mut self, buf: &mut [f32]) -> Result<(), ReduceError> {
        if self.group.size == 1 {
            return Ok(());
        }
        match self.reduce(Payload::F32(buf.to_vec()))? {
            Payload::F32(v) => buf.copy_from_slice(&v),
            Payload::F64(_) => unreachable!("an f32 round yields f32"),
        }
        Ok(())
    }

    fn sum_f64(&mut self, buf: &mut [f64]) -> Result<(), ReduceError> {
        if self.group.size == 1 {
            return Ok(());
        }
        match self.reduce(Payload::F64(buf.to_vec()))? {
            Payload::F64(v) => buf.copy_from_slice(&v),
            Payload::F32(_) => unreachable!("an f64 round yields f64"),
        }
        Ok(())
    }
}

/// Runs one [`super::trainer::train_rank`] per model, rank `r` on `models[r]` with
/// `reducers[r]`: rank 0 on this thread (it reports through `on_step` and `note` and writes the
/// checkpoints), the others on scoped threads. Returns rank 0's result; every rank's weights are
/// identical, so nothing else is gathered.
pub fn train_ranks<R: GradReduce>(
    models: &[crate::model::llama::Model],
    reducers: Vec<R>,
    records: &[(Vec<u32>, Vec<i64>)],
    cfg: &super::trainer::TrainConfig,
    work: &std::path::Path,
    on_step: &mut dyn FnMut(&super::trainer::StepReport),
    note: &mut dyn FnMut(&str),
) -> Result<super::trainer::Trained, super::trainer::TrainError> {
    use super::trainer::{train_rank, TrainError};
    assert_eq!(models.len(), reducers.len(), "one reducer per model");
    let mut reducers = reducers.into_iter();
    let Some(mut first) = reducers.next() else {
        return Err(TrainError::Data("data-parallel training needs at least one rank".into()));
    };
    std::thread::scope(|scope| {
        let others: Vec<_> = models[1..]
            .iter()
            .zip(reducers)
            .map(|(model, mut reduce)| {
                scope.spawn(move || train_rank(model, records, cfg, work, Some(&mut reduce), &mut |_| {}, &mut |_| {}))
            })
            .collect();
        let result = train_rank(&models[0], records, cfg, work, Some(&mut first), on_step, note);
        drop(first);
        for (k, h) in others.into_iter().enumerate() {
            match h.join() {
                Ok(Ok(_)) => {}
                // Every rank fails at the same step for the same cause; rank 0 says which.
                Ok(Err(e)) if result.is_ok() => return Err(e),
                Ok(Err(_)) => {}
                Err(p) => std::panic::resume_unwind(Box::new(format!(
                    "data-parallel rank {} panicked: {}",
                    k + 1,
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                ))),
            }
        }
        result
    })
}

/// Data-parallel training on these CUDA devices: the model at `model_path` loaded in `dtype` (its
/// projections stored as `quant` says) on each GPU, NCCL between them, then [`train_ranks`] (rank `r` on `gpus[r]`). `note` gets a line
/// per model loaded and one naming the group.
#[cfg(feature = "cuda")]
#[allow(clippy::too_many_arguments)]
pub fn train_on_gpus(
    gpus: &[usize],
    model_path: &std::path::Path,
    dtype: candle_core::DType,
    quant: crate::model::base_quant::BaseQuant,
    records: &[(Vec<u32>, Vec<i64>)],
    cfg: &super::trainer::TrainConfig,
    work: &std::path::Path,
    on_step: &mut dyn FnMut(&super::trainer::StepReport),
    note: &mut dyn FnMut(&str),
) -> Result<super::trainer::Trained, super::trainer::TrainError> {
    use super::trainer::TrainError;
    let devices = gpus
        .iter()
        .map(|&gpu| candle_core::Device::new_cuda(gpu).map_err(|source| TrainError::OpenDevice { gpu, source }))
        .collect::<Result<Vec<_>, _>>()?;
    let mut models = Vec::new();
    for (d, &gpu) in devices.iter().zip(gpus) {
        note(&format!("loading {} on cuda:{gpu}", model_path.display()));
        models.push(crate::model::load::load_with(model_path, d, dtype, quant).map_err(|source| TrainError::LoadModel { gpu, source })?);
    }
    let reducers = nccl::group(&devices).map_err(TrainError::NcclSetup)?;
    let version = nccl::version().unwrap_or_default();
    note(&format!("data-parallel over {} GPUs {gpus:?} (NCCL {version})", gpus.len()));
    train_ranks(&models, reducers, records, cfg, work, on_step, note)
}

/// Without the `cuda` feature the device pool has no GPUs, so no lease holds two.
#[cfg(not(feature = "cuda"))]
#[allow(clippy::too_many_arguments)]
pub fn train_on_gpus(
    gpus: &[usize],
    _model_path: &std::path::Path,
    _dtype: candle_core::DType,
    _quant: crate::model::base_quant::BaseQuant,
    _records: &[(Vec<u32>, Vec<i64>)],
    _cfg: &super::trainer::TrainConfig,
    _work: &std::path::Path,
    _on_step: &mut dyn FnMut(&super::trainer::StepReport),
    _note: &mut dyn FnMut(&str),
) -> Result<super::trainer::Trained, super::trainer::TrainError> {
    unreachable!("a lease of GPUs {gpus:?} in a build without CUDA")
}

#[cfg(feature = "cuda")]
pub mod nccl;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_in_order_with_uneven_splits() {
        for rows in 0..12 {
            for size in 1..6 {
                let shards: Vec<Range<usize>> = (0..size).map(|rank| World { rank, size }.shard(rows)).collect();
                let mut next = 0;
                for s in &shards {
                    assert_eq!(s.start, next, "rows {rows}, size {size}: {shards:?}");
                    next = s.end;
                }
                assert_eq!(next, rows, "rows {rows}, size {size}: {shards:?}");
                let lens: Vec<usize> = shards.iter().map(|s| s.len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1, "{lens:?}");
            }
        }
        assert_eq!(World { rank: 0, size: 3 }.shard(8), 0..3);
        assert_eq!(World { rank: 1, size: 3 }.shard(8), 3..6);
        assert_eq!(World { rank: 2, size: 3 }.shard(8), 6..8);
        assert_eq!(World::SINGLE.shard(5), 0..5);
    }

    #[test]
    fn a_rank_past_the_last_row_gets_an_empty_shard() {
        assert_eq!(World { rank: 2, size: 3 }.shard(2), 2..2);
        assert!(World { rank: 3, size: 4 }.shard(1).is_empty());
        assert_eq!(World { rank: 0, size: 4 }.shard(1), 0..1);
    }

    #[test]
    fn thread_reduce_sums_in_rank_order_on_every_rank() {
        for size in [1, 2, 3] {
            let results: Vec<(Vec<f32>, Vec<f64>)> = std::thread::scope(|s| {
                let hs: Vec<_> = ThreadReduce::group(size)
                    .into_iter()
                    .map(|mut r| {
                        s.spawn(move || {
                            let rank = r.world().rank;
                            let mut out = (Vec::new(), Vec::new());
                            for round in 0..50 {
                                let mut g = vec![rank as f32 + 0.5, round as f32, 1e-8 * rank as f32];
                                r.sum_f32(&mut g).unwrap();
                                let mut st = vec![rank as f64, 1.0];
                                r.sum_f64(&mut st).unwrap();
                                out = (g, st);
                            }
                            out
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let n = size as f32;
            let want: Vec<f32> = {
                let mut acc = vec![0.5f32, 49.0, 0.0];
                for r in 1..size {
                    acc[0] += r as f32 + 0.5;
                    acc[1] += 49.0;
                    acc[2] += 1e-8 * r as f32;
                }
                acc
            };
            for (g, st) in &results {
                assert_eq!(g, &want, "size {size}");
                assert_eq!(st, &vec![(0..size).sum::<usize>() as f64, f64::from(n)]);
            }
        }
    }

    use crate::model::config::{Arch, Config};
    use crate::model::llama::Model;
    use crate::model::lora::Module;
    use crate::train::optim::{AdamWConfig, Schedule};
    use crate::train::scaler::ScalerConfig;
    use crate::train::trainer::{train, StepReport, TrainConfig, Trained};
    use candle_core::Device;

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
            batch_size: 3,
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

    /// Records of uneven lengths (5 to 11 tokens), so shards pad to their micro-batch's length.
    fn records() -> Vec<(Vec<u32>, Vec<i64>)> {
        (0..10u32)
            .map(|i| {
                let len = 5 + (i as usize * 3) % 7;
                let ids: Vec<u32> = (0..len as u32).map(|j| (i * 3 + j * 5) % 32).collect();
                let labels = ids.iter().enumerate().map(|(j, &x)| if j < 2 { -100 } else { i64::from(x) }).collect();
                (ids, labels)
            })
            .collect()
    }

    fn model() -> Model {
        Model::random_with_std(Config::tiny(Arch::Llama, 32, 16), 3, 0.2, &Device::Cpu).unwrap()
    }

    fn run_world(size: usize, c: &TrainConfig, work: &std::path::Path, on_step: &mut dyn FnMut(&StepReport)) -> Trained {
        let models = vec![model(); size];
        train_ranks(&models, ThreadReduce::group(size), &records(), c, work, on_step, &mut |_| {}).unwrap()
    }

    fn losses(t: &Trained) -> Vec<f64> {
        t.log.iter().map(|l| l.loss).collect()
    }

    /// Largest `|a - b| / max(|a|, |b|, floor)` over two vectors.
    fn max_rel(a: &[f64], b: &[f64], floor: f64) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(a, b)| (a - b).abs() / a.abs().max(b.abs()).max(floor)).fold(0.0, f64::max)
    }

    #[test]
    fn two_three_and_four_ranks_train_like_one_device_with_dropout() {
        // 10 records, micro-batches of 3 (the last has 1 row), 2 per step: 2 ranks split 2+1,
        // 3 ranks 1+1+1, 4 ranks leave rank 3 (and, on the last micro-batch, ranks 1-3) empty.
        let c = cfg(0);
        let one = train(&model(), &records(), &c, tempfile::tempdir().unwrap().path(), &mut |_| {}, &mut |_| {}).unwrap();
        assert_eq!(one.log.len(), 2, "ceil(ceil(10 / 3) / 2) steps");
        let mut c3 = c.clone();
        c3.epochs = 3;
        let one3 = train(&model(), &records(), &c3, tempfile::tempdir().unwrap().path(), &mut |_| {}, &mut |_| {}).unwrap();
        for size in [2, 3, 4] {
            let dir = tempfile::tempdir().unwrap();
            let got = run_world(size, &c3, dir.path(), &mut |_| {});
            let (l1, ln) = (losses(&one3), losses(&got));
            assert!(max_rel(&l1, &ln, 1e-6) < 1e-5, "world {size}: loss curve {ln:?} vs {l1:?}");
            let p1: Vec<f64> = one3.params.iter().map(|&x| f64::from(x)).collect();
            let pn: Vec<f64> = got.params.iter().map(|&x| f64::from(x)).collect();
            // Relative to the weights' scale: an element near 0 has no relative error to speak of.
            let scale = p1.iter().fold(0f64, |m, x| m.max(x.abs()));
            let err = p1.iter().zip(&pn).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max) / scale;
            assert!(err < 1e-5, "world {size}: final LoRA weights differ by {err:e} of their largest");
            assert_ne!(got.params, model_params_at_init(), "training moved the weights");
        }
    }

    fn model_params_at_init() -> Vec<f32> {
        let c = cfg(0);
        crate::model::lora::Layout::new(&model().cfg, c.r, c.alpha, &c.targets).init(c.seed)
    }

    #[test]
    fn one_rank_through_the_reducer_is_bit_identical_to_no_reducer() {
        let c = cfg(3);
        let plain = train(&model(), &records(), &c, tempfile::tempdir().unwrap().path(), &mut |_| {}, &mut |_| {}).unwrap();
        let one = run_world(1, &c, tempfile::tempdir().unwrap().path(), &mut |_| {});
        assert!(one.log == plain.log, "{:?}\nvs\n{:?}", one.log, plain.log);
        assert!(one.params == plain.params);
    }

    #[test]
    fn a_killed_two_rank_run_resumes_to_the_bits_of_an_uninterrupted_one() {
        let mut c = cfg(6);
        c.epochs = 3;
        let full = run_world(2, &c, tempfile::tempdir().unwrap().path(), &mut |_| {});
        let dir = tempfile::tempdir().unwrap();
        // Kill rank 0 (a panic in its progress callback, before step 4's checkpoint): rank 1 is
        // released from its reduction and the whole run unwinds.
        let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_world(2, &c, dir.path(), &mut |r: &StepReport| assert!(r.step < 4, "killed"))
        }));
        assert!(killed.is_err());
        assert!(dir.path().join("checkpoint-3").exists(), "rank 0 checkpointed step 3");
        let resumed = run_world(2, &c, dir.path(), &mut |_| {});
        assert_eq!(resumed.resumed_from, 3);
        assert!(resumed.log == full.log, "{:?}\nvs\n{:?}", resumed.log, full.log);
        assert!(resumed.params == full.params, "the resumed adapter differs from the uninterrupted one");
    }

    #[test]
    fn a_panicking_rank_releases_the_others_with_an_error() {
        let mut group = ThreadReduce::group(2);
        let mut r1 = group.pop().unwrap();
        let r0 = group.pop().unwrap();
        let waiter = std::thread::spawn(move || r1.sum_f32(&mut [1.0]));
        let _ = std::thread::spawn(move || {
            let _keep = r0;
            panic!("rank 0 fails");
        })
        .join();
        assert!(matches!(waiter.join().unwrap(), Err(ReduceError::Abandoned { rank: 1, size: 2 })));
    }
}
