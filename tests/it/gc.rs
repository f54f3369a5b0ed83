//! `pipe gc`: keeps what the latest run of each pipeline references, deletes the rest.

use crate::common::{TestContext, FORTUNE};

/// Runs FORTUNE with max_length 64, then edits it to 80 and runs again: the 64 entry of
/// `tokenize` is now referenced by no latest run. Returns the old and new tokenize keys.
fn two_generations() -> (TestContext, String, String) {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE);
    let first = t.run("p.yaml", &[]).success();
    t.write("p.yaml", FORTUNE.replace("max_length: 64", "max_length: 80"));
    let second = t.run("p.yaml", &[]).success();
    let key = |r: &crate::common::Run| {
        r.events_of("node_finished").into_iter().find(|e| e["node"] == "tokenize").unwrap()["key"].as_str().unwrap().to_string()
    };
    let (old, new) = (key(&first), key(&second));
    assert_ne!(old, new);
    assert_eq!(t.node_records().len(), 3);
    (t, old, new)
}

#[test]
fn gc_dry_run_lists_the_unreferenced_entry_and_deletes_nothing() {
    let (t, old, new) = two_generations();
    let before = t.cache_listing();
    let r = t.pipe(["gc", "--dry-run"]).success();
    assert!(r.stdout.contains(&format!("record  {old}")), "{r:?}");
    assert!(!r.stdout.contains(&new), "{r:?}");
    assert!(r.stdout.contains("would delete 1 node record(s)"), "{r:?}");
    assert_eq!(t.cache_listing(), before, "a dry run changed the cache");
}

#[test]
fn gc_keeps_what_the_latest_run_references_and_deletes_an_older_parameter_value() {
    let (t, old, new) = two_generations();
    let r = t.pipe(["gc"]).success();
    assert!(r.stdout.contains("deleted 1 node record(s)"), "{r:?}");
    assert!(!t.cache.join(format!("nodes/{old}.json")).exists());
    assert!(!t.cache.join(format!("logs/{old}.log")).exists());
    assert!(t.cache.join(format!("nodes/{new}.json")).exists());
    assert_eq!(t.node_records().len(), 2);

    // The latest run is entirely fresh after gc ...
    let rerun = t.run("p.yaml", &[]).success();
    assert_eq!(rerun.count("node_started"), 0, "{rerun:?}");
    assert_eq!(rerun.count("node_cached"), 2);
    // ... and the older value has to run again.
    let status = t.pipe(["status", "p.yaml", "--why", "--set", "tokenize.max_length=64"]).success();
    assert!(status.stdout.contains("will run  tokenize"), "{status:?}");
    let r = t.run("p.yaml", &["--set", "tokenize.max_length=64"]).success();
    assert_eq!(r.ran_nodes(), vec!["tokenize".to_string()]);
    // A second gc right away has nothing left to delete that the latest run needs.
    let again = t.pipe(["gc", "--dry-run"]).success();
    assert!(again.stdout.contains(&format!("record  {new}")), "the 80 entry is now the older one: {again:?}");
}

#[test]
fn every_object_the_kept_records_name_survives_gc() {
    let (t, _, _) = two_generations();
    t.pipe(["gc"]).success();
    for rec in t.node_records() {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&rec).unwrap()).unwrap();
        for (name, o) in v["outputs"].as_object().unwrap() {
            let d = o["digest"].as_str().unwrap();
            assert!(t.cache.join("objects").join(&d[..2]).join(d).exists(), "{}: `{name}` lost its object", rec.display());
        }
    }
    t.pipe(["verify", "p.yaml"]).success();
}

#[test]
fn gc_keeps_the_latest_run_of_every_pipeline_sharing_the_cache() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE);
    t.write("q.yaml", FORTUNE.replace("max_length: 64", "max_length: 80"));
    t.run("p.yaml", &[]).success();
    t.run("q.yaml", &[]).success();
    let r = t.pipe(["gc"]).success();
    assert!(r.stdout.contains("deleted 0 node record(s) and 0 object(s)"), "{r:?}");
    assert_eq!(t.run("p.yaml", &[]).success().count("node_started"), 0);
    assert_eq!(t.run("q.yaml", &[]).success().count("node_started"), 0);
}

#[test]
fn gc_deletes_a_record_but_keeps_an_object_a_kept_record_shares() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE);
    let first = t.run("p.yaml", &[]).success();
    // Another seed: a new fix key with byte-identical outputs (the same objects).
    t.write("p.yaml", FORTUNE.replace("on_error: skip", "on_error: skip\n      seed: 7"));
    let second = t.run("p.yaml", &[]).success();
    assert_eq!(second.ran_nodes(), vec!["fix".to_string()]);
    let old_fix = first.events_of("node_finished").into_iter().find(|e| e["node"] == "fix").unwrap()["key"].clone();
    let r = t.pipe(["gc"]).success();
    assert!(r.stdout.contains("deleted 1 node record(s) and 0 object(s)"), "{r:?}");
    assert!(!t.cache.join(format!("nodes/{}.json", old_fix.as_str().unwrap())).exists());
    assert_eq!(t.run("p.yaml", &[]).success().count("node_started"), 0);
    t.pipe(["verify", "p.yaml"]).success();
}

