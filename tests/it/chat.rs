//! Conversation datasets: `schema: messages | sharegpt` through fix-json and tokenize, checked
//! against transformers' `apply_chat_template(..., return_assistant_tokens_mask=True)`
//! (`scripts/chat_reference.py`); the same records as ShareGPT and as CSV; `train_on`; located
//! errors for bad conversations and bad CSV rows; truncation counts.

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

/// The interpreter for the reference when it can import transformers (else skip, or fail under
/// `PIPE_REQUIRE_PYTHON=1`).
fn python_with_transformers(test: &str) -> Option<String> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&python)
        .args(["-c", "import transformers, jinja2"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    if std::env::var("PIPE_REQUIRE_PYTHON").as_deref() == Ok("1") {
        panic!(
            "{test}: PIPE_REQUIRE_PYTHON=1 but `{python}` cannot import transformers and jinja2 (scripts/test-requirements.txt)"
        );
    }
    eprintln!("SKIPPED {test}: `{python}` cannot import transformers and jinja2 (pip install -r scripts/test-requirements.txt)");
    None
}

#[test]
fn messages_match_transformers_assistant_masks_for_every_conversation() {
    let Some(python) = python_with_transformers("messages_match_transformers_assistant_masks_for_every_conversation") else {
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

    fn from(r: &str) -> &str {
        match r {
            "user" => "human",
            "assistant" => "gpt",
            other => other,
        }
    }
    // ShareGPT has no tool role: the same conversations without their tool messages, both ways.
    let no_tool: Vec<Vec<(&str, String)>> =
        convs.iter().map(|c| c.iter().filter(|(r, _)| *r != "tool").cloned().collect()).collect();
    t.write("data/notool.jsonl", messages_jsonl(&no_tool));
    let share: String = no_tool
        .iter()
        .map(|c| {
            let turns: Vec<Value> = c.iter().map(|(r, v)| json!({"from": from(r), "value": v})).collect();
            format!("{}\n", json!({ "id": "x", "conversations": turns }))
        })
        .collect();
    t.write("data/share.jsonl", share);
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
