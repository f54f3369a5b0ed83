//! export-gguf on a tiny random model the tests make: every file type passes the gate, the file
//! reads back in the Python `gguf` package, the Modelfile names the stop tokens, the streamed
//! export (gate off) writes the gated export's bytes, and bad inputs fail with clear errors. With llama.cpp available (`PIPE_LLAMA_CPP`, set by scripts/test.sh),
//! the gate's llama.cpp checks must pass too.

use pipe::model::config::Arch;
use serde_json::Value;

use crate::common::TestContext;
use crate::training::tiny_model;

/// Hidden size 256, so rows are whole K-quant super-blocks and Q4_K/Q6_K are really used.
const HIDDEN: usize = 256;

fn pipeline(params: &str) -> String {
    format!(
        r#"name: tiny-export
nodes:
  export:
    kind: export-gguf
    inputs: {{ model: model, prompts: prompts.txt }}
    params: {{ pre: gpt-2, format: chat_template{params} }}
"#
    )
}

fn project(arch: Arch, params: &str) -> TestContext {
    let t = TestContext::new();
    tiny_model(&t, "model", arch, HIDDEN);
    t.write("prompts.txt", "现在你要扮演我碰到一位神秘的算命大师, 你是谁?\nWhat does my future hold?\n");
    t.write("p.yaml", pipeline(params));
    t
}

fn llama_cpp_required() -> bool {
    std::env::var_os("PIPE_REQUIRE_LLAMA_CPP").is_some()
}

fn report(t: &TestContext, extra: &[&str]) -> Value {
    let dir = t.output_path("p.yaml", "export", "report", extra);
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap()
}

fn status<'a>(r: &'a Value, check: &str) -> &'a str {
    r["checks"].as_array().unwrap().iter().find(|c| c["name"] == check).map(|c| c["status"].as_str().unwrap()).unwrap_or("absent")
}

#[test]
fn every_file_type_exports_and_passes_the_gate() {
    let t = project(Arch::Llama, "");
    for ty in ["F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_0", "Q4_K_M", "Q4_0", "Q4_1"] {
        let set = format!("export.type={ty}");
        let extra = ["--set", set.as_str()];
        t.run("p.yaml", &extra).success();
        let r = report(&t, &extra);
        assert_eq!(r["type"], ty);
        for c in ["metadata", "tensors", "tokenizer"] {
            assert_eq!(status(&r, c), "pass", "{ty}: {c}: {r:#}");
        }
        if llama_cpp_required() {
            assert_eq!(status(&r, "llama.cpp tokenizer"), "pass", "{ty}: {r:#}");
            let greedy = if matches!(ty, "F32" | "F16" | "BF16" | "Q8_0") { "pass" } else { "skipped" };
            assert_eq!(status(&r, "llama.cpp greedy"), greedy, "{ty}: {r:#}");
        }
    }
    // Q4_K_M really mixes types on 256-wide rows: Q4_K with Q6_K for output-side tensors.
    let r = report(&t, &["--set", "export.type=Q4_K_M"]);
    let types = r["tensor_types"].as_object().unwrap();
    assert!(types.contains_key("q4_K") && types.contains_key("q6_K") && types.contains_key("f32"), "{types:?}");
}

#[test]
fn qwen2_exports_with_biases_and_passes_the_gate() {
    let t = project(Arch::Qwen2, ", type: F16");
    t.run("p.yaml", &[]).success();
    let r = report(&t, &[]);
    for c in ["metadata", "tensors", "tokenizer"] {
        assert_eq!(status(&r, c), "pass", "{c}: {r:#}");
    }
    if llama_cpp_required() {
        assert_eq!(status(&r, "llama.cpp greedy"), "pass", "{r:#}");
    }
}

/// For every architecture: the numpy forward pass of scripts/reference_forward.py (float64,
/// llama.cpp's own RoPE modes and tensor names, written independently of pipe) over the F32
/// export gives pipe's logits, both pipe's forward over the file and over the source folder.
#[test]
fn the_numpy_reference_forward_matches_pipe_on_every_architectures_export() {
    let ids: Vec<u32> = vec![5, 17, 2, 99, 40, 7, 301, 12];
    for arch in Arch::ALL {
        let t = project(arch, ", type: F32");
        t.run("p.yaml", &[]).success();
        let gguf = t.output_path("p.yaml", "export", "model", &[]).join("model.gguf");
        let out = t.path("reference.json");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/reference_forward.py");
        let ids_arg = ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        let status = std::process::Command::new("python3")
            .arg(script)
            .arg("--gguf")
            .arg(&gguf)
            .args(["--ids", &ids_arg, "--out"])
            .arg(&out)
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => {
                assert!(std::env::var_os("PIPE_REQUIRE_PYTHON").is_none(), "python3 with gguf and numpy is required: {other:?}");
                eprintln!("skipping: python3 with gguf and numpy is not available");
                return;
            }
        }
        let r: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        let want: Vec<f32> = r["last_logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        for (what, path) in [("the export", gguf.clone()), ("the source folder", t.path("model"))] {
            let model = pipe::model::load::load(&path, &candle_core::Device::Cpu).unwrap();
            let logits = model.forward_infer(&ids, &mut pipe::model::llama::KvCache::new(model.cfg.num_layers)).unwrap();
            let got: Vec<f32> = logits.get(ids.len() - 1).unwrap().to_vec1().unwrap();
            assert_eq!(got.len(), want.len());
            let max_diff = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(max_diff / scale < 1e-4, "{arch:?}, {what}: max |diff| {max_diff} vs max |logit| {scale}");
        }
    }
}

