//! Training throughput and peak memory of lora-train's step.
//!
//! Runs the real training step (LoRA r=8 on q,k,v,o,gate,up,down, explicit backward, AdamW) with
//! random token batches of `BATCH x SEQ` (default 8 x 384, the tutorial's shape) and prints
//! tokens/s, milliseconds per step and peak memory: the process's peak RSS, and on CUDA the
//! device's peak used memory (`cuMemGetInfo` sampled every 2 ms by a thread, CUDA context
//! included, as `nvidia-smi` counts it). The step is lora-train's: LoRA weights, gradients and
//! AdamW moments on the device, one scalar read per step (loss and gradient norm).
//!
//! The model is SmolLM2-135M-Instruct from the GGUF at `PIPE_TEST_GGUF`, or, with
//! `PIPE_BENCH_MODEL=smollm2-135m|tinyllama-1.1b|deepseek-7b`, random weights of that shape (the
//! shapes of shared/bench/peft_baseline.py, made on the device directly in the dtype), or
//! `PIPE_BENCH_MODEL=tiny` (`Config::tiny`, hidden 64, vocab 512). `PIPE_BENCH_DEVICE=cuda` runs
//! on GPU 0 (a build with `--features cuda`). `PIPE_BENCH_STEPS` timed steps (default 3) follow
//! `PIPE_BENCH_WARMUP` untimed ones (default 1).
//! `PIPE_BENCH_DTYPE=bf16|f16` stores the frozen weights and computes in that dtype (LoRA weights,
//! gradients and AdamW stay f32, as in lora-train; f16 with a fixed loss scale of 2^16, no
//! overflow handling: a timing, not a training run). `PIPE_BENCH_GPUS=N` (CUDA build) runs N
//! ranks on cuda:0..N, each on its own `BATCH x SEQ` batch (the per-GPU batch) with the LoRA
//! gradients all-reduced by NCCL every step, and prints the tokens/s of all ranks together.
//! `PIPE_BENCH_REPEAT=N` checks determinism instead of timing: it runs the same
//! `PIPE_BENCH_WARMUP + PIPE_BENCH_STEPS` steps N times from the same state (weights, LoRA init,
//! batch, dropout seeds) and prints how many distinct results the N runs gave (a blake3 of every
//! step's loss bits and the final adapter's bytes); anything but 1 exits 1.
//! `PIPE_BENCH_QUANT=nf4|q8_0|q4_k|gguf` stores the frozen projections that way (lora-train's
//! `base_quant`); a random model's projections are quantized one by one as they are drawn.
//!
//!     PIPE_TEST_GGUF=.../SmolLM2-135M-Instruct.Q4_1.gguf cargo bench --bench train
//!     PIPE_BENCH_SHAPE=4x128 PIPE_BENCH_CKPT=0 cargo bench --bench train

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use pipe::model::base_quant::BaseQuant;
use pipe::model::config::Config;
use pipe::model::llama::{Batch, LoraGrads, LoraStep, Model};
use pipe::model::lora::{Layout, Module};
use pipe::train::optim::{grad_norm_sq, AdamW, AdamWConfig, DeviceAdamW};
use pipe::train::parallel::GradReduce;

fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Samples the device's used memory until dropped; `peak()` is the largest sample in MiB.
struct MemSampler {
    #[cfg(feature = "cuda")]
    inner: Option<(std::sync::Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<usize>)>,
}

