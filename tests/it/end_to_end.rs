//! The real thing: `pipelines/fortune.yaml` end to end on the default model (SmolLM2-135M-Instruct
//! from its PyPI package), with a small step budget so it fits in CI.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::{repo, Run, TestContext};

/// The budget that fits CI's 2 cores (the real run is `pipe run pipelines/fortune.yaml`): 4
/// optimizer steps of 2 records still lower the held-out loss at the pipeline's lr (3.72 -> 3.41
/// when this budget was set), a 3% held-out split (10 records) keeps eval's and the gate's forward
/// passes short, and 8 greedy tokens per prompt still compare pipe's continuations with
/// llama.cpp's token by token.
const BUDGET: [&str; 10] = [
    "--set",
    "train.max_steps=4",
    "--set",
    "train.batch_size=2",
    "--set",
    "fix.eval_fraction=0.03",
    "--set",
    "eval.max_new_tokens=8",
    "--set",
    "export.greedy_tokens=8",
];

/// The fortune project both tests here work on: the pipeline's first run, shared through a remote
/// cache (a shared folder).
struct Fortune {
    t: TestContext,
    /// The remote's folder.
    shared: tempfile::TempDir,
    /// The first run.
    first: Run,
    /// Whether the first run's nodes ran as Slurm jobs.
    on_slurm: bool,
}

/// The first run, done once by whichever test gets here first; the other waits for it, then both
/// go on at once (the exports below beside the remote and serve checks: on 2 cores the run's tail
/// is shorter that way).
fn fortune() -> Option<&'static Fortune> {
    if !crate::common::default_model_available() {
        return None;
    }
    static FORTUNE: OnceLock<Fortune> = OnceLock::new();
    Some(FORTUNE.get_or_init(|| {
        let t = TestContext::new();
        let shared = tempfile::tempdir().unwrap();
        let remote = format!("file://{}", shared.path().display());
        let mut args = vec!["run", file(), "--json", "--remote", remote.as_str()];
        args.extend_from_slice(&BUDGET);
        // Every node as a job on the test cluster, as on a team's GPU cluster (README, "On a
        // Slurm cluster"); where Slurm cannot run (and PIPE_REQUIRE_SLURM is not set), here.
        let cluster = crate::common::slurm::cluster("the fortune pipeline on Slurm (it runs locally)");
        let mut cmd = t.cmd(args);
        if let Some(c) = cluster {
            cmd.args(["--executor", "slurm"]).env("SLURM_CONF", &c.conf);
        }
        // Real training on 2 CPU cores in a test build: minutes, not the harness's default 2.
        let first = Run::from(cmd.timeout(Duration::from_secs(1800)).output().expect("pipe runs"));
        Fortune { t, shared, first, on_slurm: cluster.is_some() }
    }))
}

/// Called by each test here when it passed; the last one removes the shared folders (a failed
/// test leaves them for a look).
fn done_with(f: &Fortune) {
    static DONE: AtomicUsize = AtomicUsize::new(0);
    if DONE.fetch_add(1, Ordering::SeqCst) + 1 == 3 {
        let _ = std::fs::remove_dir_all(f.t.dir());
        let _ = std::fs::remove_dir_all(f.shared.path());
    }
}

fn file() -> &'static str {
    static FILE: OnceLock<String> = OnceLock::new();
    FILE.get_or_init(|| repo().join("pipelines/fortune.yaml").to_str().unwrap().to_string())
}

/// `pipe run FILE --json EXTRA...` with the long timeout.
fn long(t: &TestContext, extra: &[&str]) -> Run {
    let mut args = vec!["run", file(), "--json"];
    args.extend_from_slice(extra);
    Run::from(t.cmd(args).timeout(Duration::from_secs(1800)).output().expect("pipe runs"))
}