#[test]
fn gc_deletes_the_entries_of_a_node_removed_from_the_pipeline() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE);
    t.run("p.yaml", &[]).success();
    let (fix_only, _) = FORTUNE.split_at(FORTUNE.find("  tokenize:").unwrap());
    t.write("p.yaml", fix_only);
    t.run("p.yaml", &[]).success();
    let r = t.pipe(["gc"]).success();
    assert!(r.stdout.contains("deleted 1 node record(s) and 2 object(s)"), "{r:?}");
    assert_eq!(t.node_records().len(), 1);
}

/// `pipe gc` beside running pipelines: a run that found an entry no latest run references (a
/// pipeline edited back to an earlier version) keeps it while it runs, however often gc runs in
/// between; two runs at once both finish, and gc then deletes only what no run uses.
#[test]
fn gc_looping_beside_two_running_pipelines_never_takes_what_they_use() {
    use std::io::BufRead;
    use std::process::Stdio;

    let pipeline = |max_length: u32, steps: u32| {
        format!(
            r#"name: gc-race
nodes:
  fix: {{ kind: fix-json, inputs: {{ records: data/fortune.jsonl }}, params: {{ eval_fraction: 0.1 }} }}
  tok: {{ kind: tokenize, inputs: {{ records: fix.train, tokenizer: model }}, params: {{ max_length: {max_length} }} }}
  tok-eval: {{ kind: tokenize, inputs: {{ records: fix.eval, tokenizer: model }}, params: {{ max_length: 64 }} }}
  train:
    kind: lora-train
    inputs: {{ model: model, dataset: tok-eval.dataset }}
    params: {{ max_steps: {steps}, batch_size: 2, grad_accum: 1, r: 4, save_steps: 0 }}
  merge: {{ kind: merge, inputs: {{ model: model, adapter: train.adapter }} }}
  eval:
    kind: eval
    inputs: {{ base: model, tuned: merge.model, dataset: tok.dataset }}
    params: {{ max_new_tokens: 2 }}
"#
        )
    };
    let t = TestContext::with_fixtures();
    crate::training::tiny_model(&t, "model", pipe::model::config::Arch::Llama, 32);
    // Version 1 (tok at 64), then version 2 (tok at 72): tok's 64 entry is now referenced by no
    // latest run, and gc would delete it.
    t.write("p.yaml", pipeline(64, 2));
    t.run("p.yaml", &[]).success();
    t.write("p.yaml", pipeline(72, 2));
    t.run("p.yaml", &["--target", "tok"]).success();
    let old_tok = t.show("p.yaml", "tok", &["--set", "tok.max_length=64"])["status"]["key"].as_str().unwrap().to_string();
    assert!(t.pipe(["gc", "--dry-run"]).success().stdout.contains(&old_tok), "gc would delete the 64 entry");

    // Back to version 1 with a longer training: tok is found in the cache, then train runs for a
    // while, then eval reads tok's dataset. A second pipeline file runs beside it.
    t.write("p.yaml", pipeline(64, 200));
    t.write("q.yaml", pipeline(64, 150).replace("name: gc-race", "name: gc-race-2"));
    let spawn = |file: &str| {
        t.std_cmd(["run", file, "--json", "--jobs", "1"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    };
    let (mut p, mut q) = (spawn("p.yaml"), spawn("q.yaml"));
    let mut p_lines = std::io::BufReader::new(p.stdout.take().unwrap()).lines();
    let (seen, started) = crate::common::read_until(&mut p_lines, |e| e["event"] == "node_started" && e["node"] == "train");
    assert!(started, "train did not start: {seen:?}");
    assert!(seen.iter().any(|l| l.contains("\"node_cached\"") && l.contains(&old_tok)), "tok came from the cache: {seen:?}");
    // gc in a loop while both run.
    let mut gcs = 0;
    while p.try_wait().unwrap().is_none() || q.try_wait().unwrap().is_none() {
        t.pipe(["gc"]).success();
        gcs += 1;
    }
    let rest: Vec<String> = p_lines.map_while(Result::ok).collect();
    let (p_status, q_out) = (p.wait().unwrap(), q.wait_with_output().unwrap());
    assert!(p_status.success(), "the run lost an entry to gc: {rest:?}");
    assert!(q_out.status.success(), "{}", String::from_utf8_lossy(&q_out.stderr));
    assert!(gcs >= 2, "gc ran {gcs} times during the runs");
    // Both runs are done and recorded: gc now keeps exactly what their latest runs reference.
    t.pipe(["gc"]).success();
    assert!(t.cache.join(format!("nodes/{old_tok}.json")).exists(), "the latest run references tok at 64 again");
    t.run("p.yaml", &[]).success();
    assert!(std::fs::read_dir(t.cache.join("live")).unwrap().next().is_none(), "finished runs leave no pin files");
}
