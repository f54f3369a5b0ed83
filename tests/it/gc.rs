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
