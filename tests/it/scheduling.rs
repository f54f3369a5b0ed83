//! What the scheduler runs: `--target` selection, failures with and without `--keep-going`,
//! `--force`.

use crate::common::{names, TestContext};

/// Two independent branches; `broken` fails (its input has a bad record and `on_error: fail`).
const TWO_BRANCHES: &str = "\
name: two
nodes:
  broken:
    kind: fix-json
    inputs: { records: data/broken.jsonl }
    params: { on_error: fail }
  broken_tok:
    kind: tokenize
    inputs: { records: broken.records, tokenizer: tok/tokenizer.json }
  fix:
    kind: fix-json
    inputs: { records: data/good.jsonl }
  tokenize:
    kind: tokenize
    inputs: { records: fix.records, tokenizer: tok/tokenizer.json }
    params: { max_length: 64 }
";

fn two_branches() -> TestContext {
    let t = TestContext::new();
    t.copy_tokenizer();
    t.write_records("data/good.jsonl", 20);
    let mut broken = std::fs::read_to_string(t.write_records("data/broken.jsonl", 3)).unwrap();
    broken.push_str("{\"instruction\": \"no output\", \"input\": \"\"}\n");
    t.write("data/broken.jsonl", broken);
    t.write("p.yaml", TWO_BRANCHES);
    t
}

#[test]
fn target_runs_only_what_the_target_needs() {
    let t = two_branches();
    let r = t.run("p.yaml", &["--target", "tokenize"]).success();
    assert_eq!(r.ran_nodes(), names(&["fix", "tokenize"]));
    let selected = r.events_of("run_started")[0]["nodes"].clone();
    assert_eq!(selected, serde_json::json!(["fix", "tokenize"]));
    assert!(!r.stdout.contains("broken"), "{r:?}");

    let r = t.run("p.yaml", &["--target", "fix"]).success();
    assert_eq!(r.cached_nodes(), names(&["fix"]));
    assert_eq!(r.count("node_started"), 0);
}

#[test]
fn status_with_a_target_reports_only_the_target_and_its_ancestors() {
    let t = two_branches();
    let s = t.pipe(["status", "p.yaml", "--target", "tokenize"]).success();
    assert!(s.stdout.contains("fix") && s.stdout.contains("tokenize"), "{s:?}");
    assert!(!s.stdout.contains("broken"), "{s:?}");
    assert!(s.stdout.contains("2 of 2 nodes would run"), "{s:?}");
    assert!(t.node_records().is_empty(), "status runs nothing");
}

#[test]
fn keep_going_lets_an_independent_branch_finish_after_a_failure() {
    let t = two_branches();
    let r = t.run("p.yaml", &["--keep-going", "-j", "1"]).code(1);
    assert_eq!(r.failed_nodes(), names(&["broken"]));
    assert_eq!(r.skipped_nodes(), names(&["broken_tok"]));
    assert_eq!(r.nodes_with("node_finished").len(), 2, "{r:?}");
    assert_eq!(r.ran_nodes(), names(&["broken", "fix", "tokenize"]));
    let done = &r.events_of("run_finished")[0];
    assert_eq!((done["ok"].as_bool(), done["failed"].as_u64(), done["skipped"].as_u64()), (Some(false), Some(1), Some(1)));
    let skipped = &r.events_of("node_skipped")[0];
    assert!(skipped["because"].as_str().unwrap().contains("upstream `broken` failed"), "{skipped}");

    // The finished branch is cached now.
    let r = t.run("p.yaml", &["--target", "tokenize"]).success();
    assert_eq!(r.cached_nodes(), names(&["fix", "tokenize"]));
}

/// The same two branches with the good one first in the file.
fn good_branch_first() -> String {
    let (broken, good) = TWO_BRANCHES.split_at(TWO_BRANCHES.find("  fix:\n").unwrap());
    let (head, broken) = broken.split_at(broken.find("  broken:\n").unwrap());
    format!("{head}{good}{broken}")
}

