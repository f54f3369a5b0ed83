//! The content-addressed cache: what reruns and what does not, counted from `--json` events.

use crate::common::{names, TestContext, FORTUNE};

/// fix -> {tok_a, tok_b}, plus an independent `other` branch.
const BRANCHY: &str = "\
name: branchy
nodes:
  fix:
    kind: fix-json
    inputs: { records: data/fortune.jsonl }
    params:
      dedupe: true
  tok_a:
    kind: tokenize
    inputs: { records: fix.records, tokenizer: tok/tokenizer.json }
    params: { max_length: 64 }
  tok_b:
    kind: tokenize
    inputs: { records: fix.records, tokenizer: tok/tokenizer.json }
    params: { max_length: 80 }
  other:
    kind: fix-json
    inputs: { records: data/other.jsonl }
";

fn branchy() -> TestContext {
    let t = TestContext::with_fixtures();
    t.write_records("data/other.jsonl", 5);
    t.write("p.yaml", BRANCHY);
    let first = t.run("p.yaml", &[]).success();
    assert_eq!(first.ran_nodes(), names(&["fix", "other", "tok_a", "tok_b"]));
    t
}

#[test]
fn a_rerun_of_an_unchanged_pipeline_is_all_cache_hits() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE);
    let first = t.run("p.yaml", &[]).success();
    assert_eq!(first.ran_nodes(), names(&["fix", "tokenize"]));
    assert_eq!(first.count("node_cached"), 0);

    let second = t.run("p.yaml", &[]).success();
    assert_eq!(second.count("node_started"), 0, "{second:?}");
    assert_eq!(second.cached_nodes(), names(&["fix", "tokenize"]));
    let done = &second.events_of("run_finished")[0];
    assert_eq!((done["ran"].as_u64(), done["cached"].as_u64(), done["ok"].as_bool()), (Some(0), Some(2), Some(true)));
    // The cached keys are the keys the first run published.
    let key_of = |r: &crate::common::Run, ev: &str, node: &str| {
        r.events_of(ev).into_iter().find(|e| e["node"] == node).map(|e| e["key"].clone()).unwrap()
    };
    assert_eq!(key_of(&first, "node_finished", "tokenize"), key_of(&second, "node_cached", "tokenize"));
}

#[test]
fn a_param_changed_with_set_reruns_exactly_the_nodes_downstream_of_it() {
    let t = branchy();
    let status = t.pipe(["status", "p.yaml", "--why", "--set", "tok_a.max_length=72"]).success();
    assert!(status.stdout.contains("param `max_length` changed: 64 -> 72"), "{status:?}");
    assert!(status.stdout.contains("1 of 4 nodes would run"), "{status:?}");

    let r = t.run("p.yaml", &["--set", "tok_a.max_length=72"]).success();
    assert_eq!(r.ran_nodes(), names(&["tok_a"]));
    assert_eq!(r.cached_nodes(), names(&["fix", "other", "tok_b"]));
    let started = &r.events_of("node_started")[0];
    assert_eq!(started["reasons"][0], "param `max_length` changed: 64 -> 72", "{started}");

    // Back to the file's value: that entry is still cached.
    let back = t.run("p.yaml", &[]).success();
    assert_eq!(back.count("node_started"), 0, "{back:?}");
}

#[test]
fn a_param_changed_in_the_yaml_reruns_the_node_and_everything_downstream_only() {
    let t = branchy();
    t.write("p.yaml", BRANCHY.replace("dedupe: true", "dedupe: false"));

    let status = t.pipe(["status", "p.yaml", "--why"]).success();
    assert!(status.stdout.contains("param `dedupe` changed: true -> false"), "{status:?}");
    assert!(status.stdout.contains("upstream `fix` will run first"), "{status:?}");

    let json = t.pipe(["status", "p.yaml", "--json"]).success();
    let v: serde_json::Value = serde_json::from_str(json.stdout.trim()).unwrap();
    let fix = v["nodes"].as_array().unwrap().iter().find(|n| n["node"] == "fix").unwrap().clone();
    let detail = &fix["reasons"][0]["detail"];
    assert_eq!(detail["reason"], "param_changed", "{fix:#}");
    assert_eq!((&detail["name"], &detail["old"], &detail["new"]), (&"dedupe".into(), &true.into(), &false.into()), "{fix:#}");

    let r = t.run("p.yaml", &[]).success();
    assert_eq!(r.ran_nodes(), names(&["fix", "tok_a", "tok_b"]));
    assert_eq!(r.cached_nodes(), names(&["other"]));
}

#[test]
fn touching_an_input_without_changing_its_bytes_reruns_nothing() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE);
    t.run("p.yaml", &[]).success();
    t.touch_forward("data/fortune.jsonl", 3600);
    t.touch_forward("tok/tokenizer.json", 3600);
    t.touch_forward("tok/tokenizer_config.json", 3600);
    let r = t.run("p.yaml", &[]).success();
    assert_eq!(r.count("node_started"), 0, "{r:?}");
    assert_eq!(r.cached_nodes(), names(&["fix", "tokenize"]));
    // And again, now that the stat cache may have seen the new mtimes.
    let r = t.run("p.yaml", &[]).success();
    assert_eq!(r.count("node_started"), 0, "{r:?}");
}

