//! lora-train, merge and eval on a tiny random model the tests make themselves: training lowers
//! the loss (in f32, and in bf16/f16 mixed precision), the adapter is in peft's format (f32
//! tensors whatever the compute dtype), a SIGKILL mid-training resumes to a bit-identical
//! adapter (f32 and bf16), and the merged model evaluates.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use candle_core::Device;
use pipe::model::config::{Arch, Config};
use pipe::model::llama::Model;

use crate::common::TestContext;

/// Writes a random Llama (or Qwen2) Hugging Face folder with the tiny tokenizer into `rel`.
pub fn tiny_model(t: &TestContext, rel: &str, arch: Arch, hidden: usize) {
    t.copy_tokenizer();
    let tok = pipe::tokenizer::load::load(&t.path("tok/tokenizer.json")).expect("tiny tokenizer loads");
    let cfg = Config::tiny(arch, tok.tokenizer.get_vocab_size(true), hidden);
    let model = Model::random_with_std(cfg.clone(), 1234, 0.2, &Device::Cpu).expect("random model");
    let dir = t.path(rel);
    std::fs::create_dir_all(&dir).unwrap();
    let tensors: HashMap<String, candle_core::Tensor> = model.hf_tensors().into_iter().collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), cfg.to_hf_json(None, tok.eos.as_ref().map(|e| e.0), "float32").to_string()).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(t.path(&format!("tok/{f}")), dir.join(f)).unwrap();
    }
}

fn pipeline(steps: u32, save_steps: u32, dtype: &str, lr: f64) -> String {
    format!(
        r#"name: tiny-train
nodes:
  fix:
    kind: fix-json
    inputs: {{ records: data/fortune.jsonl }}
    params: {{ eval_fraction: 0.1 }}
  tok:
    kind: tokenize
    inputs: {{ records: fix.train, tokenizer: model }}
    params: {{ max_length: 64 }}
  tok-eval:
    kind: tokenize
    inputs: {{ records: fix.eval, tokenizer: model }}
    params: {{ max_length: 64 }}
  train:
    kind: lora-train
    inputs: {{ model: model, dataset: tok.dataset }}
    params: {{ max_steps: {steps}, batch_size: 4, grad_accum: 2, lr: {lr}, save_steps: {save_steps}, logging_steps: 1, r: 4, dtype: {dtype} }}
  merge:
    kind: merge
    inputs: {{ model: model, adapter: train.adapter }}
  eval:
    kind: eval
    inputs: {{ base: model, tuned: merge.model, dataset: tok-eval.dataset, prompts: prompts.txt }}
    params: {{ max_new_tokens: 8 }}
"#
    )
}

fn project(steps: u32, save_steps: u32) -> TestContext {
    project_in(steps, save_steps, "f32")
}

fn project_in(steps: u32, save_steps: u32, dtype: &str) -> TestContext {
    project_with(steps, save_steps, dtype, 0.05)
}

fn project_with(steps: u32, save_steps: u32, dtype: &str, lr: f64) -> TestContext {
    let t = TestContext::with_fixtures();
    tiny_model(&t, "model", Arch::Llama, 32);
    t.write("prompts.txt", "现在你要扮演我碰到一位神秘的算命大师, 你是谁?\nWhat does my future hold?\n");
    t.write("p.yaml", pipeline(steps, save_steps, dtype, lr));
    t
}