#[test]
fn the_python_gguf_package_reads_the_export() {
    let t = project(Arch::Llama, ", type: Q4_K_M");
    t.run("p.yaml", &[]).success();
    let gguf = t.output_path("p.yaml", "export", "model", &[]).join("model.gguf");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gguf_summary.py");
    let out = std::process::Command::new("python3").arg(script).arg(&gguf).output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        other => {
            assert!(std::env::var_os("PIPE_REQUIRE_PYTHON").is_none(), "python3 with `gguf` is required: {other:?}");
            eprintln!("skipping: python3 with the `gguf` package is not available");
            return;
        }
    };
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let meta = &v["metadata"];
    assert_eq!(meta["general.architecture"], "llama");
    assert_eq!(meta["general.file_type"], 15, "LLAMA_FTYPE_MOSTLY_Q4_K_M");
    assert_eq!(meta["llama.embedding_length"], HIDDEN);
    assert_eq!(meta["llama.block_count"], 2);
    assert_eq!(meta["tokenizer.ggml.model"], "gpt2");
    assert_eq!(meta["tokenizer.ggml.pre"], "gpt-2");
    assert_eq!(meta["tokenizer.ggml.eos_token_id"], 2);
    assert!(meta["tokenizer.chat_template"].as_str().unwrap().contains("<|im_start|>"));
    let tensors = v["tensors"].as_object().unwrap();
    assert_eq!(tensors["token_embd.weight"]["shape"], serde_json::json!([HIDDEN, 1000]), "GGUF order: innermost first");
    assert_eq!(tensors["blk.0.attn_norm.weight"]["type"], "F32");
    assert_eq!(tensors["blk.0.attn_q.weight"]["type"], "Q4_K");
    assert!(!tensors.contains_key("output.weight"), "tied embeddings are written once");
}

#[test]
fn the_modelfile_has_the_template_and_every_stop_token() {
    let t = project(Arch::Llama, ", type: F16, system: You are a fortune teller.");
    t.run("p.yaml", &[]).success();
    let mf = std::fs::read_to_string(t.output_path("p.yaml", "export", "model", &[]).join("Modelfile")).unwrap();
    assert!(mf.starts_with("FROM ./model.gguf\n"), "{mf}");
    assert!(mf.contains("TEMPLATE"), "{mf}");
    assert!(mf.contains("<|im_start|>"), "{mf}");
    assert!(mf.contains("PARAMETER stop <|im_end|>\n"), "{mf}");
    assert!(mf.contains("PARAMETER stop <|endoftext|>\n"), "{mf}");
    assert!(mf.contains("SYSTEM"), "{mf}");
    assert!(mf.contains("You are a fortune teller."), "{mf}");
}

#[test]
fn the_seed_format_becomes_the_gguf_chat_template() {
    let t = project(Arch::Llama, ", type: F16");
    t.write("p.yaml", pipeline(", type: F16").replace("format: chat_template", "format: seed"));
    t.run("p.yaml", &[]).success();
    let mf = std::fs::read_to_string(t.output_path("p.yaml", "export", "model", &[]).join("Modelfile")).unwrap();
    assert!(mf.contains("User: "), "{mf}");
    assert!(mf.contains("Assistant: "), "{mf}");
}

#[test]
fn without_the_gate_a_folder_streams_to_the_file_the_gated_export_writes() {
    let t = project(Arch::Llama, "");
    for ty in ["F32", "F16", "Q8_0", "Q4_K_M"] {
        let set = format!("export.type={ty}");
        let gated = ["--set", set.as_str()];
        let streamed = ["--set", set.as_str(), "--set", "export.verify=false"];
        t.run("p.yaml", &gated).success();
        t.run("p.yaml", &streamed).success();
        let file = |extra: &[&str]| std::fs::read(t.output_path("p.yaml", "export", "model", extra).join("model.gguf")).unwrap();
        assert!(file(&gated) == file(&streamed), "{ty}: the streamed export differs from the loaded model's");
    }
}

#[test]
fn an_unknown_pre_tokenizer_is_a_clear_error() {
    let t = project(Arch::Llama, "");
    t.write("p.yaml", pipeline("").replace("pre: gpt-2, ", ""));
    let r = t.run("p.yaml", &[]).code(1);
    assert!(r.stderr.contains("pre-tokenizer"), "{}", r.stderr);
    assert!(r.stderr.contains("`pre`"), "the error says how to override: {}", r.stderr);
}

#[test]
fn a_model_without_a_tokenizer_is_a_clear_error() {
    let t = project(Arch::Llama, "");
    std::fs::remove_file(t.path("model/tokenizer.json")).unwrap();
    let r = t.run("p.yaml", &[]).code(1);
    assert!(r.stderr.contains("tokenizer.json"), "{}", r.stderr);
}

#[test]
fn an_unknown_architecture_is_a_clear_error() {
    let t = project(Arch::Llama, "");
    let cfg = t.read("model/config.json").replace("\"llama\"", "\"gpt_neox\"");
    t.write("model/config.json", cfg);
    let r = t.run("p.yaml", &[]).code(1);
    assert!(r.stderr.contains("gpt_neox"), "{}", r.stderr);
}