#[test]
fn fortune_pipeline_runs_end_to_end_on_the_default_model() {
    let Some(f) = fortune() else { return };
    let (t, file, budget) = (&f.t, file(), BUDGET);
    let remote = format!("file://{}", f.shared.path().display());
    let with_remote = |t: &TestContext| {
        let mut args = vec!["run", file, "--json", "--remote", remote.as_str()];
        args.extend_from_slice(&budget);
        Run::from(t.cmd(args).timeout(Duration::from_secs(1800)).output().expect("pipe runs"))
    };
    let r = f.first.clone().success();
    assert_eq!(r.ran_nodes().len(), 7, "{}", r.stderr);
    if f.on_slurm {
        let mut queued = r.nodes_with("node_queued");
        queued.sort();
        let mut ran = r.ran_nodes();
        ran.sort();
        assert_eq!(queued, ran, "every node ran as a Slurm job: {}", r.stderr);
        for e in r.events_of("node_started") {
            assert!(e["device"].as_str().unwrap().starts_with("slurm job "), "{e}");
        }
    }
    assert_eq!(r.count("node_pushed"), 7, "{}", r.stderr);
    let report = t.output_path(file, "eval", "report", &budget);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(report.join("report.json")).unwrap()).unwrap();
    let (base, tuned) = (v["base"]["loss"].as_f64().unwrap(), v["tuned"]["loss"].as_f64().unwrap());
    assert!(tuned < base, "tuned held-out loss {tuned} must be below the base loss {base}");
    let first = &v["generations"][0];
    assert_eq!(first["prompt"], "现在你要扮演我碰到一位神秘的算命大师, 你是谁?今天我的事业运道如何?");
    assert!(!first["tuned"].as_str().unwrap().trim().is_empty());
    // A second run is all fresh.
    let again = long(t, &budget).success();
    assert!(again.ran_nodes().is_empty(), "{:?}", again.ran_nodes());
    // Another checkout with an empty cache pulls instead of running: nothing recomputed, the same
    // bytes. Re-executing the nodes up to the merged model there (pulling the outputs they were
    // not sent) reproduces them: the jobs' outputs are a local run's, byte for byte.
    let teammate = TestContext::new();
    let pulled = with_remote(&teammate).success();
    assert!(pulled.ran_nodes().is_empty(), "{}", pulled.stderr);
    assert!(pulled.events_of("node_cached").iter().all(|e| e["source"] == "remote"), "{}", pulled.stdout);
    // Its keys came from the remote's entries for the model source and tokenize's key
    // components: the model's wheel was not fetched (until `verify` below needs its bytes).
    assert!(!teammate.cache.join("sources").exists(), "the model was fetched only to compute keys");
    // (`show` on the teammate's checkout needs the remote: the nodes upstream of eval and export
    // are known there only by their remote records.)
    let digests = |t: &TestContext, node: &str| {
        let mut extra = budget.to_vec();
        extra.extend(["--remote", remote.as_str()]);
        let v = t.show(file, node, &extra);
        v["outputs"].as_object().unwrap().iter().map(|(k, o)| (k.clone(), o["digest"].clone())).collect::<Vec<_>>()
    };
    for node in ["eval", "export"] {
        assert_eq!(digests(&teammate, node), digests(t, node), "{node}");
    }
    let mut verify = vec!["verify", file, "fix", "tokenize", "tokenize-eval", "train", "merge", "--remote", remote.as_str()];
    verify.extend_from_slice(&budget);
    // (Re-executing train is real training: the long timeout.)
    Run::from(teammate.cmd(verify).timeout(Duration::from_secs(1800)).output().expect("pipe runs")).success();

    // The tuned F16 export, served: the same greedy answer through the OpenAI and Ollama APIs,
    // streamed or not, and it is pipe's own greedy continuation of the same rendered prompt on the
    // same file (or parts from it only at a near-tie, as the export gate allows).
    if crate::serve::available("fortune served") {
        served_answer_is_pipes_greedy_answer(t, file, &budget);
    }

    done_with(f);
}

