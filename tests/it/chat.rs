//! Conversation datasets: `schema: messages | sharegpt` through fix-json and tokenize, checked
//! against transformers' `apply_chat_template(..., return_assistant_tokens_mask=True)`
//! (`scripts/chat_reference.py`); the same records as ShareGPT, CSV and Parquet (written by
//! pyarrow); `train_on`; located errors for bad conversations, bad CSV rows and bad Parquet
//! files; truncation counts.

use pipe::dataset::TokenDataset;
use serde_json::{json, Value};

use crate::common::{repo, TestContext};

/// ChatML with transformers' generation markers around each assistant turn.
const CHATML_GENERATION: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' + '\\n' }}{% endgeneration %}{% else %}{{ message['content'] + '<|im_end|>' + '\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// A project with the tiny tokenizer whose chat template has generation markers.
fn project() -> TestContext {
    let t = TestContext::new();
    t.copy_tokenizer();
    let mut config: Value = serde_json::from_str(&t.read("tok/tokenizer_config.json")).unwrap();
    config["chat_template"] = json!(CHATML_GENERATION);
    t.write("tok/tokenizer_config.json", serde_json::to_string_pretty(&config).unwrap());
    t
}

/// 48 conversations: 1 to 3 exchanges, Chinese and English, some with a system message, some
/// with a tool message, some with empty or multi-line answers.
fn conversations() -> Vec<Vec<(&'static str, String)>> {
    let questions =
        ["你是谁?", "Will I be rich next year?", "看看我的面相", "What about love, then?", "明年运势如何？", "Tell me\nmore."];
    let answers = [
        "我是一位云游四方的算命大师。",
        "The coins gather slowly, friend.",
        "天庭饱满，地阁方圆，福气在后头。",
        "",
        "Patience:\n  it comes in spring.",
        "财运亨通, and a long road.",
    ];
    (0..48)
        .map(|i| {
            let mut c = Vec::new();
            if i % 3 == 0 {
                c.push(("system", format!("You are fortune teller #{i}.")));
            }
            for k in 0..(1 + i % 3) {
                c.push(("user", format!("{} ({i}.{k})", questions[(i + k) % questions.len()])));
                if i % 7 == 1 && k == 0 {
                    c.push(("tool", "{\"stars\": \"aligned\"}".to_string()));
                }
                c.push(("assistant", answers[(i * 5 + k) % answers.len()].to_string()));
            }
            c
        })
        .collect()
}

fn messages_jsonl(convs: &[Vec<(&str, String)>]) -> String {
    convs
        .iter()
        .map(|c| {
            let msgs: Vec<Value> = c.iter().map(|(r, t)| json!({"role": r, "content": t})).collect();
            format!("{}\n", json!({ "messages": msgs }))
        })
        .collect()
}

/// The conversations as ShareGPT JSON Lines, without their tool messages (ShareGPT has no tool
/// role): human / gpt / system turns.
fn sharegpt_jsonl(convs: &[Vec<(&str, String)>]) -> String {
    let from = |r: &str| {
        match r {
            "user" => "human",
            "assistant" => "gpt",
            other => other,
        }
        .to_string()
    };
    convs
        .iter()
        .map(|c| {
            let turns: Vec<Value> =
                c.iter().filter(|(r, _)| *r != "tool").map(|(r, v)| json!({"from": from(r), "value": v})).collect();
            format!("{}\n", json!({ "id": "x", "conversations": turns }))
        })
        .collect()
}

const PIPELINE: &str = "\
name: chat
nodes:
  fix:
    kind: fix-json
    inputs: { records: data/chat.jsonl }
    params: { schema: messages, on_error: fail }
  tok:
    kind: tokenize
    inputs: { records: fix.records, tokenizer: tok }
    params: { schema: messages, format: chat_template, max_length: 4096 }
";

fn dataset(t: &TestContext, file: &str) -> TokenDataset {
    TokenDataset::read(&t.output_path(file, "tok", "dataset", &[])).expect("a valid dataset file")
}

fn dataset_bytes(t: &TestContext, file: &str) -> Vec<u8> {
    std::fs::read(t.output_path(file, "tok", "dataset", &[])).unwrap()
}

