//! Several processes on one cache, and processes that die: per-key locks and atomic publishing.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::common::{events_of, names, read_until, Run, TestContext};

/// fix -> tokenize over `data/big.jsonl` (generated; thousands of records, so that in a debug build
/// fix-json and tokenize each take a good fraction of a second).
const BIG: &str = "\
name: big
nodes:
  fix:
    kind: fix-json
    inputs: { records: data/big.jsonl }
  tokenize:
    kind: tokenize
    inputs: { records: fix.records, tokenizer: tok/tokenizer.json }
    params: { max_length: 64 }
";

fn big(records: usize) -> TestContext {
    let t = TestContext::new();
    t.copy_tokenizer();
    t.write_records("data/big.jsonl", records);
    t.write("p.yaml", BIG);
    t
}

#[test]
fn two_concurrent_runs_on_one_cache_both_succeed_and_run_each_node_once() {
    let t = big(20_000);
    let spawn =
        || t.std_cmd(["run", "p.yaml", "--json"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn pipe");
    let (a, b) = (spawn(), spawn());
    let (a, b) = (Run::from(a.wait_with_output().unwrap()), Run::from(b.wait_with_output().unwrap()));
    let (a, b) = (a.success(), b.success());

    let mut started: Vec<String> = a.ran_nodes();
    started.extend(b.ran_nodes());
    started.sort();
    assert_eq!(started, names(&["fix", "tokenize"]), "each node executes once in total\nA: {a:?}\nB: {b:?}");
    for r in [&a, &b] {
        let mut seen = r.ran_nodes();
        seen.extend(r.cached_nodes());
        seen.sort();
        assert_eq!(seen, names(&["fix", "tokenize"]), "every node is run or reused by each process: {r:?}");
    }
    // Both processes agree on every key.
    let keys = |r: &Run| {
        let mut k: Vec<String> = r
            .events()
            .iter()
            .filter(|e| e["event"] == "node_finished" || e["event"] == "node_cached")
            .map(|e| format!("{} {}", e["node"], e["key"]))
            .collect();
        k.sort();
        k
    };
    assert_eq!(keys(&a), keys(&b));
    assert_eq!(t.node_records().len(), 2);
    // The two really competed for a key (else this test proved nothing).
    assert!(a.count("node_waiting") + b.count("node_waiting") >= 1, "no process ever waited:\nA: {a:?}\nB: {b:?}");
}

#[test]
fn a_run_killed_mid_node_leaves_a_consistent_cache_and_the_rerun_completes() {
    let t = big(12_000);
    let mut child = t.std_cmd(["run", "p.yaml", "--json"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (seen, found) = read_until(&mut lines, |e| e["event"] == "node_started" && e["node"] == "tokenize");
    child.kill().expect("SIGKILL"); // std's Child::kill sends SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(found, "tokenize never started: {seen:?}");
    assert!(!status.success());
    let killed = events_of(&seen.join("\n"));
    assert!(
        !killed.iter().any(|e| e["event"] == "node_finished" && e["node"] == "tokenize"),
        "tokenize finished before the kill; the test did not kill mid-node"
    );

    let r = t.run("p.yaml", &[]).success();
    assert_eq!(r.ran_nodes(), names(&["tokenize"]), "{r:?}");
    assert_eq!(r.cached_nodes(), names(&["fix"]), "{r:?}");

    let records = t.node_records();
    assert_eq!(records.len(), 2);
    for rec in &records {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(rec).unwrap()).unwrap();
        let outputs = v["outputs"].as_object().expect("outputs");
        assert!(!outputs.is_empty());
        for (name, o) in outputs {
            let d = o["digest"].as_str().unwrap();
            let obj = t.cache.join("objects").join(&d[..2]).join(d);
            assert!(obj.exists(), "{}: output `{name}` names a missing object {d}", rec.display());
        }
    }
    let v = t.pipe(["verify", "p.yaml"]).success();
    assert!(v.stdout.contains("ok        fix") && v.stdout.contains("ok        tokenize"), "{v:?}");

    // The killed process's staging folder is garbage now; gc removes it and keeps the entries.
    t.pipe(["gc"]).success();
    let tmp: Vec<_> = std::fs::read_dir(t.cache.join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "gc left staging folders of a dead process: {tmp:?}");
    let again = t.run("p.yaml", &[]).success();
    assert_eq!(again.count("node_started"), 0, "{again:?}");
}