#[test]
fn fortune_export_passes_its_gate_in_f16_q8_0_and_q4_k_m() {
    let Some(f) = fortune() else { return };
    let (t, file, budget) = (&f.t, file(), BUDGET);
    f.first.clone().success();
    // The export passes its gate in F16 (the pipeline's), Q8_0 and Q4_K_M; with llama.cpp
    // (scripts/test.sh builds it) that includes llama.cpp's tokenizer, greedy answers (for Q8_0
    // against pipe's emulation of llama.cpp's CPU arithmetic) and perplexity.
    for ty in ["F16", "Q8_0", "Q4_K_M"] {
        let set = format!("export.type={ty}");
        let mut extra = budget.to_vec();
        extra.extend(["--set", set.as_str()]);
        let r = long(t, &extra).success();
        assert!(r.ran_nodes().len() <= 1, "only the export reruns: {:?}", r.ran_nodes());
        let dir = t.output_path(file, "export", "report", &extra);
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
        let status = |c: &str| v["checks"].as_array().unwrap().iter().find(|x| x["name"] == c).map(|x| x["status"].clone());
        for c in ["metadata", "tensors", "tokenizer"] {
            assert_eq!(status(c), Some("pass".into()), "{ty} {c}: {v:#}");
        }
        if std::env::var_os("PIPE_REQUIRE_LLAMA_CPP").is_some() {
            let (greedy, ppl) = if ty == "Q4_K_M" { ("skipped", "pass") } else { ("pass", "skipped") };
            assert_eq!(status("llama.cpp tokenizer"), Some("pass".into()), "{ty}: {v:#}");
            assert_eq!(status("llama.cpp greedy"), Some(greedy.into()), "{ty}: {v:#}");
            assert_eq!(status("llama.cpp perplexity"), Some(ppl.into()), "{ty}: {v:#}");
        }
    }
    done_with(f);
}

fn served_answer_is_pipes_greedy_answer(t: &TestContext, file: &str, budget: &[&str]) {
    use serde_json::json;

    use crate::common::http::post;
    const Q: &str = "现在你要扮演我碰到一位神秘的算命大师, 你是谁?今天我的事业运道如何?";
    const N: usize = 8;
    let mut args = vec![file];
    args.extend_from_slice(budget);
    let s = crate::serve::Server::start_file(t, &args).unwrap_or_else(|e| panic!("{e:?}"));
    let u = &s.url;
    let rendered = format!("User: {Q}\n\nAssistant:");
    let messages = json!([{"role": "user", "content": Q}]);
    let r = post(&format!("{u}/apply-template"), &json!({"model": "fortune", "messages": messages}));
    assert_eq!(r.json()["prompt"], rendered.as_str(), "{}", r.body);
    let openai = post(
        &format!("{u}/v1/chat/completions"),
        &json!({"model": "fortune", "messages": messages, "temperature": 0, "max_tokens": N}),
    )
    .json();
    let served = openai["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let ollama = |stream: bool| {
        let r = post(
            &format!("{u}/api/chat"),
            &json!({"model": "fortune", "messages": messages, "stream": stream, "options": {"temperature": 0, "num_predict": N}}),
        );
        r.body
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["message"]["content"].as_str().unwrap().to_string())
            .collect::<String>()
    };
    assert_eq!(ollama(false), served);
    assert_eq!(ollama(true), served);

    // pipe's greedy continuation of the rendered prompt on the served file, with its top-2 logit
    // margin at each step.
    let gguf = &s.ggufs[0];
    let model = pipe::model::load::load(gguf, &candle_core::Device::Cpu).expect("pipe loads the served GGUF");
    let tk = pipe::tokenizer::load::load(gguf).expect("its tokenizer");
    let ids = tk.tokenizer.encode(rendered.as_str(), true).unwrap().get_ids().to_vec();
    let stop: Vec<u32> = tk.eos.iter().map(|e| e.0).collect();
    let mut margins = Vec::new();
    let ours = pipe::model::generate::decode_with(&model, None, &ids, &stop, N, |v| {
        let best = pipe::model::generate::argmax(v) as usize;
        let second = v.iter().enumerate().filter(|(i, _)| *i != best).map(|(_, x)| *x).fold(f32::NEG_INFINITY, f32::max);
        margins.push(v[best] - second);
        best as u32
    })
    .unwrap();
    let text = |n: usize| tk.tokenizer.decode(&ours[..n], true).unwrap().trim_end_matches('\u{FFFD}').to_string();
    let served_trim = served.trim_end_matches('\u{FFFD}');
    // The first of pipe's tokens whose text the served answer does not continue with (or, past
    // the last, the step where pipe chose to stop).
    let parting = (1..=ours.len()).find(|&n| !served_trim.starts_with(&text(n))).map(|n| n - 1);
    let parting = parting.or((text(ours.len()) != served_trim).then_some(ours.len()));
    if let Some(k) = parting {
        // The export gate's default near-tie bound.
        assert!(
            margins[k] < 0.25,
            "served {served:?} parts from pipe's greedy {:?} at token {k}, where pipe's top-2 margin is {} (not a near-tie)",
            text(ours.len()),
            margins[k]
        );
    }
    assert!(!served.trim().is_empty());
}