/// The interpreter when it can import `modules` (else skip, or fail under
/// `PIPE_REQUIRE_PYTHON=1`).
fn python_with(modules: &str, test: &str) -> Option<String> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let ok =
        std::process::Command::new(&python).args(["-c", &format!("import {modules}")]).output().is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    if std::env::var("PIPE_REQUIRE_PYTHON").as_deref() == Ok("1") {
        panic!("{test}: PIPE_REQUIRE_PYTHON=1 but `{python}` cannot import {modules} (scripts/test-requirements.txt)");
    }
    eprintln!("SKIPPED {test}: `{python}` cannot import {modules} (pip install -r scripts/test-requirements.txt)");
    None
}

/// Writes the JSON Lines file `jsonl` as the Parquet file `parquet` with pyarrow, which infers
/// the columns' types (a list of messages is `list<struct<role, content>>`); `json_text` lists
/// columns stored as JSON text instead.
fn to_parquet(python: &str, jsonl: &std::path::Path, parquet: &std::path::Path, compression: &str, json_text: &[&str]) {
    let script = r#"
import json, sys, pyarrow as pa, pyarrow.parquet as pq
rows = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
for col in sys.argv[4:]:
    for r in rows:
        r[col] = json.dumps(r[col], ensure_ascii=False)
pq.write_table(pa.Table.from_pylist(rows), sys.argv[2], compression=sys.argv[3], row_group_size=20)
"#;
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .arg(jsonl)
        .arg(parquet)
        .arg(compression)
        .args(json_text)
        .output()
        .expect("python runs");
    assert!(out.status.success(), "pyarrow: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn messages_match_transformers_assistant_masks_for_every_conversation() {
    let Some(python) = python_with("transformers, jinja2", "messages_match_transformers_assistant_masks_for_every_conversation")
    else {
        return;
    };
    let t = project();
    t.write("data/chat.jsonl", messages_jsonl(&conversations()));
    t.write("p.yaml", PIPELINE);
    t.run("p.yaml", &[]).success();
    let records = t.output_path("p.yaml", "fix", "records", &[]);
    let out = std::process::Command::new(&python)
        .arg(repo().join("scripts/chat_reference.py"))
        .arg(t.path("tok"))
        .arg(&records)
        .output()
        .expect("python runs");
    assert!(out.status.success(), "reference failed: {}", String::from_utf8_lossy(&out.stderr));
    let reference: Vec<Value> = serde_json::from_slice(&out.stdout).expect("reference prints JSON");
    let ds = dataset(&t, "p.yaml");
    assert_eq!(ds.len(), 48);
    assert_eq!(reference.len(), 48);
    let input: Vec<Value> = serde_json::from_slice(&std::fs::read(&records).unwrap()).unwrap();
    for (r, want) in reference.iter().enumerate() {
        let (ids, labels) = ds.record(r);
        let want_ids: Vec<u32> = serde_json::from_value(want["ids"].clone()).unwrap();
        let want_mask: Vec<u8> = serde_json::from_value(want["mask"].clone()).unwrap();
        assert_eq!(ids, &want_ids[..], "ids of conversation {r}: {}", input[r]);
        let mask: Vec<u8> = labels.iter().map(|&l| u8::from(l != -100)).collect();
        assert_eq!(mask, want_mask, "trained tokens of conversation {r}: {}", input[r]);
    }
    let stats = t.output_json("p.yaml", "tok", "stats", &[]);
    assert_eq!(stats["conversations"], json!({"schema": "messages", "train_on": "all_assistant", "cut": 0, "cut_to_nothing": 0}));
}

#[test]
fn sharegpt_and_csv_versions_give_byte_identical_datasets() {
    let t = project();
    let convs = conversations();
    t.write("data/chat.jsonl", messages_jsonl(&convs));
    t.write("p.yaml", PIPELINE);
    t.run("p.yaml", &[]).success();

    // ShareGPT has no tool role: the same conversations without their tool messages, both ways.
    let no_tool: Vec<Vec<(&str, String)>> =
        convs.iter().map(|c| c.iter().filter(|(r, _)| *r != "tool").cloned().collect()).collect();
    t.write("data/notool.jsonl", messages_jsonl(&no_tool));
    t.write("data/share.jsonl", sharegpt_jsonl(&convs));
    t.write("m.yaml", PIPELINE.replace("data/chat.jsonl", "data/notool.jsonl"));
    t.write("s.yaml", PIPELINE.replace("data/chat.jsonl", "data/share.jsonl").replace("schema: messages", "schema: sharegpt"));
    t.run("m.yaml", &[]).success();
    t.run("s.yaml", &[]).success();
    assert_eq!(dataset_bytes(&t, "s.yaml"), dataset_bytes(&t, "m.yaml"), "ShareGPT reads as the same messages");

    // CSV: an id column and the messages as JSON in a cell (quotes, commas and newlines inside).
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["id", "messages"]).unwrap();
    for (i, line) in messages_jsonl(&convs).lines().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        w.write_record([i.to_string(), v["messages"].to_string()]).unwrap();
    }
    t.write("data/chat.csv", w.into_inner().unwrap());
    t.write(
        "c.yaml",
        PIPELINE
            .replace("data/chat.jsonl", "data/chat.csv")
            .replace("{ schema: messages, on_error: fail }", "{ schema: messages, on_error: fail, input_format: csv }"),
    );
    t.run("c.yaml", &[]).success();
    assert_eq!(dataset_bytes(&t, "c.yaml"), dataset_bytes(&t, "p.yaml"), "CSV reads as the same records");
}