/// The training log's lines as JSON.
fn train_log(t: &TestContext) -> Vec<serde_json::Value> {
    let log = std::fs::read_to_string(t.output_path("p.yaml", "train", "log", &[])).unwrap();
    log.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Mean of the first three and of the last three logged losses.
fn first_and_last_loss(log: &[serde_json::Value]) -> (f64, f64) {
    let losses: Vec<f64> = log.iter().map(|l| l["loss"].as_f64().unwrap()).collect();
    let first: f64 = losses[..3].iter().sum::<f64>() / 3.0;
    let last: f64 = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
    (first, last)
}

/// The adapter's tensors and their dtypes as safetensors stores them.
fn adapter_dtypes(t: &TestContext) -> Vec<(String, candle_core::DType)> {
    let adapter = t.output_path("p.yaml", "train", "adapter", &[]);
    let tensors = candle_core::safetensors::load(adapter.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    tensors.into_iter().map(|(n, t)| (n, t.dtype())).collect()
}

#[test]
fn training_lowers_the_loss_and_eval_reports_base_and_tuned() {
    let t = project(16, 0);
    t.run("p.yaml", &[]).success();
    let log = train_log(&t);
    assert_eq!(log.len(), 16, "logging_steps 1 logs every step: {log:?}");
    assert!(log.iter().all(|l| l.get("loss_scale").is_none()), "f32 has no loss scaling: {:?}", log[0]);
    let (first, last) = first_and_last_loss(&log);
    assert!(last < first - 0.3, "training should lower the loss: first {first:.3}, last {last:.3}");
    let report = t.output_path("p.yaml", "eval", "report", &[]);
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(report.join("report.json")).unwrap()).unwrap();
    let (base, tuned) = (r["base"]["loss"].as_f64().unwrap(), r["tuned"]["loss"].as_f64().unwrap());
    assert!(tuned < base, "tuned held-out loss {tuned} should be below base {base}");
    assert_eq!(r["generations"].as_array().unwrap().len(), 2);
    assert!(std::fs::read_to_string(report.join("report.md")).unwrap().contains("| tuned |"));
    // The merged folder is a Hugging Face folder.
    let merged = t.output_path("p.yaml", "merge", "model", &[]);
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        assert!(merged.join(f).exists(), "merged folder lacks {f}");
    }
}

#[test]
fn the_adapter_has_exactly_peft_tensor_names_and_config_fields() {
    let t = project(2, 0);
    t.run("p.yaml", &["--target", "train"]).success();
    let adapter = t.output_path("p.yaml", "train", "adapter", &[]);
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(adapter.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 32.0);
    let mut targets: Vec<&str> = cfg["target_modules"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    targets.sort();
    assert_eq!(targets, ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]);
    // Names and shapes as the Python `safetensors` package reads them.
    let script = r#"
import sys, json
from safetensors import safe_open
with safe_open(sys.argv[1], "np") as f:
    print(json.dumps({k: list(f.get_tensor(k).shape) for k in f.keys()}))
"#;
    let out = std::process::Command::new("python3").arg("-c").arg(script).arg(adapter.join("adapter_model.safetensors")).output();
    let names: HashMap<String, Vec<usize>> = match out {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).unwrap(),
        other => {
            assert!(std::env::var_os("PIPE_REQUIRE_PYTHON").is_none(), "python3 with `safetensors` is required: {other:?}");
            eprintln!("skipping the Python half: python3 with the `safetensors` package is not available");
            return;
        }
    };
    assert_eq!(names.len(), 2 * 2 * 7, "2 layers x 7 modules x (A, B)");
    let (h, kv) = (32usize, 16usize);
    for l in 0..2 {
        let p = format!("base_model.model.model.layers.{l}");
        assert_eq!(names[&format!("{p}.self_attn.q_proj.lora_A.weight")], vec![4, h]);
        assert_eq!(names[&format!("{p}.self_attn.k_proj.lora_B.weight")], vec![kv, 4]);
        assert_eq!(names[&format!("{p}.mlp.down_proj.lora_A.weight")], vec![4, 2 * h]);
        assert_eq!(names[&format!("{p}.mlp.gate_proj.lora_B.weight")], vec![2 * h, 4]);
    }
}

/// bf16 compute (frozen weights bf16, LoRA weights and optimizer f32) trains like f32: the loss
/// falls by as much, close to the f32 run's curve, and the adapter is saved in f32 as peft saves
/// one trained on a bf16 base.
#[test]
fn training_in_bf16_lowers_the_loss_and_saves_an_f32_adapter() {
    let t = project_in(16, 0, "bf16");
    t.run("p.yaml", &["--target", "train"]).success();
    let log = train_log(&t);
    assert_eq!(log.len(), 16);
    let (first, last) = first_and_last_loss(&log);
    assert!(last < first - 0.3, "bf16 training should lower the loss: first {first:.3}, last {last:.3}");
    let f32_run = project_in(16, 0, "f32");
    f32_run.run("p.yaml", &["--target", "train"]).success();
    let (f32_first, f32_last) = first_and_last_loss(&train_log(&f32_run));
    assert!((first - f32_first).abs() < 0.05 * f32_first, "bf16 starts at {first:.4}, f32 at {f32_first:.4}");
    assert!((last - f32_last).abs() < 0.1 * f32_last, "bf16 ends at {last:.4}, f32 at {f32_last:.4}");
    // The dtype is in the node key (the two projects differ in nothing else).
    let (a, b) = (t.show("p.yaml", "train", &[]), f32_run.show("p.yaml", "train", &[]));
    assert_eq!((a["params"]["dtype"].as_str(), b["params"]["dtype"].as_str()), (Some("bf16"), Some("f32")));
    assert_ne!(a["record"]["key"], b["record"]["key"]);
    let dtypes = adapter_dtypes(&t);
    assert_eq!(dtypes.len(), 28);
    assert!(dtypes.iter().all(|(_, d)| *d == candle_core::DType::F32), "{dtypes:?}");
}