#[test]
fn a_changed_tokenizer_file_reruns_tokenize_but_not_fix_json() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE);
    t.run("p.yaml", &[]).success();

    // Same tokenizer, different bytes.
    let mut tok = t.read("tok/tokenizer.json");
    tok.push('\n');
    t.write("tok/tokenizer.json", tok);
    let status = t.pipe(["status", "p.yaml", "--why"]).success();
    assert!(status.stdout.contains("input `tokenizer` (tok/tokenizer.json) changed"), "{status:?}");
    let r = t.run("p.yaml", &[]).success();
    assert_eq!(r.ran_nodes(), names(&["tokenize"]));
    assert_eq!(r.cached_nodes(), names(&["fix"]));
}

/// The memoised key extras (`extra/<id>.json`) are keyed by the input digests, and
/// `tokenizer_config.json` beside the tokenizer is not an input: the memo also records the side
/// files it read, so editing the chat template (or the end token) there still reruns tokenize
/// instead of leaving it "fresh" with a dataset built from the old template.
#[test]
fn a_changed_tokenizer_config_beside_the_tokenizer_reruns_tokenize_but_not_fix_json() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE.replace("max_length: 64", "max_length: 128\n      format: chat_template"));
    t.run("p.yaml", &[]).success();
    let before = std::fs::read(t.output_path("p.yaml", "tokenize", "dataset", &[])).unwrap();

    let cfg = t.read("tok/tokenizer_config.json");
    let edited = cfg.replace("{% for message in messages %}", "{{ 'Session: ' }}{% for message in messages %}");
    assert_ne!(cfg, edited);
    t.write("tok/tokenizer_config.json", edited);
    let status = t.pipe(["status", "p.yaml", "--why"]).success();
    assert!(status.stdout.contains("will run  tokenize"), "{status:?}");
    let r = t.run("p.yaml", &[]).success();
    assert_eq!(r.ran_nodes(), names(&["tokenize"]), "{r:?}");
    assert_eq!(r.cached_nodes(), names(&["fix"]));
    let after = std::fs::read(t.output_path("p.yaml", "tokenize", "dataset", &[])).unwrap();
    assert_ne!(before, after, "the new template changes the tokens");
}

#[test]
fn an_upstream_rerun_with_identical_output_leaves_downstream_fresh() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE);
    t.run("p.yaml", &[]).success();
    // `seed` only matters for the train/eval split, which is off: fix reruns, same bytes.
    let r = t.run("p.yaml", &["--set", "fix.seed=7"]).success();
    assert_eq!(r.ran_nodes(), names(&["fix"]));
    assert_eq!(r.cached_nodes(), names(&["tokenize"]));
}

#[test]
fn writing_a_default_explicitly_or_renaming_a_node_reuses_the_cache() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE);
    t.run("p.yaml", &[]).success();
    let explicit = FORTUNE.replace("max_length: 64", "max_length: 64\n      format: seed\n      on_empty: fail");
    t.write("p.yaml", &explicit);
    let r = t.run("p.yaml", &[]).success();
    assert_eq!(r.count("node_started"), 0, "explicit defaults changed a key: {r:?}");

    let renamed = explicit.replace("  fix:\n", "  repair:\n").replace("fix.records", "repair.records");
    t.write("p.yaml", renamed);
    let r = t.run("p.yaml", &[]).success();
    assert_eq!(r.count("node_started"), 0, "renaming a node changed a key: {r:?}");
    assert_eq!(r.cached_nodes(), names(&["repair", "tokenize"]));
}

#[test]
fn an_input_rewritten_with_the_same_size_and_its_old_mtime_still_reruns() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE);
    let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let set_mtime = |rel: &str| {
        std::fs::File::options().write(true).open(t.path(rel)).unwrap().set_modified(past).unwrap();
    };
    set_mtime("data/fortune.jsonl"); // old enough for the stat cache to trust it
    t.run("p.yaml", &[]).success();
    t.run("p.yaml", &[]).success(); // now served from the stat cache

    let text = t.read("data/fortune.jsonl");
    let changed = text.replacen("Ah, my friend", "Oh, my friend", 1);
    assert_eq!(changed.len(), text.len(), "same size");
    assert_ne!(changed, text);
    t.write("data/fortune.jsonl", changed);
    set_mtime("data/fortune.jsonl");
    let r = t.run("p.yaml", &[]).success();
    assert_eq!(r.ran_nodes(), names(&["fix", "tokenize"]), "the stat cache trusted a stale digest: {r:?}");
}

#[test]
fn a_missing_cache_object_makes_its_node_run_again_and_status_says_why() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE);
    t.run("p.yaml", &[]).success();
    let stats = t.output_path("p.yaml", "tokenize", "stats", &[]);
    std::fs::remove_file(&stats).unwrap();
    let s = t.pipe(["status", "p.yaml", "--why"]).success();
    assert!(s.stdout.contains("same key as the last run, but its cache entry is gone"), "{s:?}");
    let r = t.run("p.yaml", &[]).success();
    assert_eq!(r.ran_nodes(), names(&["tokenize"]));
    assert!(stats.exists(), "the object is back");
}

#[test]
fn two_nodes_with_the_same_inputs_and_params_share_one_entry() {
    let t = TestContext::with_fixtures();
    t.copy(&t.path("data/fortune.jsonl"), "data/copy.jsonl");
    t.write(
        "p.yaml",
        "name: twins\nnodes:\n  a:\n    kind: fix-json\n    inputs: { records: data/fortune.jsonl }\n  b:\n    kind: fix-json\n    inputs: { records: data/copy.jsonl }\n",
    );
    let r = t.run("p.yaml", &[]).success();
    assert_eq!(r.count("node_started"), 1, "{r:?}");
    assert_eq!(r.count("node_cached"), 1, "{r:?}");
    assert_eq!(t.node_records().len(), 1);
}