#[test]
fn without_keep_going_no_node_starts_after_a_failure() {
    // Whatever order independent nodes run in, with one job slot every node the run would start
    // after `broken` fails must be skipped, never started. Both file orders, so that in at least
    // one of them an independent node comes after `broken`.
    let mut stopped_an_independent_node = false;
    for yaml in [TWO_BRANCHES.to_string(), good_branch_first()] {
        let t = two_branches();
        t.write("p.yaml", &yaml);
        let r = t.run("p.yaml", &["-j", "1"]).code(1);
        assert_eq!(r.failed_nodes(), names(&["broken"]));
        let order: Vec<String> = serde_json::from_value(r.events_of("run_started")[0]["nodes"].clone()).unwrap();
        let at = order.iter().position(|n| n == "broken").unwrap();
        for (i, node) in order.iter().enumerate() {
            let started = r.ran_nodes().contains(node);
            if i < at {
                assert!(started, "`{node}` comes before `broken` and should have run: {r:?}");
            } else if i > at {
                assert!(!started, "`{node}` started after the failure without --keep-going: {r:?}");
                assert!(r.skipped_nodes().contains(node), "`{node}` is reported skipped: {r:?}");
                if node == "fix" || node == "tokenize" {
                    stopped_an_independent_node = true;
                    let ev = r.events_of("node_skipped").into_iter().find(|e| &e["node"] == node).unwrap();
                    assert!(ev["because"].as_str().unwrap().contains("--keep-going"), "{ev}");
                }
            }
        }
    }
    assert!(stopped_an_independent_node, "neither file order ran `broken` before the good branch");
}

/// src/graph.rs documents `order()` as "ties broken by file order" (petgraph's toposort alone
/// would take the last root first): this file runs fix, tokenize, broken, broken_tok.
#[test]
fn independent_nodes_run_in_file_order() {
    let t = two_branches();
    let r = t.run("p.yaml", &["-j", "1", "--keep-going"]).code(1);
    let order: Vec<String> = serde_json::from_value(r.events_of("run_started")[0]["nodes"].clone()).unwrap();
    assert_eq!(order, vec!["broken", "broken_tok", "fix", "tokenize"], "{r:?}");
    assert_eq!(r.nodes_with("node_started"), vec!["broken", "fix", "tokenize"], "{r:?}");
}

#[test]
fn force_reruns_a_fresh_node_and_identical_output_keeps_downstream_fresh() {
    let t = two_branches();
    t.run("p.yaml", &["--target", "tokenize"]).success();
    let r = t.run("p.yaml", &["--target", "tokenize", "--force", "fix"]).success();
    assert_eq!(r.ran_nodes(), names(&["fix"]));
    assert_eq!(r.events_of("node_started")[0]["reasons"][0], "forced with --force");
    assert_eq!(r.cached_nodes(), names(&["tokenize"]));
}

/// A node that fails while its key is computed (here: `eos_token` is not a token, found by
/// `fingerprint_extra`) is reported like any failed node: a `node_failed` event naming it for
/// `--json` consumers, a "Failed tokenize" line, and a final `error:` line that names it.
#[test]
fn a_node_that_fails_before_it_starts_is_reported_as_failed_by_name() {
    let t = two_branches();
    let yaml = "\
name: eos
nodes:
  fix:
    kind: fix-json
    inputs: { records: data/good.jsonl }
  tokenize:
    kind: tokenize
    inputs: { records: fix.records, tokenizer: tok/tokenizer.json }
    params: { max_length: 64, eos_token: \"<|nope|>\" }
";
    t.write("p.yaml", yaml);
    let r = t.run("p.yaml", &[]).code(1);
    assert!(r.stderr.contains("`<|nope|>` is not a token"), "{r:?}");
    assert_eq!(r.events_of("run_finished")[0]["failed"], 1);
    assert_eq!(r.failed_nodes(), names(&["tokenize"]), "no node_failed event for the failed node: {r:?}");
    assert!(r.stderr.contains("node 'tokenize'"), "the error does not name the node: {r:?}");
}
