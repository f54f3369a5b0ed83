//! `tokenize`: the dataset it writes, checked against an independent Python reference
//! (`scripts/tokenize_reference.py`) for the tutorial's `seed` format, the chat-template masks,
//! and records whose prompt leaves no room for the answer.

use std::path::Path;

use pipe::dataset::TokenDataset;
use serde_json::{json, Value};

use crate::common::{python_with_tokenizers, repo, TestContext, FORTUNE};

fn dataset(t: &TestContext, file: &str, node: &str) -> TokenDataset {
    TokenDataset::read(&t.output_path(file, node, "dataset", &[])).expect("a valid dataset file")
}

fn tokenizer(t: &TestContext) -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_file(t.path("tok/tokenizer.json")).expect("tokenizer loads")
}

fn encode(tok: &tokenizers::Tokenizer, text: &str) -> Vec<u32> {
    tok.encode(text, false).expect("encodes").get_ids().to_vec()
}

#[test]
fn the_seed_format_matches_the_python_reference_for_every_record() {
    let Some(python) = python_with_tokenizers("the_seed_format_matches_the_python_reference_for_every_record") else {
        return;
    };
    let t = TestContext::with_fixtures();
    let max_length = 96;
    t.write("p.yaml", FORTUNE.replace("max_length: 64", &format!("max_length: {max_length}")));
    t.run("p.yaml", &[]).success();

    let stats = t.output_json("p.yaml", "tokenize", "stats", &[]);
    let (n, truncated) = (stats["records"].as_u64().unwrap(), stats["truncated_records"].as_u64().unwrap());
    assert_eq!(n, 334, "{stats:#}");
    assert!(truncated > 0 && truncated < n, "max_length should truncate some records but not all: {stats:#}");

    let records = t.output_path("p.yaml", "fix", "records", &[]);
    let out = std::process::Command::new(&python)
        .arg(repo().join("scripts/tokenize_reference.py"))
        .arg(t.path("tok/tokenizer.json"))
        .arg(&records)
        .arg(max_length.to_string())
        .output()
        .expect("python runs");
    assert!(out.status.success(), "reference failed: {}", String::from_utf8_lossy(&out.stderr));
    let reference: Vec<Value> = serde_json::from_slice(&out.stdout).expect("reference prints JSON");

    let ds = dataset(&t, "p.yaml", "tokenize");
    assert_eq!(ds.len(), reference.len());
    let input: Vec<Value> = serde_json::from_slice(&std::fs::read(&records).unwrap()).unwrap();
    for (r, want) in reference.iter().enumerate() {
        let (ids, labels) = ds.record(r);
        let want_ids: Vec<u32> = serde_json::from_value(want["ids"].clone()).unwrap();
        let want_labels: Vec<i64> = serde_json::from_value(want["labels"].clone()).unwrap();
        assert_eq!(ids, &want_ids[..], "ids of record {r}: {}", input[r]);
        assert_eq!(labels, want_labels, "labels of record {r}: {}", input[r]);
    }
}

