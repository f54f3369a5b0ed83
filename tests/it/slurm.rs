//! Nodes run as Slurm jobs on a real one-node cluster (`scripts/slurm-cluster.sh`: Debian's
//! slurm-wlm and munge, started once per test binary and stopped at its exit): every node a job
//! with the same outputs as a local run, a training job cancelled mid-run resumes to the same
//! bytes, time limits and failing nodes reported with Slurm's reason, two orchestrators on one
//! pipeline compute each key once. Skipped with a message where Slurm cannot be installed or
//! started, unless `PIPE_REQUIRE_SLURM=1`. Bad `resources:` need no cluster.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::slurm::{cluster, Cluster};
use crate::common::{events_of, names, read_until, Run, TestContext};

/// fix-json -> tokenize, and a random model: three small nodes (as in tests/it/remote.rs).
const PIPELINE: &str = r#"name: on-slurm
nodes:
  fix: { kind: fix-json, inputs: { records: data/fortune.jsonl }, params: { eval_fraction: 0.1 } }
  tok: { kind: tokenize, inputs: { records: fix.train, tokenizer: tok/tokenizer.json }, params: { max_length: 64 } }
  base:
    kind: random-model
    inputs: { tokenizer: tok/tokenizer.json }
    params: { shape: tiny, layers: 2, vocab: 1024, seed: 5 }
"#;

fn project(yaml: &str) -> TestContext {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", yaml);
    t
}

/// `pipe run p.yaml --json EXTRA...` against the cluster, with `env`.
fn run_on(t: &TestContext, c: &Cluster, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let mut args = vec!["run", "p.yaml", "--json"];
    args.extend_from_slice(extra);
    let mut cmd = t.cmd(args);
    cmd.env("SLURM_CONF", &c.conf).timeout(Duration::from_secs(300));
    for (k, v) in env {
        cmd.env(k, v);
    }
    Run::from(cmd.output().expect("pipe runs"))
}

/// Each node's output digests, sorted.
fn digests(t: &TestContext, nodes: &[&str]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for n in nodes {
        let v = t.show("p.yaml", n, &[]);
        for (k, o) in v["outputs"].as_object().unwrap() {
            out.push((n.to_string(), k.clone(), o["digest"].as_str().unwrap().to_string()));
        }
    }
    out.sort();
    out
}

#[test]
fn with_executor_slurm_every_node_runs_as_a_job_and_outputs_equal_a_local_run() {
    let Some(c) = cluster("with_executor_slurm_every_node_runs_as_a_job_and_outputs_equal_a_local_run") else { return };
    let t = project(PIPELINE);
    let r = run_on(&t, c, &["--executor", "slurm"], &[]).success();
    let queued = r.events_of("node_queued");
    let mut jobs: Vec<String> = queued.iter().map(|e| e["job"].as_str().unwrap().to_string()).collect();
    assert_eq!(r.nodes_with("node_queued").len(), 3, "{r:?}");
    jobs.sort();
    jobs.dedup();
    assert_eq!(jobs.len(), 3, "one job per node: {jobs:?}");
    assert!(jobs.iter().all(|j| j.parse::<u64>().is_ok()), "{jobs:?}");
    assert_eq!(r.ran_nodes(), names(&["base", "fix", "tok"]), "{r:?}");
    for e in r.events_of("node_started") {
        assert!(e["device"].as_str().unwrap().starts_with("slurm job "), "{e}");
    }
    assert!(r.stderr.contains("Queued   fix (fix-json) as Slurm job"), "{}", r.stderr);
    let local = project(PIPELINE);
    local.run("p.yaml", &[]).success();
    assert_eq!(digests(&t, &["fix", "tok", "base"]), digests(&local, &["fix", "tok", "base"]));
    // Where a node ran is not part of its key: the local executor finds everything fresh.
    let again = run_on(&t, c, &["--executor", "local"], &[]).success();
    assert_eq!(again.cached_nodes(), names(&["base", "fix", "tok"]), "{again:?}");
    // A per-node executor: only `tok` goes to the cluster after a change to it.
    let yaml = PIPELINE.replace("params: { max_length: 64 } }", "params: { max_length: 96 }, executor: slurm }");
    t.write("p.yaml", &yaml);
    let mixed = run_on(&t, c, &[], &[]).success();
    assert_eq!(mixed.nodes_with("node_queued"), ["tok"], "{mixed:?}");
}