/// Parquet as pyarrow writes it (several row groups, each codec people meet): messages as
/// `list<struct>`, ShareGPT conversations, and messages stored as JSON text all read as the same
/// records as the JSON Lines file.
#[test]
fn parquet_versions_give_byte_identical_datasets() {
    let Some(python) = python_with("pyarrow", "parquet_versions_give_byte_identical_datasets") else {
        return;
    };
    let t = project();
    let convs = conversations();
    let with_id: String = messages_jsonl(&convs)
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l).unwrap();
            format!("{}\n", json!({"id": i, "messages": v["messages"]}))
        })
        .collect();
    t.write("data/chat.jsonl", &with_id);
    t.write("p.yaml", PIPELINE);
    t.run("p.yaml", &[]).success();
    let parquet =
        |name: &str| PIPELINE.replace("data/chat.jsonl", name).replace("on_error: fail", "on_error: fail, input_format: parquet");
    for (codec, json_text) in [("snappy", false), ("zstd", false), ("gzip", true), ("lz4", false), ("none", false)] {
        let file = format!("data/chat-{codec}.parquet");
        to_parquet(&python, &t.path("data/chat.jsonl"), &t.path(&file), codec, if json_text { &["messages"] } else { &[] });
        let yaml = format!("{codec}.yaml");
        t.write(&yaml, parquet(&file));
        t.run(&yaml, &[]).success();
        assert_eq!(
            dataset_bytes(&t, &yaml),
            dataset_bytes(&t, "p.yaml"),
            "Parquet ({codec}, JSON text {json_text}) reads as the same records"
        );
        let report = t.output_json(&yaml, "fix", "report", &[]);
        assert_eq!((report["records_written"].as_u64(), report["input_format"].as_str()), (Some(48), Some("parquet")));
    }
    // ShareGPT (no tool role), against its JSON Lines.
    t.write("data/share.jsonl", sharegpt_jsonl(&convs));
    to_parquet(&python, &t.path("data/share.jsonl"), &t.path("data/share.parquet"), "snappy", &[]);
    t.write("s.yaml", PIPELINE.replace("data/chat.jsonl", "data/share.jsonl").replace("schema: messages", "schema: sharegpt"));
    t.write("sp.yaml", parquet("data/share.parquet").replace("schema: messages", "schema: sharegpt"));
    t.run("s.yaml", &[]).success();
    t.run("sp.yaml", &[]).success();
    assert_eq!(dataset_bytes(&t, "sp.yaml"), dataset_bytes(&t, "s.yaml"), "ShareGPT Parquet reads as its JSON Lines");
}