/// f16 trains with dynamic loss scaling: every log line carries the scale (GradScaler's initial
/// 2^16 at first) and whether the step was skipped; a skipped step halves the scale for the next
/// one and is counted in the node summary; and the loss falls.
#[test]
fn training_in_f16_logs_the_loss_scale_and_lowers_the_loss() {
    let t = project_in(16, 0, "f16");
    let r = t.run("p.yaml", &["--target", "train"]).success();
    let log = train_log(&t);
    assert_eq!(log.len(), 16, "logging_steps 1 logs every step");
    let scales: Vec<f64> = log.iter().map(|l| l["loss_scale"].as_f64().expect("f16 logs the loss scale")).collect();
    let skipped: Vec<bool> = log.iter().map(|l| l["skipped"].as_bool().expect("f16 logs whether it skipped")).collect();
    assert_eq!(scales[0], 65536.0);
    for i in 1..log.len() {
        let want = if skipped[i - 1] { scales[i - 1] / 2.0 } else { scales[i - 1] };
        assert_eq!(scales[i], want, "step {}: {scales:?} {skipped:?}", i + 1);
        assert_eq!(log[i]["grad_norm"].is_null(), skipped[i], "a skipped step has no gradient norm");
    }
    let n_skipped = skipped.iter().filter(|&&s| s).count();
    assert!(n_skipped < 4, "{n_skipped} of 16 steps overflowed");
    let (first, last) = first_and_last_loss(&log);
    assert!(last < first - 0.3, "f16 training should lower the loss: first {first:.3}, last {last:.3}");
    assert!(adapter_dtypes(&t).iter().all(|(_, d)| *d == candle_core::DType::F32));
    let train = r.events_of("node_finished").into_iter().find(|e| e["node"] == "train").expect("train ran");
    let summary = train["summary"].as_str().unwrap();
    assert_eq!(summary.contains(&format!("{n_skipped} skipped for f16 overflow")), n_skipped > 0, "{summary}");
}

fn adapter_digest(t: &TestContext) -> String {
    t.show("p.yaml", "train", &[])["outputs"]["adapter"]["digest"].as_str().unwrap().to_string()
}

#[test]
fn sigkill_mid_training_then_rerun_ends_bit_identical() {
    kill_mid_training_and_rerun("f32", 0.05);
}

#[test]
fn sigkill_mid_bf16_training_then_rerun_ends_bit_identical() {
    kill_mid_training_and_rerun("bf16", 0.05);
}

/// At lr 0.05 this random model's residual stream outgrows f16's range (65504) near step 28: a
/// genuine NaN loss, which stops training by name. At 0.03 it stays below 1e4 and one step (18,
/// on the machine this was written on) overflows its scaled gradients and is skipped, so a kill
/// after it also checks that the loss scaler's state and the applied-update count resume.
#[test]
fn sigkill_mid_f16_training_then_rerun_ends_bit_identical() {
    kill_mid_training_and_rerun("f16", 0.03);
}

