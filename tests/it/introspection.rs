//! Commands that describe rather than run: `graph`, `kinds`, `show`.

use crate::common::{TestContext, FORTUNE};

#[test]
fn graph_mermaid_contains_the_edges() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE);
    let r = t.pipe(["graph", "p.yaml", "--format", "mermaid"]).success();
    let out = &r.stdout;
    assert!(out.starts_with("flowchart LR"), "{out}");
    assert!(out.contains("fix -- \"records → records\" --> tokenize"), "{out}");
    assert!(out.contains("data/fortune.jsonl") && out.contains("--> fix"), "{out}");
    assert!(out.contains("tok/tokenizer.json") && out.contains("tokenizer --> tokenize"), "{out}");
    assert!(t.node_records().is_empty());
}

#[test]
fn graph_dot_contains_the_edges() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE);
    let r = t.pipe(["graph", "p.yaml", "--format", "dot"]).success();
    let out = &r.stdout;
    assert!(out.starts_with("digraph \"fortune-test\" {"), "{out}");
    assert!(out.contains("fix -> tokenize [label=\"records → records\"];"), "{out}");
    assert!(out.contains("\"data/fortune.jsonl\" -> fix"), "{out}");
    assert!(out.contains("\"tok/tokenizer.json\" -> tokenize"), "{out}");
    assert!(out.trim_end().ends_with('}'));
    // dot is the default format
    assert_eq!(t.pipe(["graph", "p.yaml"]).success().stdout, r.stdout);
}

#[test]
fn graph_node_ids_with_dashes_are_valid_identifiers() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE.replace("  fix:\n", "  fix-it:\n").replace("fix.records", "fix-it.records"));
    let dot = t.pipe(["graph", "p.yaml"]).success().stdout;
    assert!(dot.contains("fix_it -> tokenize"), "{dot}");
    let mermaid = t.pipe(["graph", "p.yaml", "--format", "mermaid"]).success().stdout;
    assert!(mermaid.contains("fix_it -- \"records → records\" --> tokenize"), "{mermaid}");
}

#[test]
fn kinds_lists_both_kinds_with_their_params() {
    let t = TestContext::new();
    let r = t.pipe(["kinds"]).success();
    assert!(r.stdout.contains("fix-json (v1)") && r.stdout.contains("tokenize (v1)"), "{r:?}");
    for p in ["on_error", "dedupe", "eval_fraction", "max_length", "format", "on_empty"] {
        assert!(r.stdout.contains(p), "`{p}` missing: {r:?}");
    }
    let md = t.pipe(["kinds", "tokenize", "--markdown"]).success();
    assert!(md.stdout.starts_with("### `tokenize`"), "{md:?}");
    assert!(!md.stdout.contains("### `fix-json`"), "{md:?}");
    let unknown = t.pipe(["kinds", "fix-jsn"]).code(2);
    assert!(unknown.stderr.contains("unknown node kind `fix-jsn`"), "{unknown:?}");
}

#[test]
fn show_json_gives_artifact_paths_after_a_run_and_the_reasons_before() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE);
    let before = t.show("p.yaml", "tokenize", &[]);
    assert_eq!(before["status"]["state"], "will_run", "{before:#}");
    assert!(before["outputs"].as_object().unwrap().is_empty());
    t.run("p.yaml", &[]).success();
    let after = t.show("p.yaml", "tokenize", &[]);
    assert_eq!(after["status"]["state"], "fresh", "{after:#}");
    for o in ["dataset", "stats"] {
        let p = after["outputs"][o]["path"].as_str().unwrap();
        assert!(std::path::Path::new(p).exists(), "{p}");
    }
    assert!(std::path::Path::new(after["log"].as_str().unwrap()).exists());
    assert_eq!(after["params"]["max_length"], 64);
}