/// A truncated Parquet file and a Parquet file read as JSON are clear errors; a column of the
/// wrong type and a non-string role are reported at their row and field.
#[test]
fn bad_parquet_files_and_rows_are_located_errors() {
    let Some(python) = python_with("pyarrow", "bad_parquet_files_and_rows_are_located_errors") else {
        return;
    };
    let t = project();
    let ok = r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#;
    t.write("data/chat.jsonl", [ok, ok].join("\n"));
    to_parquet(&python, &t.path("data/chat.jsonl"), &t.path("data/chat.parquet"), "snappy", &[]);
    let p = PIPELINE.replace("data/chat.jsonl", "data/chat.parquet");
    // Read as JSON: the error says what to set.
    t.write("p.yaml", &p);
    let r = t.run("p.yaml", &[]).code(1);
    assert!(r.stderr.contains("chat.parquet: this is a Parquet file; set `input_format: parquet`"), "{r:?}");
    // Truncated (a download cut short).
    let p = p.replace("on_error: fail", "on_error: fail, input_format: parquet");
    t.write("p.yaml", &p);
    let bytes = std::fs::read(t.path("data/chat.parquet")).unwrap();
    t.write("data/chat.parquet", &bytes[..bytes.len() - 10]);
    let r = t.run("p.yaml", &[]).code(1);
    assert!(r.stderr.contains("chat.parquet: not a Parquet file"), "{r:?}");
    // A messages column of numbers, and a role that is a number.
    t.write("data/nums.jsonl", "{\"messages\": 7}\n{\"messages\": 8}\n");
    to_parquet(&python, &t.path("data/nums.jsonl"), &t.path("data/chat.parquet"), "snappy", &[]);
    let r = t.run("p.yaml", &[]).code(1);
    assert!(r.stderr.contains("chat.parquet: row 1: field `messages` must be a list of messages"), "{r:?}");
    t.write("data/role.jsonl", [ok, r#"{"messages": [{"role": 1, "content": "q"}, {"role": 2, "content": "a"}]}"#].join("\n"));
    to_parquet(&python, &t.path("data/role.jsonl"), &t.path("data/role.parquet"), "snappy", &["messages"]);
    t.write("p.yaml", p.replace("chat.parquet", "role.parquet").replace("on_error: fail", "on_error: skip"));
    t.run("p.yaml", &[]).success();
    let report = t.output_json("p.yaml", "fix", "report", &[]);
    assert_eq!((report["records_written"].as_u64(), report["bad_records"][0]["line"].as_u64()), (Some(1), Some(2)), "{report:#}");
    assert_eq!(report["bad_records"][0]["reason"], "`messages[0].role` must be a string, found a number", "{report:#}");
}

#[test]
fn train_on_last_assistant_trains_only_the_final_answer() {
    let t = project();
    let convs = conversations();
    t.write("data/chat.jsonl", messages_jsonl(&convs));
    t.write("p.yaml", PIPELINE.replace("max_length: 4096", "max_length: 4096, train_on: last_assistant"));
    t.run("p.yaml", &[]).success();
    let ds = dataset(&t, "p.yaml");
    let tok = tokenizers::Tokenizer::from_file(t.path("tok/tokenizer.json")).unwrap();
    for (r, c) in convs.iter().enumerate() {
        let (ids, labels) = ds.record(r);
        let trained: Vec<u32> = ids.iter().zip(&labels).filter(|(_, &l)| l != -100).map(|(&i, _)| i).collect();
        let first = labels.iter().position(|&l| l != -100).unwrap();
        assert!(labels[first..].iter().all(|&l| l != -100), "conversation {r}: one trained run, at the end");
        let last = &c.last().unwrap().1;
        assert_eq!(tok.decode(&trained, false).unwrap(), format!("{last}<|im_end|>\n"), "conversation {r}");
    }
}

#[test]
fn cut_conversations_are_counted_and_those_cut_to_nothing_follow_on_empty() {
    let t = project();
    let long = "A long question about the stars, the moon and my future. ".repeat(8);
    let convs = json!([
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": long}, {"role": "assistant", "content": "too far"}]},
        {"messages": [{"role": "user", "content": long}, {"role": "assistant", "content": "never seen"}]},
        {"messages": [{"role": "user", "content": "short"}, {"role": "assistant", "content": "fits"}]},
    ]);
    t.write("data/chat.jsonl", convs.as_array().unwrap().iter().map(|c| format!("{c}\n")).collect::<String>());
    t.write("p.yaml", PIPELINE.replace("max_length: 4096", "max_length: 48"));
    let r = t.run("p.yaml", &[]).code(1);
    assert!(r.stderr.contains("1 conversation would train on nothing"), "{r:?}");
    assert!(r.stderr.contains("(records 2)") && r.stderr.contains("on_empty: skip"), "{r:?}");

    t.write("p.yaml", PIPELINE.replace("max_length: 4096", "max_length: 48, on_empty: skip"));
    t.run("p.yaml", &[]).success();
    let stats = t.output_json("p.yaml", "tok", "stats", &[]);
    assert_eq!((stats["records"].as_u64(), stats["skipped_empty"].as_u64()), (Some(2), Some(1)), "{stats:#}");
    assert_eq!(stats["conversations"]["cut"], 2, "{stats:#}");
    assert_eq!(stats["conversations"]["cut_to_nothing"], 1, "{stats:#}");
    let ds = dataset(&t, "p.yaml");
    let tok = tokenizers::Tokenizer::from_file(t.path("tok/tokenizer.json")).unwrap();
    let (ids, _) = ds.record(0);
    assert_eq!(
        tok.decode(ids, false).unwrap(),
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n",
        "the first conversation is cut after its last whole assistant turn"
    );
}

#[test]
fn fix_json_reports_each_bad_conversation_with_its_line_and_field() {
    let t = project();
    let lines = [
        r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#,
        r#"{"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}"#,
        r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 42}]}"#,
        r#"{"messages": []}"#,
        r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "and?"}]}"#,
        r#"{"text": "not a conversation"}"#,
    ];
    t.write("data/chat.jsonl", lines.join("\n"));
    t.write("p.yaml", PIPELINE.replace("on_error: fail", "on_error: skip"));
    t.run("p.yaml", &["--target", "fix"]).success();
    let report = t.output_json("p.yaml", "fix", "report", &[]);
    let bad: Vec<(u64, String)> = report["bad_records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["line"].as_u64().unwrap(), b["reason"].as_str().unwrap().to_string()))
        .collect();
    let want = [
        (2, "`messages[1].role`: unknown role \"bot\" (expected one of system, user, assistant, tool)"),
        (3, "`messages[1].content` must be a string, found a number"),
        (4, "field `messages` is an empty conversation"),
        (5, "`messages[2].role`: the conversation ends with a user message, not the assistant's (nothing to learn from its end)"),
        (6, "missing field `messages`"),
    ];
    assert_eq!(bad, want.map(|(l, r)| (l, r.to_string())), "{report:#}");
    assert_eq!((report["records_written"].as_u64(), report["schema"].as_str()), (Some(1), Some("messages")));

    t.write("p.yaml", PIPELINE);
    let r = t.run("p.yaml", &[]).code(1);
    assert_eq!(r.failed_nodes(), vec!["fix".to_string()]);
    assert!(r.stderr.contains("chat.jsonl:2:1: `messages[1].role`: unknown role \"bot\""), "{r:?}");
    assert!(r.stderr.contains("5 bad records in all"), "{r:?}");
}