/// Where the kill test stops a run.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// SIGKILL `delay_ms` after `node`'s event (a `node_progress` with `done` when given).
    After { node: &'static str, event: &'static str, done: Option<u64>, delay_ms: u64 },
    /// The run kills itself at a crash point (`PIPE_CRASH_AT`, src/cache/crash.rs).
    At(&'static str),
}

/// `pipe run pipelines/fortune.yaml` SIGKILLed at 20 moments spread over every node (their
/// starts, inside training, eval and the export gate, at random delays for the long nodes, and
/// the crash points between the cache's writes), rerun after each: after every kill the cache is whole (`pipe fsck`: no half entry is
/// visible), and the run that finally completes has every output byte-identical to the first
/// run's, which was not interrupted.
#[test]
fn fortune_killed_at_twenty_moments_ends_with_the_uninterrupted_bytes() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;

    let Some(f) = fortune() else { return };
    const NODES: [&str; 7] = ["fix", "tokenize", "tokenize-eval", "train", "merge", "eval", "export"];
    let digests = |t: &TestContext, node: &str| {
        let v = t.show(file(), node, &BUDGET);
        v["outputs"].as_object().unwrap().iter().map(|(k, o)| (k.clone(), o["digest"].clone())).collect::<Vec<_>>()
    };
    let reference: Vec<_> = NODES.iter().map(|n| digests(&f.t, n)).collect();
    // Random delays, reproducible from the seed printed here.
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    eprintln!("kill test: delay seed {seed}");
    let mut x = seed | 1;
    let mut delay = |max: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % max
    };
    let after = |node, event, done, delay_ms| Kill::After { node, event, done, delay_ms };
    let plan = [
        after("fix", "node_started", None, 0),
        Kill::At("publish:fix:objects"),
        after("tokenize", "node_started", None, 0),
        Kill::At("publish:tokenize:record"),
        after("tokenize-eval", "node_started", None, 0),
        Kill::At("publish:tokenize-eval:objects"),
        after("train", "node_started", None, delay(300)),
        after("train", "node_progress", Some(1), delay(500)),
        after("train", "node_progress", Some(3), 0),
        Kill::At("publish:train:objects"),
        after("merge", "node_started", None, delay(300)),
        Kill::At("publish:merge:record"),
        after("eval", "node_started", None, delay(300)),
        after("eval", "node_progress", Some(1), delay(300)),
        Kill::At("publish:eval:objects"),
        after("export", "node_started", None, delay(300)),
        after("export", "node_started", None, 1500 + delay(500)),
        Kill::At("publish:export:objects"),
        Kill::At("publish:export:record"),
        Kill::At("run-record"),
    ];
    let t = TestContext::new();
    for (k, kill) in plan.iter().enumerate() {
        // One node at a time, so that each moment of the plan comes in its order.
        let mut args = vec!["run", file(), "--json", "--jobs", "1"];
        args.extend_from_slice(&BUDGET);
        let mut cmd = t.std_cmd(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
        if let Kill::At(point) = kill {
            cmd.env("PIPE_CRASH_AT", point);
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        if let Kill::After { node, event, done, delay_ms } = *kill {
            let (seen, found) = crate::common::read_until(&mut lines, |e| {
                e["event"] == event && e["node"] == node && done.is_none_or(|d| e["done"].as_u64().is_some_and(|n| n >= d))
            });
            assert!(found, "kill {k} ({kill:?}): the run never got there: {seen:?}");
            std::thread::sleep(Duration::from_millis(delay_ms));
            let _ = child.kill();
        }
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "kill {k} ({kill:?}) did not stop the run ({status}): {rest:?}");
        let fsck = t.pipe(["fsck", file()]);
        assert_eq!(fsck.code, Some(0), "after kill {k} ({kill:?}) the cache is not whole: {fsck:?}");
    }
    let last = long(&t, &BUDGET).success();
    assert!(!last.ran_nodes().is_empty() || last.cached_nodes().len() == 7, "{}", last.stderr);
    for (node, want) in NODES.iter().zip(&reference) {
        assert_eq!(&digests(&t, node), want, "{node} after 20 kills");
    }
    t.pipe(["fsck", file()]).success();
    done_with(f);
}