#[test]
fn a_job_over_its_time_limit_fails_the_node_with_slurms_reason() {
    let Some(c) = cluster("a_job_over_its_time_limit_fails_the_node_with_slurms_reason") else { return };
    let yaml = "name: slow\nnodes:\n  fix:\n    kind: fix-json\n    inputs: { records: data/fortune.jsonl }\n    executor: slurm\n    resources: { time: 1 }\n";
    let t = project(yaml);
    let r = run_on(&t, c, &[], &[("PIPE_EXEC_NODE_HOLD_SECS", "600")]).code(1);
    let failed = r.events_of("node_failed");
    assert_eq!(failed.len(), 1, "{r:?}");
    let error = failed[0]["error"].as_str().unwrap();
    assert!(error.contains("TIMEOUT") && error.contains("TimeLimit"), "{error}");
    let log = failed[0]["log"].as_str().unwrap();
    assert!(log.contains(".slurm-") && std::path::Path::new(log).exists(), "{log}");
    assert!(r.stderr.contains("TIMEOUT"), "{}", r.stderr);
}

#[test]
fn a_job_whose_node_fails_reports_slurms_state_and_the_nodes_error() {
    let Some(c) = cluster("a_job_whose_node_fails_reports_slurms_state_and_the_nodes_error") else { return };
    let yaml = "name: bad\nnodes:\n  fix:\n    kind: fix-json\n    inputs: { records: data/fortune.jsonl }\n    params: { on_error: fail }\n";
    let t = project(yaml);
    let r = run_on(&t, c, &["--executor", "slurm"], &[]).code(1);
    let failed = r.events_of("node_failed");
    assert_eq!(failed.len(), 1, "{r:?}");
    let error = failed[0]["error"].as_str().unwrap();
    assert!(error.contains("FAILED") && error.contains("NonZeroExitCode") && error.contains("exit code 1:0"), "{error}");
    // The node's own error, relayed from the job.
    assert!(error.contains("bad record") || error.contains("line"), "{error}");
    assert!(t.node_records().is_empty());
}