#[test]
fn a_bad_csv_row_is_reported_with_its_line_and_column() {
    let t = project();
    t.write(
        "data/chat.csv",
        "id,messages\n1,\"[{\"\"role\"\": \"\"user\"\", \"\"content\"\": \"\"q\"\"}, {\"\"role\"\": \"\"assistant\"\", \"\"content\"\": \"\"a\"\"}]\"\n2,\"[{\"\"role\"\": \"\n3\n",
    );
    let p = PIPELINE
        .replace("data/chat.jsonl", "data/chat.csv")
        .replace("{ schema: messages, on_error: fail }", "{ schema: messages, on_error: fail, input_format: csv }");
    t.write("p.yaml", &p);
    let r = t.run("p.yaml", &[]).code(1);
    assert!(r.stderr.contains("chat.csv:3:2: column 2 (`messages`) is not JSON"), "{r:?}");
    assert!(r.stderr.contains("2 bad records in all"), "{r:?}");
    t.write("p.yaml", p.replace("on_error: fail", "on_error: skip"));
    t.run("p.yaml", &[]).success();
    let report = t.output_json("p.yaml", "fix", "report", &[]);
    assert_eq!(report["bad_records"][1]["line"], 4, "{report:#}");
    assert_eq!(report["bad_records"][1]["reason"], "the row has 1 field but the header has 2", "{report:#}");
    assert_eq!((report["records_written"].as_u64(), report["input_format"].as_str()), (Some(1), Some("csv")));

    // A row that is not UTF-8 (a Latin-1 export) is reported with its column; its neighbours stay.
    let mut latin1 = b"id,messages\n".to_vec();
    latin1.extend_from_slice(b"caf\xe9,\"[{\"\"role\"\": \"\"user\"\", \"\"content\"\": \"\"q\"\"}, {\"\"role\"\": \"\"assistant\"\", \"\"content\"\": \"\"a\"\"}]\"\n");
    latin1.extend_from_slice(b"2,\"[{\"\"role\"\": \"\"user\"\", \"\"content\"\": \"\"q\"\"}, {\"\"role\"\": \"\"assistant\"\", \"\"content\"\": \"\"a\"\"}]\"\n");
    t.write("data/chat.csv", latin1);
    let r = t.run("p.yaml", &[]).success();
    let report = t.output_json("p.yaml", "fix", "report", &[]);
    assert_eq!(report["bad_records"][0]["line"], 2, "{report:#}");
    assert_eq!(report["bad_records"][0]["reason"], "column 1 (`id`) is not UTF-8 (invalid byte at offset 3)", "{report:#}");
    assert_eq!(report["records_written"], 1, "{r:?}");

    // Without `input_format: csv`, a .csv file says what to set.
    t.write("p.yaml", PIPELINE.replace("data/chat.jsonl", "data/chat.csv"));
    let r = t.run("p.yaml", &[]).code(1);
    assert!(r.stderr.contains("set `input_format: csv`"), "{r:?}");
}

