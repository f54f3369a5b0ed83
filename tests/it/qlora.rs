//! lora-train's `base_quant` (QLoRA) through the `pipe` binary, on a tiny random model: an NF4
//! base trains, the adapter says what it trained over, merge puts it onto the dequantized base,
//! the setting is part of the key (and `none` written out changes no key), and a setting that
//! cannot apply is a clear error before any training.

use candle_core::Device;
use pipe::model::base_quant::BaseQuant;
use pipe::model::config::Arch;
use pipe::model::{load, peft};

use crate::common::TestContext;
use crate::training::tiny_model;

fn pipeline(quant: Option<&str>) -> String {
    let quant = quant.map(|q| format!(", base_quant: {q}")).unwrap_or_default();
    format!(
        r#"name: qlora
nodes:
  fix:
    kind: fix-json
    inputs: {{ records: data/fortune.jsonl }}
  tok:
    kind: tokenize
    inputs: {{ records: fix.records, tokenizer: model }}
    params: {{ max_length: 64 }}
  train:
    kind: lora-train
    inputs: {{ model: model, dataset: tok.dataset }}
    params: {{ max_steps: 16, batch_size: 4, grad_accum: 2, lr: 0.05, save_steps: 0, logging_steps: 1, r: 4{quant} }}
  merge:
    kind: merge
    inputs: {{ model: model, adapter: train.adapter }}
"#
    )
}

fn project(quant: Option<&str>) -> TestContext {
    let t = TestContext::with_fixtures();
    tiny_model(&t, "model", Arch::Llama, 32);
    t.write("p.yaml", pipeline(quant));
    t
}

/// Mean of the first three and of the last three logged losses.
fn first_and_last(l: &[f64]) -> (f64, f64) {
    (l[..3].iter().sum::<f64>() / 3.0, l[l.len() - 3..].iter().sum::<f64>() / 3.0)
}

fn losses(t: &TestContext) -> Vec<f64> {
    let log = std::fs::read_to_string(t.output_path("p.yaml", "train", "log", &[])).unwrap();
    log.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap()).collect()
}

#[test]
fn an_nf4_base_trains_and_its_adapter_merges_onto_the_dequantized_base() {
    let t = project(Some("nf4"));
    t.run("p.yaml", &["--target", "merge"]).success();
    let l = losses(&t);
    assert_eq!(l.len(), 16);
    let (first, last) = first_and_last(&l);
    assert!(last < first - 0.2, "training over an NF4 base lowers the loss: {l:?}");

    // The adapter is peft's (same files and tensor names as without base_quant) plus the note.
    let adapter = t.output_path("p.yaml", "train", "adapter", &[]);
    assert_eq!(peft::read_base_quant(&adapter).unwrap(), BaseQuant::Nf4);
    let dense = project(None);
    dense.run("p.yaml", &["--target", "train"]).success();
    let dense_adapter = dense.output_path("p.yaml", "train", "adapter", &[]);
    assert_eq!(peft::read_base_quant(&dense_adapter).unwrap(), BaseQuant::None);
    assert!(!dense_adapter.join(peft::BASE_QUANT_FILE).exists(), "no note without base_quant");
    let names = |d: &std::path::Path| {
        let mut n: Vec<String> =
            candle_core::safetensors::load(d.join("adapter_model.safetensors"), &Device::Cpu).unwrap().into_keys().collect();
        n.sort();
        n
    };
    assert_eq!(names(&adapter), names(&dense_adapter));
    // Quantization moved the loss curve, a little.
    let d = losses(&dense);
    assert_ne!(l, d);
    let (d_first, d_last) = first_and_last(&d);
    assert!((first - d_first).abs() < 0.03 * d_first, "NF4 starts at {first:.4}, dense at {d_first:.4}");
    assert!((last - d_last).abs() < 0.05 * d_last, "NF4 ends at {last:.4}, dense at {d_last:.4}");

    // merge: the base through the same quantizer, dequantized, plus the adapter's delta.
    let merged = load::load(&t.output_path("p.yaml", "merge", "model", &[]), &Device::Cpu).unwrap();
    let mut want = load::load(&t.path("model"), &Device::Cpu).unwrap();
    want.quantize_base(BaseQuant::Nf4).unwrap();
    want.dequantize_base().unwrap();
    let (layout, params) = peft::read_adapter(&adapter, &want.cfg).unwrap();
    want.merge_lora(&layout, &params).unwrap();
    let mut onto_dense = load::load(&t.path("model"), &Device::Cpu).unwrap();
    onto_dense.merge_lora(&layout, &params).unwrap();
    let flat = |m: &pipe::model::llama::Model| -> Vec<Vec<f32>> {
        m.hf_tensors().into_iter().map(|(_, x)| x.flatten_all().unwrap().to_vec1().unwrap()).collect()
    };
    assert_eq!(flat(&merged), flat(&want), "merged onto the dequantized NF4 base");
    assert_ne!(flat(&merged), flat(&onto_dense));

    // The setting is in the key, and `status --why` names it.
    let (a, b) = (t.show("p.yaml", "train", &[]), dense.show("p.yaml", "train", &[]));
    assert_eq!(a["params"]["base_quant"].as_str(), Some("nf4"));
    assert_ne!(a["record"]["key"], b["record"]["key"]);
    t.write("p.yaml", pipeline(Some("q8_0")));
    let why = t.pipe(["status", "p.yaml", "--why"]).success();
    assert!(why.stderr.contains("base_quant") || why.stdout.contains("base_quant"), "{why:?}");
    // `none` written out is today's key: runs from before the param stay cached.
    dense.write("p.yaml", pipeline(Some("none")));
    let again = dense.run("p.yaml", &["--target", "train"]).success();
    assert_eq!(again.ran_nodes(), Vec::<String>::new(), "{again:?}");
}

#[test]
fn q8_0_and_q4_k_bases_train_and_gguf_on_a_folder_is_refused_before_training() {
    for q in ["q8_0", "q4_k"] {
        let t = project(Some(q));
        t.run("p.yaml", &["--target", "train"]).success();
        let l = losses(&t);
        let (first, last) = first_and_last(&l);
        assert!(last < first - 0.2, "{q}: {l:?}");
        let adapter = t.output_path("p.yaml", "train", "adapter", &[]);
        assert_eq!(peft::read_base_quant(&adapter).unwrap().name(), q);
    }
    let t = project(Some("gguf"));
    let r = t.run("p.yaml", &["--target", "train"]).code(1);
    assert!(r.stderr.contains("keeps a GGUF file's own blocks, and this is a Hugging Face folder"), "{r:?}");
    assert_eq!(r.failed_nodes(), vec!["train".to_string()]);
    let bad = project(Some("nf3"));
    let r = bad.run("p.yaml", &[]).code(2);
    assert!(r.stderr.contains("base_quant"), "{r:?}");
}