#[test]
fn two_orchestrators_on_one_pipeline_compute_each_key_once_through_lease_files() {
    let Some(c) = cluster("two_orchestrators_on_one_pipeline_compute_each_key_once_through_lease_files") else { return };
    let t = project(PIPELINE);
    let spawn = || {
        t.std_cmd(["run", "p.yaml", "--json", "--executor", "slurm"])
            .env("SLURM_CONF", &c.conf)
            .env("PIPE_EXEC_NODE_HOLD_SECS", "2")
            // As on two machines: only the lease files exclude (flock is per machine there).
            .env("PIPE_LOCK", "lease-only")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pipe")
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (Run::from(a.wait_with_output().unwrap()).success(), Run::from(b.wait_with_output().unwrap()).success());
    let mut queued = a.nodes_with("node_queued");
    queued.extend(b.nodes_with("node_queued"));
    queued.sort();
    assert_eq!(queued, names(&["base", "fix", "tok"]), "each key submitted once in all\nA: {a:?}\nB: {b:?}");
    let mut ran = a.ran_nodes();
    ran.extend(b.ran_nodes());
    ran.sort();
    assert_eq!(ran, names(&["base", "fix", "tok"]), "each key computed once in all");
    assert!(a.count("node_waiting") + b.count("node_waiting") >= 1, "the two never met on a key:\nA: {a:?}\nB: {b:?}");
    assert_eq!(t.node_records().len(), 3);
    // Every lease is gone.
    let leases: Vec<_> = std::fs::read_dir(t.cache.join("locks"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".lease"))
        .map(|e| e.file_name())
        .collect();
    assert!(leases.is_empty(), "{leases:?}");
}

/// The tiny training pipeline of tests/it/training.rs, its lora-train on Slurm (`on_slurm`) or
/// local.
fn training_project(steps: u32, on_slurm: bool) -> TestContext {
    let t = TestContext::with_fixtures();
    crate::training::tiny_model(&t, "model", pipe::model::config::Arch::Llama, 32);
    t.write(
        "p.yaml",
        format!(
            r#"name: train-on-slurm
nodes:
  fix: {{ kind: fix-json, inputs: {{ records: data/fortune.jsonl }}, params: {{ eval_fraction: 0.1 }} }}
  tok: {{ kind: tokenize, inputs: {{ records: fix.train, tokenizer: model }}, params: {{ max_length: 64 }} }}
  train:
    kind: lora-train
    executor: {}
    resources: {{ cpus: 1, time: "10:00" }}
    inputs: {{ model: model, dataset: tok.dataset }}
    params: {{ max_steps: {steps}, batch_size: 4, grad_accum: 2, lr: 0.05, save_steps: 1, logging_steps: 1, r: 4 }}
"#,
            if on_slurm { "slurm" } else { "local" }
        ),
    );
    t
}

fn adapter_digest(t: &TestContext) -> String {
    t.show("p.yaml", "train", &[])["outputs"]["adapter"]["digest"].as_str().unwrap().to_string()
}

#[test]
fn scancel_of_a_training_job_then_a_rerun_resumes_and_ends_byte_identical() {
    let Some(c) = cluster("scancel_of_a_training_job_then_a_rerun_resumes_and_ends_byte_identical") else { return };
    let steps = 30;
    let reference = training_project(steps, false);
    reference.run("p.yaml", &[]).success();
    let want = adapter_digest(&reference);

    let t = training_project(steps, true);
    let mut child = t
        .std_cmd(["run", "p.yaml", "--json"])
        .env("SLURM_CONF", &c.conf)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (seen, found) = read_until(&mut lines, |e| e["event"] == "node_queued" && e["node"] == "train");
    assert!(found, "train was never queued: {seen:?}");
    let job = events_of(seen.last().unwrap())[0]["job"].as_str().unwrap().to_string();
    // Cancel once a few checkpoints exist.
    let work = t.cache.join("work");
    let start = Instant::now();
    let mut cancelled_at = None;
    while start.elapsed() < Duration::from_secs(180) {
        let newest = std::fs::read_dir(&work)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|k| std::fs::read_dir(k.path()).into_iter().flatten().flatten())
            .filter_map(|c| c.file_name().to_str()?.strip_prefix("checkpoint-")?.parse::<u64>().ok())
            .max();
        if newest.is_some_and(|n| n >= 4) {
            let out = std::process::Command::new("scancel").arg(&job).env("SLURM_CONF", &c.conf).output().unwrap();
            assert!(out.status.success(), "{out:?}");
            cancelled_at = newest;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let cancelled_at = cancelled_at.unwrap_or_else(|| panic!("job {job} never checkpointed step 4"));
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "a cancelled job fails the node");
    let events = events_of(&rest.join("\n"));
    let failed = events.iter().find(|e| e["event"] == "node_failed").expect("node_failed");
    assert!(failed["error"].as_str().unwrap().contains("CANCELLED"), "{failed}");
    assert!(cancelled_at < steps as u64, "training finished before the cancel");

    let r = run_on(&t, c, &[], &[]).success();
    let summary = r.events_of("node_finished").into_iter().find(|e| e["node"] == "train").expect("train ran")["summary"].clone();
    assert!(summary.as_str().unwrap().contains("resumed at step"), "{summary}");
    assert_eq!(adapter_digest(&t), want, "cancelled at step {cancelled_at}, resumed on Slurm: adapter differs from a local run");
}

#[test]
fn bad_resources_and_executors_are_located_errors() {
    let t = project(
        "name: bad\ndefaults:\n  resources: { partition: \"a b\" }\nnodes:\n  fix:\n    kind: fix-json\n    inputs: { records: data/fortune.jsonl }\n    executor: slurmm\n    resources:\n      time: 0\n      mem: 4GB\n      cpus: 0\n      gpu: 1\n      extra: [\"--output=x\", [3]]\n",
    );
    let r = t.pipe(["run", "p.yaml"]).code(2);
    let err = crate::common::unwrap_diagnostics(&r.stderr);
    for want in [
        "resources of defaults: `partition`: must be a name",
        "`executor` must be one of local, slurm",
        "did you mean `slurm`?",
        "resources of node `fix`: `time`: a time limit of zero",
        "`mem`: `4GB` is not a Slurm memory size",
        "`cpus`: must be a number of CPUs (1 or more), found `0`",
        "unknown key `gpu` in resources of node `fix`",
        "did you mean `gpus`?",
        "`extra`: `--output` is set by pipe itself",
        "`extra`: each item must be a string",
        "p.yaml:10:13",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
    assert!(t.node_records().is_empty());
}

#[test]
fn pipe_status_shows_a_running_job_and_ctrl_c_cancels_it_and_frees_the_key() {
    let Some(c) = cluster("pipe_status_shows_a_running_job_and_ctrl_c_cancels_it_and_frees_the_key") else { return };
    let yaml =
        "name: held\nnodes:\n  fix:\n    kind: fix-json\n    inputs: { records: data/fortune.jsonl }\n    executor: slurm\n";
    let t = project(yaml);
    let mut child = t
        .std_cmd(["run", "p.yaml", "--json"])
        .env("SLURM_CONF", &c.conf)
        .env("PIPE_EXEC_NODE_HOLD_SECS", "120")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (seen, found) = read_until(&mut lines, |e| e["event"] == "node_queued");
    assert!(found, "never queued: {seen:?}");
    let job = events_of(seen.last().unwrap())[0]["job"].as_str().unwrap().to_string();
    // `pipe status` sees the job (pending, then running on the node).
    let start = Instant::now();
    let status = loop {
        let mut cmd = t.cmd(["status", "p.yaml"]);
        cmd.env("SLURM_CONF", &c.conf);
        let s = Run::from(cmd.output().unwrap()).success();
        if s.stdout.contains("running") || start.elapsed() > Duration::from_secs(30) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        status.stdout.contains("slurm     fix") && status.stdout.contains(&format!("Slurm job {job} running")),
        "{}",
        status.stdout
    );
    // Ctrl-C: the job is cancelled, the lease removed, exit 130.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("cancelling Slurm job(s) {job}")));
    let state = || {
        let o =
            std::process::Command::new("scontrol").args(["show", "job", "-o", &job]).env("SLURM_CONF", &c.conf).output().unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let start = Instant::now();
    while !state().contains("JobState=CANCELLED") && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(state().contains("JobState=CANCELLED"), "{}", state());
    let leases: Vec<_> = std::fs::read_dir(t.cache.join("locks"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".lease"))
        .collect();
    assert!(leases.is_empty(), "Ctrl-C left a lease: {leases:?}");
    // The key is free at once: a rerun runs it.
    let r = run_on(&t, c, &[], &[]).success();
    assert_eq!(r.ran_nodes(), names(&["fix"]), "{r:?}");
}

#[test]
fn exec_node_refuses_a_key_other_than_the_one_it_computes_and_runs_under_the_right_one() {
    let t = project(PIPELINE);
    let r = t.pipe(["exec-node", "p.yaml", "fix", "--key", "0123abcd", "--json"]).code(1);
    assert!(r.stderr.contains("the job computed key") && r.stderr.contains("the orchestrator 0123abcd"), "{r:?}");
    assert_eq!(r.count("node_failed"), 1, "{r:?}");
    assert!(t.node_records().is_empty());
    // Under the key `pipe status` computes, it runs the node into the cache like `pipe run`.
    let s = t.pipe(["status", "p.yaml", "--json"]).success();
    let v: serde_json::Value = serde_json::from_str(s.stdout.trim()).unwrap();
    let key = v["nodes"][0]["status"]["key"].as_str().unwrap().to_string();
    let ok = t.pipe(["exec-node", "p.yaml", "fix", "--key", &key, "--json"]).success();
    assert_eq!(ok.ran_nodes(), names(&["fix"]), "{ok:?}");
    assert_eq!(t.run("p.yaml", &["--target", "fix"]).success().cached_nodes(), names(&["fix"]));
}