impl MemSampler {
    fn start(device: &Device) -> MemSampler {
        #[cfg(feature = "cuda")]
        if let Device::Cuda(d) = device {
            use std::sync::atomic::{AtomicBool, Ordering};
            let ctx = d.cuda_stream().context().clone();
            let stop = std::sync::Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let h = std::thread::spawn(move || {
                let mut peak = 0usize;
                while !flag.load(Ordering::Relaxed) {
                    if let Ok((free, total)) = ctx.mem_get_info() {
                        peak = peak.max(total - free);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                peak
            });
            return MemSampler { inner: Some((stop, h)) };
        }
        let _ = device;
        MemSampler {
            #[cfg(feature = "cuda")]
            inner: None,
        }
    }

    fn peak_mib(self) -> Option<f64> {
        #[cfg(feature = "cuda")]
        if let Some((stop, h)) = self.inner {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            return h.join().ok().map(|b| b as f64 / (1024.0 * 1024.0));
        }
        None
    }
}

fn shape_config(name: &str) -> Option<Config> {
    // The shapes of peft_baseline.py; its 7B is called deepseek-7b there.
    Config::preset(if name == "deepseek-7b" { "deepseek-llm-7b" } else { name })
}

fn main() {
    let device = match std::env::var("PIPE_BENCH_DEVICE").as_deref() {
        Ok("cuda") => Device::new_cuda(0).expect("CUDA device 0 (build with --features cuda)"),
        _ => Device::Cpu,
    };
    let named = std::env::var("PIPE_BENCH_MODEL").ok();
    let gguf = std::env::var_os("PIPE_TEST_GGUF");
    if named.is_none() && gguf.is_none() {
        eprintln!("set PIPE_TEST_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf (scripts/test.sh fetches it to target/test-models/) or PIPE_BENCH_MODEL");
        return;
    }
    let shape = std::env::var("PIPE_BENCH_SHAPE").unwrap_or_else(|_| "8x384".into());
    let (b, t) = shape.split_once('x').map(|(b, t)| (b.parse().unwrap(), t.parse().unwrap())).expect("BxT");
    let ckpt = std::env::var("PIPE_BENCH_CKPT").map(|v| v != "0").unwrap_or(true);
    let steps: usize = std::env::var("PIPE_BENCH_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(3).max(1);
    let warmup: usize = std::env::var("PIPE_BENCH_WARMUP").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let (dtype, dtype_name) = match std::env::var("PIPE_BENCH_DTYPE").as_deref() {
        Ok("bf16") => (DType::BF16, "bf16"),
        Ok("f16") => (DType::F16, "f16"),
        _ => (DType::F32, "f32"),
    };
    let gpus: usize = std::env::var("PIPE_BENCH_GPUS").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let quant = std::env::var("PIPE_BENCH_QUANT").ok().map(|q| {
        BaseQuant::parse(&q).unwrap_or_else(|| panic!("PIPE_BENCH_QUANT: one of {}", BaseQuant::NAMES.join(", ")))
    });
    let quant_label = quant.map(|q| format!(", base {}", q.name())).unwrap_or_default();
    let quant = quant.unwrap_or(BaseQuant::None);
    let load = |device: &Device| -> (Model, String) {
        match &named {
            Some(n) => {
                let cfg = shape_config(n).expect("PIPE_BENCH_MODEL: tiny, smollm2-135m, tinyllama-1.1b or deepseek-7b");
                let model = if n == "tiny" {
                    Model::random(cfg, 0, device).and_then(|m| m.to_dtype(dtype)).and_then(|mut m| {
                        m.quantize_base(quant)?;
                        Ok(m)
                    })
                } else {
                    Model::random_on_device_quantized(cfg, 0.02, dtype, device, quant)
                }
                .expect("random model");
                (model, format!("{n} (random, {dtype_name}{quant_label})"))
            }
            None => (
                pipe::model::load::load_with(std::path::Path::new(gguf.as_ref().expect("checked")), device, dtype, quant)
                    .expect("model loads"),
                format!("SmolLM2-135M (Q4_1 GGUF, {dtype_name}{quant_label})"),
            ),
        }
    };
    if gpus > 1 {
        multi_gpu(gpus, &load, b, t, steps, warmup, ckpt, dtype);
        return;
    }
    let repeat: usize = std::env::var("PIPE_BENCH_REPEAT").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    if repeat > 0 {
        let (model, label) = load(&device);
        let mut digests: Vec<String> = Vec::new();
        let mut losses = Vec::new();
        for _ in 0..repeat {
            let (_, loss, digest) = run_rank(&model, b, t, steps, warmup, ckpt, dtype, 0, None);
            losses.push(loss);
            digests.push(digest);
        }
        let mut distinct = digests.clone();
        distinct.sort();
        distinct.dedup();
        println!(
            "| {label} | {b}x{t} | checkpointing {} | repeat {repeat} x {} steps | {} distinct result(s) | last loss {:.6} | digest {} | {} |",
            if ckpt { "on" } else { "off" },
            warmup + steps,
            distinct.len(),
            losses[0],
            &digests[0][..16],
            if distinct.len() == 1 { "PASS" } else { "FAIL" }
        );
        std::process::exit(if distinct.len() == 1 { 0 } else { 1 });
    }
    let mem = MemSampler::start(&device);
    let t0 = Instant::now();
    let (model, label) = load(&device);
    let load_s = t0.elapsed().as_secs_f64();
    let (times, _, _) = run_rank(&model, b, t, steps, warmup, ckpt, dtype, 0, None);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let where_ = if device.is_cuda() { "cuda:0".to_string() } else { format!("cpu, {threads} threads") };
    let dev_mem = match mem.peak_mib() {
        Some(m) => format!("peak device mem {m:.0} MiB ({:.2} GiB)", m / 1024.0),
        None => "peak device mem n/a".to_string(),
    };
    println!(
        "| {label} | {b}x{t} | checkpointing {} | {where_} | {:.1} tok/s | {:.1} ms/step | {dev_mem} | peak RSS {:.0} MiB | load {load_s:.1}s |",
        if ckpt { "on" } else { "off" },
        (b * t) as f64 / mean,
        mean * 1e3,
        peak_rss_mib()
    );
}

/// `warmup + steps` training steps of one rank on a `b x t` batch (rank-dependent tokens), as
/// lora-train's trainer does them (LoRA state on the device, one host read per step); with
/// `reduce`, the gradient is summed across ranks before AdamW. Returns the times of the steps
/// after the warm-up, the last loss, and a blake3 (hex) of every step's loss and gradient-norm
/// bits and the final LoRA weights' bytes.
#[allow(clippy::too_many_arguments)]
fn run_rank(
    model: &Model,
    b: usize,
    t: usize,
    steps: usize,
    warmup: usize,
    ckpt: bool,
    dtype: DType,
    rank: usize,
    mut reduce: Option<&mut dyn GradReduce>,
) -> (Vec<f64>, f64, String) {
    let device = &model.device;
    let mut hasher = blake3::Hasher::new();
    let layout = Layout::new(&model.cfg, 8, 32.0, &Module::ALL);
    let mut params = Tensor::from_vec(layout.init(0), layout.len, device).unwrap();
    let mut opt = DeviceAdamW::from_host(&AdamW::new(layout.len), device).unwrap();
    let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let vocab = model.cfg.vocab_size as u64;
    let seqs: Vec<(Vec<u32>, Vec<i64>)> = (0..b)
        .map(|i| {
            let i = i + rank * b;
            let ids: Vec<u32> = (0..t).map(|j| ((i * 7919 + j * 104729) as u64 % vocab) as u32).collect();
            let labels = ids.iter().enumerate().map(|(j, &x)| if j < t / 4 { -100 } else { i64::from(x) }).collect();
            (ids, labels)
        })
        .collect();
    let refs: Vec<(&[u32], Vec<i64>)> = seqs.iter().map(|(i, l)| (i.as_slice(), l.clone())).collect();
    let batch = Batch::new(&refs, 0, device).unwrap();
    let denom = batch.n_targets() as f32;
    let scale = if dtype == DType::F16 { 65536.0 } else { 1.0 };
    let mut times = Vec::new();
    let mut last_loss = 0.0;
    device.synchronize().unwrap();
    for s in 0..steps + warmup {
        let t1 = Instant::now();
        let mut grads = LoraGrads::new();
        let st = LoraStep::new(&layout, &params, model.dtype, 0.1, s as u64).unwrap();
        let (loss, _) = model.loss_and_grad(&batch, Some(&st), denom / scale, Some(&mut grads), ckpt).unwrap();
        drop(st);
        let mut g = grads.tensor().expect("LoRA gradients").clone();
        if let Some(r) = reduce.as_deref_mut() {
            g = r.sum_tensor(&g).expect("all-reduce");
        }
        let g = g.affine(1.0 / f64::from(scale), 0.0).unwrap();
        // The trainer's one read per step: loss and gradient norm.
        let stats = Tensor::stack(&[loss.to_dtype(DType::F64).unwrap(), grad_norm_sq(&g).unwrap()], 0).unwrap();
        let stats = stats.to_vec1::<f64>().unwrap();
        hasher.update(&stats[0].to_le_bytes());
        hasher.update(&stats[1].to_le_bytes());
        params = opt.step(&cfg, &params, &g, 1e-4).unwrap();
        device.synchronize().unwrap();
        let dt = t1.elapsed().as_secs_f64();
        last_loss = stats[0] / f64::from(denom);
        if rank == 0 {
            eprintln!("step {s}: loss {last_loss:.4}, grad norm {:.3e}, {:.1} ms", stats[1].sqrt(), dt * 1e3);
        }
        if s >= warmup {
            times.push(dt);
        }
    }
    for v in params.to_vec1::<f32>().unwrap() {
        hasher.update(&v.to_le_bytes());
    }
    (times, last_loss, hasher.finalize().to_hex().to_string())
}

/// `PIPE_BENCH_GPUS=N`: N ranks on cuda:0..N, each on its own `b x t` batch (the per-GPU
/// batch), gradients all-reduced with NCCL every step; tokens/s counts all ranks' tokens.
#[cfg(feature = "cuda")]
#[allow(clippy::too_many_arguments)]
fn multi_gpu(
    n: usize,
    load: &(dyn Fn(&Device) -> (Model, String) + Sync),
    b: usize,
    t: usize,
    steps: usize,
    warmup: usize,
    ckpt: bool,
    dtype: DType,
) {
    let t0 = Instant::now();
    let devices: Vec<Device> = (0..n).map(|i| Device::new_cuda(i).expect("CUDA device")).collect();
    let loaded: Vec<(Model, String)> = devices.iter().map(load).collect();
    let load_s = t0.elapsed().as_secs_f64();
    let reducers = pipe::train::parallel::nccl::group(&devices).expect("NCCL (set LD_LIBRARY_PATH or PIPE_NCCL_LIB)");
    let version = pipe::train::parallel::nccl::version().unwrap_or_default();
    let times: Vec<Vec<f64>> = std::thread::scope(|s| {
        let hs: Vec<_> = loaded
            .iter()
            .zip(reducers)
            .enumerate()
            .map(|(rank, ((model, _), mut r))| {
                s.spawn(move || run_rank(model, b, t, steps, warmup, ckpt, dtype, rank, Some(&mut r)).0)
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // A step ends when the slowest rank's all-reduce does: rank 0's times include the wait.
    let mean = times[0].iter().sum::<f64>() / times[0].len() as f64;
    println!(
        "| {} | {b}x{t} per GPU | checkpointing {} | cuda:0..{} ({n} GPUs, NCCL {version}) | {:.1} tok/s | {mean:.2} s/step | load {load_s:.1}s |",
        loaded[0].1,
        if ckpt { "on" } else { "off" },
        n - 1,
        (n * b * t) as f64 / mean,
    );
}

#[cfg(not(feature = "cuda"))]
#[allow(clippy::too_many_arguments)]
fn multi_gpu(
    n: usize,
    _: &(dyn Fn(&Device) -> (Model, String) + Sync),
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: bool,
    _: DType,
) {
    eprintln!("PIPE_BENCH_GPUS={n} needs a build with --features cuda");
    std::process::exit(2);
}