/// ChatML, as `tests/data/tiny-tokenizer/tokenizer_config.json` has it.
fn chatml_prompt(system: Option<&str>, user: &str) -> String {
    let sys = system.map(|s| format!("<|im_start|>system\n{s}<|im_end|>\n")).unwrap_or_default();
    format!("{sys}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
}

fn chat_records(t: &TestContext) -> Vec<Value> {
    let records = vec![
        json!({"instruction": "你是谁?", "input": "", "output": "我是一位云游四方的算命大师。"}),
        json!({"instruction": "Will I be rich?", "input": " (born 1990)", "output": "The coins gather slowly, friend."}),
        json!({"instruction": "看看我的面相", "input": "", "output": "天庭饱满，地阁方圆，福气在后头。"}),
    ];
    t.write("data/records.json", serde_json::to_string(&records).unwrap());
    records
}

fn check_chat_masks(system: Option<&str>) {
    let t = TestContext::new();
    t.copy_tokenizer();
    let records = chat_records(&t);
    let sys = system.map(|s| format!("\n      system: \"{s}\"")).unwrap_or_default();
    t.write(
        "p.yaml",
        format!(
            "name: chat\nnodes:\n  tokenize:\n    kind: tokenize\n    inputs: {{ records: data/records.json, tokenizer: tok/tokenizer.json }}\n    params:\n      format: chat_template\n      max_length: 512{sys}\n"
        ),
    );
    t.run("p.yaml", &[]).success();
    let ds = dataset(&t, "p.yaml", "tokenize");
    let tok = tokenizer(&t);
    let eos = tok.token_to_id("<|im_end|>").unwrap();
    assert_eq!(ds.len(), records.len());
    for (r, rec) in records.iter().enumerate() {
        let user = format!("{}{}", rec["instruction"].as_str().unwrap(), rec["input"].as_str().unwrap());
        let prompt = encode(&tok, &chatml_prompt(system, &user));
        let answer = encode(&tok, &format!("{}<|im_end|>\n", rec["output"].as_str().unwrap()));
        let (ids, labels) = ds.record(r);
        let want: Vec<u32> = prompt.iter().chain(&answer).copied().collect();
        assert_eq!(ids, &want[..], "record {r}: ids are the rendered prompt then the rendered answer");
        let masked = labels.iter().take_while(|&&l| l == -100).count();
        assert_eq!(masked, prompt.len(), "record {r}: labels are -100 exactly on the prompt tokens");
        assert!(labels[masked..].iter().all(|&l| l != -100), "record {r}: every answer token is trained");
        let trained_eos = labels.iter().filter(|&&l| l == i64::from(eos)).count();
        assert_eq!(trained_eos, 1, "record {r}: the template's end token is not appended twice");
    }
}

#[test]
fn with_a_chat_template_labels_are_masked_exactly_on_the_rendered_prompt() {
    check_chat_masks(None);
}

#[test]
fn with_a_chat_template_and_a_system_prompt_the_system_turn_is_masked_too() {
    check_chat_masks(Some("You are a fortune teller."));
}

fn long_prompt_records(t: &TestContext) {
    let long = "Tell me everything about my future, every little detail. ".repeat(20);
    let records = json!([
        {"instruction": "hi", "input": "", "output": "hello there"},
        {"instruction": long, "input": "", "output": "too long"},
        {"instruction": "and you?", "input": "", "output": "fine"},
        {"instruction": "x", "input": long, "output": "too long as well"},
    ]);
    t.write("data/records.json", records.to_string());
}

const LONG: &str = "\
name: long
nodes:
  tokenize:
    kind: tokenize
    inputs: { records: data/records.json, tokenizer: tok/tokenizer.json }
    params:
      max_length: 24
";

#[test]
fn a_prompt_that_fills_max_length_fails_tokenize_with_a_count() {
    let t = TestContext::new();
    t.copy_tokenizer();
    long_prompt_records(&t);
    t.write("p.yaml", LONG);
    let r = t.run("p.yaml", &[]).code(1);
    assert_eq!(r.failed_nodes(), vec!["tokenize".to_string()]);
    assert!(r.stderr.contains("2 records would train on nothing"), "{r:?}");
    assert!(r.stderr.contains("records 2, 4"), "{r:?}");
    assert!(r.stderr.contains("on_empty: skip"), "{r:?}");
    assert!(t.node_records().is_empty());
}

#[test]
fn on_empty_skip_drops_such_records_and_counts_them_in_stats() {
    let t = TestContext::new();
    t.copy_tokenizer();
    long_prompt_records(&t);
    t.write("p.yaml", LONG.replace("max_length: 24", "max_length: 24\n      on_empty: skip"));
    t.run("p.yaml", &[]).success();
    let stats = t.output_json("p.yaml", "tokenize", "stats", &[]);
    assert_eq!(stats["skipped_empty"], 2, "{stats:#}");
    assert_eq!(stats["records"], 2, "{stats:#}");
    let ds = dataset(&t, "p.yaml", "tokenize");
    assert_eq!(ds.len(), 2);
    for r in 0..ds.len() {
        assert!(ds.record(r).1.iter().any(|&l| l != -100), "record {r} trains on something");
    }
}

#[test]
fn the_dataset_file_follows_the_documented_layout() {
    let t = TestContext::new();
    t.copy_tokenizer();
    chat_records(&t);
    t.write("p.yaml", LONG.replace("24", "256"));
    t.run("p.yaml", &[]).success();
    let path = t.output_path("p.yaml", "tokenize", "dataset", &[]);
    let bytes = std::fs::read(Path::new(&path)).unwrap();
    assert_eq!(&bytes[..8], b"PIPETOK\0");
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1);
    let n_rec = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    let n_tok = u64::from_le_bytes(bytes[24..32].try_into().unwrap()) as usize;
    assert_eq!(n_rec, 3);
    assert_eq!(bytes.len(), 32 + 8 * (n_rec + 1) + 5 * n_tok);
    let eos = tokenizer(&t).token_to_id("<|im_end|>").unwrap();
    let ds = dataset(&t, "p.yaml", "tokenize");
    for r in 0..n_rec {
        let (ids, labels) = ds.record(r);
        assert_eq!(*ids.last().unwrap(), eos, "seed records end with the end token");
        assert_eq!(*labels.last().unwrap(), i64::from(eos));
    }
}

#[test]
fn a_model_folder_works_as_the_tokenizer_and_gives_the_same_tokens() {
    let t = TestContext::new();
    t.copy_tokenizer();
    chat_records(&t);
    t.write("p.yaml", LONG.replace("24", "256"));
    t.write("q.yaml", LONG.replace("24", "256").replace("tok/tokenizer.json", "tok"));
    t.run("p.yaml", &[]).success();
    t.run("q.yaml", &[]).success();
    assert_eq!(dataset(&t, "p.yaml", "tokenize"), dataset(&t, "q.yaml", "tokenize"));
}

/// The location is 1-based, `fortune.jsonl:1:1` (serde_json's column 0 is not used as is).
#[test]
fn tokenize_on_json_lines_says_to_run_fix_json_first() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", "name: jl\nnodes:\n  tok:\n    kind: tokenize\n    inputs: { records: data/fortune.jsonl, tokenizer: tok/tokenizer.json }\n");
    let r = t.run("p.yaml", &[]).code(1);
    assert!(r.stderr.contains("expected a JSON array of records"), "{r:?}");
    assert!(r.stderr.contains("run the file through a fix-json node first"), "{r:?}");
    assert!(r.stderr.contains("fortune.jsonl:1:1:"), "a 1-based line:column: {r:?}");
}

#[test]
fn an_empty_records_file_gives_an_empty_dataset() {
    let t = TestContext::new();
    t.copy_tokenizer();
    t.write("data/empty.jsonl", "\n");
    t.write("p.yaml", "name: e\nnodes:\n  fix:\n    kind: fix-json\n    inputs: { records: data/empty.jsonl }\n  tok:\n    kind: tokenize\n    inputs: { records: fix.records, tokenizer: tok/tokenizer.json }\n");
    t.run("p.yaml", &[]).success();
    assert_eq!(dataset(&t, "p.yaml", "tok").len(), 0);
    let stats = t.output_json("p.yaml", "tok", "stats", &[]);
    assert_eq!((stats["records"].as_u64(), stats["tokens"].as_u64()), (Some(0), Some(0)), "{stats:#}");
}