#[test]
fn tokenize_names_the_record_and_field_of_a_bad_conversation() {
    let t = project();
    t.write("data/records.json", r#"[{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, {"messages": [{"role": "user", "content": ["q"]}]}]"#);
    t.write(
        "p.yaml",
        "name: bad\nnodes:\n  tok:\n    kind: tokenize\n    inputs: { records: data/records.json, tokenizer: tok }\n    params: { schema: messages, format: chat_template }\n",
    );
    let r = t.run("p.yaml", &[]).code(1);
    assert!(r.stderr.contains("records.json: record 2: `messages[0].content` must be a string, found an array"), "{r:?}");
    assert!(r.stderr.contains("a fix-json node with the same `schema`"), "{r:?}");
}

/// `pipelines/chat.yaml` on the default model up to its tokenized datasets: the six damaged
/// conversations of `data/chat.jsonl` are reported at their lines and dropped, the rest are
/// rendered with SmolLM2's own chat template and trained on the assistant's turns only, and the
/// data file is what scripts/make_chat_dataset.py writes. (Training, merge, eval and export are
/// the fortune pipeline's nodes, tested end to end there.)
#[test]
fn the_example_chat_pipeline_reads_its_dataset_and_trains_on_assistant_turns() {
    if !crate::common::default_model_available() {
        return;
    }
    let made = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("python3")
        .arg(repo().join("scripts/make_chat_dataset.py"))
        .arg(made.path().join("chat.jsonl"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        std::fs::read(made.path().join("chat.jsonl")).unwrap(),
        std::fs::read(repo().join("pipelines/data/chat.jsonl")).unwrap(),
        "pipelines/data/chat.jsonl is what scripts/make_chat_dataset.py writes"
    );
    let t = TestContext::new();
    let file = repo().join("pipelines/chat.yaml");
    let file = file.to_str().unwrap();
    t.run(file, &["--target", "tokenize", "--target", "tokenize-eval"]).success();
    let report = t.output_json(file, "fix", "report", &[]);
    let bad: Vec<u64> = report["bad_records"].as_array().unwrap().iter().map(|b| b["line"].as_u64().unwrap()).collect();
    assert_eq!(bad, vec![18, 49, 80, 111, 142, 173], "{report:#}");
    assert_eq!(report["records_written"], 219, "{report:#}");
    for node in ["tokenize", "tokenize-eval"] {
        let stats = t.output_json(file, node, "stats", &[]);
        assert_eq!(stats["conversations"]["train_on"], "all_assistant", "{stats:#}");
        assert_eq!(stats["conversations"]["cut_to_nothing"], 0, "{stats:#}");
        let f = stats["trained_fraction"].as_f64().unwrap();
        assert!(f > 0.3 && f < 0.7, "the assistant's turns are about half the tokens: {stats:#}");
    }
    // 219 conversations, a 10% held-out split.
    assert_eq!(t.output_json(file, "tokenize", "stats", &[])["records"], 197);
    assert_eq!(t.output_json(file, "tokenize-eval", "stats", &[])["records"], 22);
}

/// eval replays conversations: the turns up to the last user message are rendered with the chat
/// template and both models answer; a final assistant message is reported as the reference. A
/// one-turn conversation is the same prompt as that line in a text prompts file.
#[test]
fn eval_replays_conversation_prompts_and_reports_the_reference() {
    let t = TestContext::new();
    crate::training::tiny_model(&t, "model", pipe::model::config::Arch::Llama, 32);
    let mut config: Value = serde_json::from_str(&t.read("model/tokenizer_config.json")).unwrap();
    config["chat_template"] = json!(CHATML_GENERATION);
    t.write("model/tokenizer_config.json", serde_json::to_string_pretty(&config).unwrap());
    t.write("data/chat.jsonl", messages_jsonl(&conversations()[..8]));
    let prompts = [
        json!({"messages": [{"role": "user", "content": "你是谁?"}]}),
        json!({"messages": [
            {"role": "system", "content": "You are a fortune teller."},
            {"role": "user", "content": "Will I be rich?"},
            {"role": "assistant", "content": "Yes."},
            {"role": "user", "content": "When?"},
            {"role": "assistant", "content": "Next spring."},
        ]}),
    ];
    t.write("prompts.jsonl", prompts.iter().map(|p| format!("{p}\n")).collect::<String>());
    t.write("prompts.txt", "你是谁?\n");
    let yaml = |prompts: &str, schema: &str| {
        format!(
            "name: replay
nodes:
  fix: {{ kind: fix-json, inputs: {{ records: data/chat.jsonl }}, params: {{ schema: messages }} }}
  tok:
    kind: tokenize
    inputs: {{ records: fix.records, tokenizer: model }}
    params: {{ schema: messages, format: chat_template }}
  eval:
    kind: eval
    inputs: {{ base: model, tuned: model, dataset: tok.dataset, prompts: {prompts} }}
    params: {{ {schema}format: chat_template, max_new_tokens: 6 }}
"
        )
    };
    t.write("c.yaml", yaml("prompts.jsonl", "schema: messages, "));
    t.write("l.yaml", yaml("prompts.txt", ""));
    t.run("c.yaml", &[]).success();
    t.run("l.yaml", &[]).success();
    let report = |file: &str| -> Value {
        let dir = t.output_path(file, "eval", "report", &[]);
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap()
    };
    let (c, l) = (report("c.yaml"), report("l.yaml"));
    let gens = c["generations"].as_array().unwrap();
    assert_eq!(gens.len(), 2, "{c:#}");
    assert_eq!(gens[0]["tuned"], l["generations"][0]["tuned"], "a one-turn conversation is the same prompt as the line");
    assert_eq!(gens[0]["reference"], Value::Null);
    assert_eq!(gens[1]["prompt"], "When?");
    assert_eq!(gens[1]["reference"], "Next spring.");
    assert_eq!(gens[1]["conversation"].as_array().unwrap().len(), 4, "the turns the models saw: {c:#}");
    let md = std::fs::read_to_string(t.output_path("c.yaml", "eval", "report", &[]).join("report.md")).unwrap();
    assert!(md.contains("> **assistant:** Yes.") && md.contains("**reference:** Next spring."), "{md}");

    // Located errors: a conversation with nothing to answer, a line that is not JSON.
    t.write("prompts.jsonl", format!("{}\n{}\n", prompts[0], json!({"messages": [{"role": "system", "content": "s"}]})));
    let r = t.run("c.yaml", &[]).code(1);
    assert!(r.stderr.contains("prompts.jsonl:2:1: `messages`: nothing to answer"), "{r:?}");
    t.write("prompts.jsonl", format!("{}\n{{\"messages\": [\n", prompts[0]));
    let r = t.run("c.yaml", &[]).code(1);
    assert!(r.stderr.contains("prompts.jsonl:2:") && r.stderr.contains("not a JSON object"), "{r:?}");
}