/// Trains 40 steps uninterrupted, then again with a SIGKILL at a step that varies from run to
/// run and a rerun; the rerun must resume and end with the same adapter bytes.
fn kill_mid_training_and_rerun(dtype: &str, lr: f64) {
    let steps = 40;
    let reference = project_with(steps, 1, dtype, lr);
    reference.run("p.yaml", &["--target", "train"]).success();
    let want = adapter_digest(&reference);

    let t = project_with(steps, 1, dtype, lr);
    // Kill at a step that varies from run to run.
    let kill_at = 5 + (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() % 25) as u64;
    let mut child =
        t.std_cmd(["run", "p.yaml", "--target", "train", "--json"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let work = t.cache.join("work");
    let start = Instant::now();
    let mut killed_at = None;
    while start.elapsed() < Duration::from_secs(120) {
        let newest = std::fs::read_dir(&work)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|k| std::fs::read_dir(k.path()).into_iter().flatten().flatten())
            .filter_map(|c| c.file_name().to_str()?.strip_prefix("checkpoint-")?.parse::<u64>().ok())
            .max();
        if newest.is_some_and(|n| n >= kill_at) {
            child.kill().unwrap();
            killed_at = newest;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.wait();
    let killed_at = killed_at.unwrap_or_else(|| panic!("training finished before step {kill_at}; make it slower"));
    assert!(killed_at < steps as u64);
    // `pipe status --why` says the next run resumes, and from which step.
    let status = t.pipe(["status", "p.yaml", "--why"]).success();
    let point = status
        .stdout
        .split("resumes from the checkpoint at step ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("status does not say train resumes:\n{}", status.stdout));
    assert!(point >= killed_at, "{point} < {killed_at}");
    // The rerun resumes: its Running line, its first progress line and its summary say so, and it
    // ends with the same bytes.
    let r = t.run("p.yaml", &["--target", "train"]).success();
    let started = r.events_of("node_started").into_iter().find(|e| e["node"] == "train").expect("train started");
    let said = format!("resumes from the checkpoint at step {point}");
    assert!(started["reasons"].as_array().unwrap().iter().any(|x| x.as_str().unwrap().starts_with(&said)), "{started}");
    let first = r.events_of("node_progress").into_iter().find(|e| e["node"] == "train").expect("train progress");
    assert_eq!(
        (first["done"].as_u64(), first["message"].as_str()),
        (Some(point), Some(format!("resuming from the checkpoint at step {point}").as_str()))
    );
    let summary = r.events_of("node_finished").into_iter().find(|e| e["node"] == "train").expect("train ran")["summary"].clone();
    assert!(summary.as_str().unwrap().contains(&format!("resumed at step {point}")), "{summary}");
    assert_eq!(
        adapter_digest(&t),
        want,
        "{dtype}: killed at step {killed_at}, resumed: adapter differs from an uninterrupted run"
    );
}

#[test]
fn merge_without_an_adapter_converts_the_base_unchanged() {
    let t = TestContext::with_fixtures();
    tiny_model(&t, "model", Arch::Qwen2, 32);
    t.write("p.yaml", "name: convert\nnodes:\n  hf:\n    kind: merge\n    inputs: { model: model }\n");
    let r = t.run("p.yaml", &[]).success();
    let summary = r.events_of("node_finished")[0]["summary"].as_str().unwrap().to_string();
    assert!(summary.contains("converted"), "{summary}");
    let out = t.output_path("p.yaml", "hf", "model", &[]);
    let a = pipe::model::load::load(&t.path("model"), &Device::Cpu).unwrap();
    let b = pipe::model::load::load(&out, &Device::Cpu).unwrap();
    assert_eq!(a.cfg, b.cfg);
    for ((na, ta), (nb, tb)) in a.hf_tensors().iter().zip(b.hf_tensors().iter()) {
        assert_eq!(na, nb);
        let d = (ta - tb).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0, "{na} changed in conversion");
    }
}

#[test]
fn a_random_model_of_a_preset_shape_trains_merges_and_evaluates_end_to_end() {
    let t = TestContext::with_fixtures();
    t.copy_tokenizer();
    t.write("prompts.txt", "What does my future hold?\n");
    let yaml = r#"name: random
nodes:
  base:
    kind: random-model
    inputs: { tokenizer: tok/tokenizer.json }
    params: { shape: tiny, layers: 3, vocab: 1024, seed: 5, dtype: bf16 }
  fix: { kind: fix-json, inputs: { records: data/fortune.jsonl }, params: { eval_fraction: 0.1 } }
  tok: { kind: tokenize, inputs: { records: fix.train, tokenizer: base.model }, params: { max_length: 64 } }
  tok-eval: { kind: tokenize, inputs: { records: fix.eval, tokenizer: base.model }, params: { max_length: 64 } }
  train:
    kind: lora-train
    inputs: { model: base.model, dataset: tok.dataset }
    params: { max_steps: 3, batch_size: 2, grad_accum: 1, r: 4, dtype: bf16, logging_steps: 1 }
  merge: { kind: merge, inputs: { model: base.model, adapter: train.adapter } }
  eval:
    kind: eval
    inputs: { base: base.model, tuned: merge.model, dataset: tok-eval.dataset, prompts: prompts.txt }
    params: { max_new_tokens: 4 }
"#;
    t.write("p.yaml", yaml);
    t.run("p.yaml", &[]).success();
    let folder = t.output_path("p.yaml", "base", "model", &[]);
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(folder.join("config.json")).unwrap()).unwrap();
    assert_eq!((cfg["num_hidden_layers"].as_u64(), cfg["vocab_size"].as_u64()), (Some(3), Some(1024)));
    assert_eq!(cfg["torch_dtype"], "bfloat16");
    let tensors = candle_core::safetensors::load(folder.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(tensors.values().all(|x| x.dtype() == candle_core::DType::BF16));
    assert!(folder.join("tokenizer.json").exists());
    // The same parameters give the same bytes: the node is deterministic, so verify passes.
    t.pipe(["verify", "p.yaml", "base"]).success();
    // A tokenizer with more tokens than the model's vocabulary is a clear error naming the fix.
    t.write("q.yaml", yaml.replace("vocab: 1024", "vocab: 100"));
    let out = t.run("q.yaml", &["--target", "base"]).code(1);
    assert!(out.stderr.contains("more than the model's vocabulary of 100"), "{}", out.stderr);
}

/// Qwen3 (per-head q/k norms, heads x head size twice the hidden size) end to end from a
/// random model of the `tiny-qwen3` shape: LoRA training lowers the loss, the merged folder is a
/// Qwen3 one with its norms, and the GGUF export passes the gate (llama.cpp's greedy decoding
/// too, when llama.cpp is there).
#[test]
fn a_random_qwen3_trains_merges_and_exports_through_the_gate() {
    let t = TestContext::with_fixtures();
    t.write("prompts.txt", "What does my future hold?\nTell me about the stars.\n");
    let yaml = r#"name: qwen3
nodes:
  base:
    kind: random-model
    inputs: { tokenizer: tok/tokenizer.json }
    params: { shape: tiny-qwen3, vocab: 1024, seed: 3, std: 0.2, dtype: f32 }
  fix: { kind: fix-json, inputs: { records: data/fortune.jsonl }, params: { eval_fraction: 0.1 } }
  tok: { kind: tokenize, inputs: { records: fix.train, tokenizer: base.model }, params: { max_length: 64 } }
  train:
    kind: lora-train
    inputs: { model: base.model, dataset: tok.dataset }
    params: { max_steps: 8, batch_size: 4, grad_accum: 1, lr: 0.02, r: 4, logging_steps: 1, save_steps: 0 }
  merge: { kind: merge, inputs: { model: base.model, adapter: train.adapter } }
  export:
    kind: export-gguf
    inputs: { model: merge.model, prompts: prompts.txt }
    params: { pre: gpt-2, format: chat_template, type: F16 }
"#;
    t.write("p.yaml", yaml);
    t.run("p.yaml", &[]).success();
    let (first, last) = first_and_last_loss(&train_log(&t));
    assert!(last < first, "the loss goes down: {first} -> {last}");
    let merged = t.output_path("p.yaml", "merge", "model", &[]);
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(merged.join("config.json")).unwrap()).unwrap();
    assert_eq!((cfg["model_type"].as_str(), cfg["architectures"][0].as_str()), (Some("qwen3"), Some("Qwen3ForCausalLM")));
    assert_eq!(
        (cfg["head_dim"].as_u64(), cfg["hidden_size"].as_u64(), cfg["attention_bias"].as_bool()),
        (Some(32), Some(64), Some(false))
    );
    let tensors = candle_core::safetensors::load(merged.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(tensors["model.layers.1.self_attn.k_norm.weight"].dims(), &[32]);
    assert!(!tensors.contains_key("model.layers.0.self_attn.q_proj.bias"));
    let base = pipe::model::load::load(&t.output_path("p.yaml", "base", "model", &[]), &Device::Cpu).unwrap();
    let tuned = pipe::model::load::load(&merged, &Device::Cpu).unwrap();
    assert_eq!(base.cfg, tuned.cfg);
    let report_dir = t.output_path("p.yaml", "export", "report", &[]);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(report_dir.join("report.json")).unwrap()).unwrap();
    let status = |name: &str| {
        report["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).map(|c| c["status"].as_str().unwrap().to_string())
    };
    for c in ["metadata", "tensors", "tokenizer"] {
        assert_eq!(status(c).as_deref(), Some("pass"), "{c}: {report:#}");
    }
    if std::env::var_os("PIPE_REQUIRE_LLAMA_CPP").is_some() {
        assert_eq!(status("llama.cpp tokenizer").as_deref(), Some("pass"), "{report:#}");
        assert_eq!(status("llama.cpp greedy").as_deref(), Some("pass"), "{report:#}");
    }
}

#[test]
fn the_full_size_pipeline_validates_and_a_cpu_build_refuses_its_gpu_nodes_before_running() {
    let t = TestContext::new();
    let file = crate::common::repo().join("pipelines/fortune-7b.yaml");
    let file = file.to_str().unwrap();
    let status = t.pipe(["status", file]).success();
    assert!(status.stdout.contains("7 of 7 nodes would run"), "{}", status.stdout);
    for (node, kind) in [("base", "random-model"), ("train", "lora-train"), ("merge", "merge"), ("eval", "eval")] {
        assert!(status.stdout.contains(&format!("({kind})")) && status.stdout.contains(node), "{}", status.stdout);
    }
    if !cfg!(feature = "cuda") {
        let out = t.pipe(["run", file]).code(2);
        assert!(out.stderr.contains("`device: cuda`"), "{}", out.stderr);
        assert!(t.cache_listing().iter().all(|p| !p.contains("objects/")), "nothing ran: {:?}", t.cache_listing());
    }
}

/// Writes pipe's own seeded init (r, alpha 32, all targets, seed 42: the node's defaults) for
/// the project's model as a peft adapter folder at `rel`.
fn write_seeded_init(t: &TestContext, rel: &str, r: usize) {
    use pipe::model::lora::{Layout, Module};
    let model = pipe::model::load::load(&t.path("model"), &Device::Cpu).expect("tiny model loads");
    let layout = Layout::new(&model.cfg, r, 32.0, &Module::ALL);
    pipe::model::peft::write_adapter(&t.path(rel), &layout, &layout.init(42), 32.0, 0.1, &Module::ALL, "model").unwrap();
}

#[test]
fn training_from_an_init_adapter_equal_to_the_seeded_init_gives_the_same_adapter() {
    let t = project(2, 0);
    t.run("p.yaml", &[]).success();
    let seeded = adapter_digest(&t);
    write_seeded_init(&t, "init", 4);
    let yaml = t
        .read("p.yaml")
        .replace("inputs: { model: model, dataset: tok.dataset }", "inputs: { model: model, dataset: tok.dataset, init: init }");
    t.write("p.yaml", yaml);
    let out = t.run("p.yaml", &[]).success();
    assert!(out.stdout.contains("\"train\""), "{}", out.stdout);
    assert_eq!(adapter_digest(&t), seeded, "starting from the seeded init as an adapter must train the same adapter");
    // A different r is a clear error naming the mismatch.
    write_seeded_init(&t, "init", 2);
    let out = t.run("p.yaml", &[]).code(1);
    assert!(out.stderr.contains("has r 2, but training has r 4"), "{}", out.stderr);
}

/// scripts/peft_train_parity.py on the tiny model in f32 on the CPU: pipe and peft, from the same
/// weights, LoRA init and batches, follow the same loss curve within 1e-4 (relative) over 50
/// steps, and pipe's adapter gives peft's logits. Needs a Python with torch, transformers and peft
/// (`PIPE_TORCH_PYTHON`, else `python3`); skipped without one unless `PIPE_REQUIRE_TORCH=1`.
#[test]
fn pipe_and_peft_follow_the_same_loss_curve_from_the_same_init() {
    let python = std::env::var("PIPE_TORCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let has = std::process::Command::new(&python)
        .args(["-c", "import torch, transformers, peft"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has {
        assert!(
            std::env::var("PIPE_REQUIRE_TORCH").as_deref() != Ok("1"),
            "PIPE_REQUIRE_TORCH=1 but `{python}` cannot import torch, transformers and peft"
        );
        eprintln!("SKIPPED: `{python}` cannot import torch, transformers and peft (set PIPE_TORCH_PYTHON; PIPE_REQUIRE_TORCH=1 makes this a failure)");
        return;
    }
    let out = std::process::Command::new(&python)
        .arg(crate::common::repo().join("scripts/peft_train_parity.py"))
        .args(["--pipe", crate::common::PIPE, "--device", "cpu", "--dtype", "f32", "--shape", "tiny", "--steps", "50"])
        .args(["--curve-tol", "1e-4"])
        .output()
        .expect("python runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "parity failed:\n{stdout}\n{stderr}");
    let line = stdout.lines().find(|l| l.starts_with("{\"parity\"")).expect("a summary line");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let curve = v["parity"]["curve_rel"].as_f64().unwrap();
    assert!(curve <= 1e-4, "loss curves differ by {curve:e}:\n{stdout}");
    eprintln!("{stdout}");
}
