//! `pipe serve` on a tiny random model's F16 export, with a real llama.cpp `llama-server`: the
//! Ollama and OpenAI APIs give the same greedy answer streamed and not, the official Python
//! clients talk to it, the chat template reaches llama-server intact, 16 streaming chats at once
//! all complete; bad requests get 400/404/405; and the lifecycle: a busy port, no llama.cpp, a
//! failing export, a child that dies, SIGTERM and SIGKILL (no orphan `llama-server`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pipe::model::config::Arch;
use serde_json::{json, Value};

use crate::common::http::{get, post, request};
use crate::common::{llama_server_ready, Run, TestContext};
use crate::training::tiny_model;

const QUESTION: &str = "现在你要扮演我碰到一位神秘的算命大师, 你是谁?今天我的事业运道如何?";

/// llama.cpp's `llama-server` is needed; `false` means skip (not in CI, where it is required).
fn have_llama_server(test: &str) -> bool {
    llama_server_ready();
    let found = std::env::var_os("PIPE_LLAMA_CPP").is_some_and(|d| std::path::Path::new(&d).join("llama-server").is_file());
    if !found {
        assert!(std::env::var_os("PIPE_REQUIRE_LLAMA_CPP").is_none(), "{test}: PIPE_LLAMA_CPP has no llama-server");
        eprintln!("SKIPPED {test}: no llama-server in PIPE_LLAMA_CPP (scripts/install-llamacpp.sh builds it)");
    }
    found
}

/// Whether `pipe serve` can be tested here (llama-server built); panics where it is required.
pub fn available(test: &str) -> bool {
    have_llama_server(test)
}

/// A project with a tiny random model exported as F16 in the training format (`seed`).
fn project() -> TestContext {
    let t = TestContext::new();
    tiny_model(&t, "model", Arch::Llama, 64);
    t.write(
        "p.yaml",
        "name: tiny-serve\nnodes:\n  export:\n    kind: export-gguf\n    inputs: { model: model }\n    params: { type: F16, format: seed, name: fortune, pre: gpt-2, verify: false }\n",
    );
    t
}

/// A running `pipe serve --json`.
pub struct Server {
    child: Child,
    pub url: String,
    pub pids: Vec<u32>,
    /// The served GGUF files, in the event's order.
    pub ggufs: Vec<std::path::PathBuf>,
    /// stdout lines after the `serving` event.
    later: Arc<Mutex<Vec<String>>>,
    stderr: std::path::PathBuf,
}

impl Server {
    /// Starts `pipe serve p.yaml --port 0 --json EXTRA...`; `Err` with stdout and stderr when it
    /// exits before serving.
    fn start(t: &TestContext, extra: &[&str]) -> Result<Server, (Option<i32>, String, String)> {
        let mut args = vec!["p.yaml"];
        args.extend_from_slice(extra);
        Server::start_file(t, &args)
    }

    /// Starts `pipe serve ARGS... --port 0 --json --threads 1`.
    pub fn start_file(t: &TestContext, args: &[&str]) -> Result<Server, (Option<i32>, String, String)> {
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stderr = t.path(&format!("serve-{n}.stderr"));
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        all.extend(["--port", "0", "--json", "--threads", "1"]);
        let mut child = t
            .std_cmd(all)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("pipe serve starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = Vec::new();
        for line in lines.by_ref() {
            let line = line.expect("stdout");
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            seen.push(line);
            if v["event"] == "serving" {
                let url = v["url"].as_str().unwrap().to_string();
                let pids = v["models"].as_array().unwrap().iter().map(|m| m["pid"].as_u64().unwrap() as u32).collect();
                let ggufs = v["models"].as_array().unwrap().iter().map(|m| m["gguf"].as_str().unwrap().into()).collect();
                let later = Arc::new(Mutex::new(Vec::new()));
                let sink = later.clone();
                std::thread::spawn(move || {
                    for l in lines.map_while(Result::ok) {
                        sink.lock().unwrap().push(l);
                    }
                });
                return Ok(Server { child, url, pids, ggufs, later, stderr });
            }
        }
        let status = child.wait().unwrap();
        Err((status.code(), seen.join("\n"), std::fs::read_to_string(&stderr).unwrap_or_default()))
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    /// Waits for it to exit; its exit code.
    fn wait(&mut self, within: Duration) -> Option<i32> {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(t0.elapsed() < within, "pipe serve did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether process `pid` is gone (a zombie counts as gone: it runs nothing).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) == Some("Z"),
    }
}

fn wait_gone(pid: u32) {
    let t0 = Instant::now();
    while !gone(pid) {
        assert!(t0.elapsed() < Duration::from_secs(15), "llama-server {pid} outlived pipe serve");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The greedy chat request, in OpenAI's shape.
fn openai_chat(stream: bool) -> Value {
    json!({"model": "fortune", "messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "max_tokens": 12, "stream": stream})
}

/// The same, in Ollama's.
fn ollama_chat(stream: bool) -> Value {
    json!({"model": "fortune", "messages": [{"role": "user", "content": QUESTION}], "stream": stream,
           "options": {"temperature": 0, "num_predict": 12}})
}

/// The text of an SSE stream of chat chunks; panics unless it is well formed and ends with
/// `[DONE]`.
fn sse_text(body: &str) -> String {
    let mut text = String::new();
    let mut done = false;
    for line in body.lines().filter(|l| !l.is_empty()) {
        let data = line.strip_prefix("data: ").unwrap_or_else(|| panic!("not an SSE data line: {line:?}"));
        assert!(!done, "data after [DONE]: {body}");
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"));
        assert_eq!(v["object"], "chat.completion.chunk", "{data}");
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(c);
        }
    }
    assert!(done, "no [DONE]: {body}");
    text
}

/// The text of an Ollama NDJSON stream; panics unless every line is JSON, only the last has
/// `done: true`, and it carries the counts.
fn ndjson_text(body: &str, field: &str) -> String {
    let lines: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let (last, pieces) = lines.split_last().expect("at least one line");
    // Ollama answers with the name as the request wrote it (`fortune` or `fortune:latest`).
    assert!(pieces.iter().all(|v| v["done"] == false && v["model"].as_str().is_some_and(|m| m.starts_with("fortune"))), "{body}");
    assert_eq!(last["done"], true, "{body}");
    assert!(["stop", "length"].contains(&last["done_reason"].as_str().unwrap()), "{last}");
    assert!(last["eval_count"].as_u64().unwrap() > 0 && last["prompt_eval_count"].as_u64().unwrap() > 0, "{last}");
    assert!(last["total_duration"].as_u64().unwrap() > 0, "{last}");
    pieces
        .iter()
        .chain([last])
        .map(|v| if field == "message" { v["message"]["content"].as_str().unwrap() } else { v["response"].as_str().unwrap() })
        .collect()
}

#[test]
fn one_greedy_answer_through_both_apis_streamed_or_not_and_the_official_clients() {
    if !have_llama_server("serve") {
        return;
    }
    let t = project();
    let s = Server::start(&t, &[]).unwrap_or_else(|e| panic!("{e:?}"));
    let u = &s.url;

    // The catalogue.
    assert_eq!(get(&format!("{u}/api/version")).json()["version"].as_str().map(|v| !v.is_empty()), Some(true));
    let tags = get(&format!("{u}/api/tags")).json();
    let m = &tags["models"][0];
    assert_eq!((m["name"].as_str(), m["model"].as_str()), (Some("fortune"), Some("fortune")), "{tags}");
    assert_eq!(m["details"]["format"], "gguf");
    assert_eq!(m["details"]["quantization_level"], "F16");
    assert_eq!(get(&format!("{u}/v1/models")).json()["data"][0]["id"], "fortune");
    assert_eq!(get(&format!("{u}/api/ps")).json()["models"][0]["name"], "fortune");
    let show = post(&format!("{u}/api/show"), &json!({"model": "fortune"})).json();
    assert!(show["modelfile"].as_str().unwrap().contains("FROM"), "{show}");
    assert!(show["template"].as_str().unwrap().contains("User: "), "{show}");
    assert_eq!(show["model_info"]["general.architecture"], "llama");

    // The prompt llama-server renders from a chat is the training format, byte for byte.
    let rendered =
        post(&format!("{u}/apply-template"), &json!({"model": "fortune", "messages": [{"role": "user", "content": QUESTION}]}));
    assert_eq!(rendered.json()["prompt"], format!("User: {QUESTION}\n\nAssistant:"), "{}", rendered.body);

    // One greedy answer, five ways.
    let r = post(&format!("{u}/v1/chat/completions"), &openai_chat(false));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let answer = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(!answer.trim().is_empty(), "{v}");
    let r = post(&format!("{u}/v1/chat/completions"), &openai_chat(true));
    assert!(r.content_type.starts_with("text/event-stream"), "{}", r.content_type);
    assert_eq!(sse_text(&r.body), answer);
    let r = post(&format!("{u}/api/chat"), &ollama_chat(false)).json();
    assert_eq!(r["message"]["content"], answer.as_str(), "{r}");
    assert_eq!(r["done"], true);
    let r = post(&format!("{u}/api/chat"), &ollama_chat(true));
    assert_eq!(r.content_type, "application/x-ndjson");
    assert_eq!(ndjson_text(&r.body, "message"), answer);
    let r = post(
        &format!("{u}/api/generate"),
        &json!({"model": "fortune:latest", "prompt": QUESTION, "options": {"temperature": 0, "num_predict": 12}}),
    );
    assert_eq!(ndjson_text(&r.body, "response"), answer);

    // The official clients: list the model and get the same answer.
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let has_clients =
        std::process::Command::new(&python).args(["-c", "import openai, ollama"]).status().is_ok_and(|s| s.success());
    if has_clients {
        let script = r#"
import json, sys, openai, ollama
url, q = sys.argv[1], sys.argv[2]
o = openai.OpenAI(base_url=url + "/v1", api_key="none")
assert [m.id for m in o.models.list()] == ["fortune"]
a = o.chat.completions.create(model="fortune", messages=[{"role": "user", "content": q}], temperature=0, max_tokens=12)
c = ollama.Client(host=url)
assert [m.model for m in c.list().models] == ["fortune"]
b = c.chat(model="fortune", messages=[{"role": "user", "content": q}], options={"temperature": 0, "num_predict": 12})
s = "".join(p.message.content for p in c.chat(model="fortune", messages=[{"role": "user", "content": q}], stream=True, options={"temperature": 0, "num_predict": 12}))
print(json.dumps([a.choices[0].message.content, b.message.content, s]))
"#;
        let out = std::process::Command::new(&python).args(["-c", script, u, QUESTION]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got, vec![answer.clone(); 3]);
    } else {
        assert!(
            std::env::var_os("PIPE_REQUIRE_PYTHON").is_none(),
            "PIPE_REQUIRE_PYTHON=1 but `{python}` cannot import openai and ollama"
        );
        eprintln!("SKIPPED the official clients: `{python}` cannot import openai and ollama");
    }

    // 16 streaming chats at once (llama-server decodes 4, queues the rest): all complete, each
    // stream well formed.
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let u = u.clone();
            std::thread::spawn(move || {
                let q = format!("{QUESTION} ({i})");
                if i % 2 == 0 {
                    let mut req = ollama_chat(true);
                    req["messages"][0]["content"] = json!(q);
                    ndjson_text(&post(&format!("{u}/api/chat"), &req).body, "message")
                } else {
                    let mut req = openai_chat(true);
                    req["messages"][0]["content"] = json!(q);
                    sse_text(&post(&format!("{u}/v1/chat/completions"), &req).body)
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a streaming chat failed");
    }

    // Many requests one after another, streamed and not, through both APIs: each gets its answer.
    // (scripts/bench-serve.py once got a 503 here when the front end reused pooled connections
    // to llama-server, which closes them on its own; this loop did not catch that race, the front
    // end now opens one connection per request.)
    for i in 0..40 {
        let mut req = openai_chat(i % 2 == 1);
        req["max_tokens"] = json!(2);
        let r = post(&format!("{u}/v1/chat/completions"), &req);
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        let r = post(
            &format!("{u}/api/generate"),
            &json!({"model": "fortune", "prompt": "x", "stream": false, "options": {"num_predict": 1}}),
        );
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }

    // Bad requests: clear answers in each API's error shape, and the server goes on.
    let r = request("POST", &format!("{u}/api/chat"), Some("{\"model\": \"fortune\", \"messages\": [}"));
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("line 1 column"), "{}", r.body);
    let r = post(&format!("{u}/v1/chat/completions"), &json!({"model": "fortune"}));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["message"], "missing field `messages`");
    let r = post(&format!("{u}/api/chat"), &json!({"messages": []}));
    assert_eq!((r.status, r.json()["error"].as_str().unwrap()), (400, "missing field `model`"));
    let r = post(&format!("{u}/v1/chat/completions"), &json!({"model": "nope", "messages": []}));
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("fortune"), "{}", r.body);
    assert_eq!(post(&format!("{u}/api/generate"), &json!({"model": "nope", "prompt": "x"})).status, 404);
    assert_eq!(get(&format!("{u}/api/chat")).status, 405);
    assert_eq!(get(&format!("{u}/api/pull")).status, 404);
    let r = post(&format!("{u}/api/chat"), &json!({"model": "fortune", "messages": [{"content": "x"}]}));
    assert_eq!(r.json()["error"], "missing field `messages[0].role`");
    assert_eq!(post(&format!("{u}/api/chat"), &ollama_chat(false)).json()["message"]["content"], answer.as_str());
}

#[test]
fn serve_refuses_a_busy_port_a_missing_llama_cpp_and_a_failed_export_before_serving() {
    if !have_llama_server("serve errors") {
        return;
    }
    let t = project();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let r = t.pipe(["serve", "p.yaml", "--port", port.as_str()]).code(2);
    assert!(r.stderr.contains("cannot listen on 127.0.0.1") && r.stderr.contains("--port"), "{}", r.stderr);
    assert!(t.node_records().is_empty(), "nothing ran");

    let r =
        Run::from(t.cmd(["serve", "p.yaml", "--port", "0"]).env("PIPE_LLAMA_CPP", t.path("nowhere")).output().unwrap()).code(2);
    assert!(r.stderr.contains("llama-server") && r.stderr.contains("scripts/install-llamacpp.sh"), "{}", r.stderr);

    let r = t.pipe(["serve", "p.yaml", "nope", "--port", "0"]).code(2);
    assert!(r.stderr.contains("no node `nope`") && r.stderr.contains("export"), "{}", r.stderr);

    // An export that fails: its error, exit 1, no server.
    std::fs::write(t.path("model/config.json"), "{ not json").unwrap();
    let r = t.pipe(["serve", "p.yaml", "--port", "0"]).code(1);
    assert!(r.stderr.contains("config.json") && r.stderr.contains("nothing is served"), "{}", r.stderr);
    assert!(!r.stdout.contains("Serving"), "{}", r.stdout);
}

#[test]
fn a_dead_child_gets_503_sigterm_stops_cleanly_and_sigkill_leaves_no_orphan() {
    if !have_llama_server("serve lifecycle") {
        return;
    }
    let t = project();
    // A child that dies: reported with its log, requests get 503 at once.
    let mut s = Server::start(&t, &[]).unwrap_or_else(|e| panic!("{e:?}"));
    let pid = s.pids[0];
    // SAFETY: killing the test's own grandchild by the pid pipe reported.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
    wait_gone(pid);
    let t0 = Instant::now();
    let r = post(&format!("{}/api/chat", s.url), &ollama_chat(false));
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("exited"), "{}", r.body);
    assert_eq!(post(&format!("{}/v1/chat/completions", s.url), &openai_chat(true)).status, 503);
    let t0 = Instant::now();
    while !s.later.lock().unwrap().iter().any(|l| l.contains("\"model_exited\"")) {
        assert!(t0.elapsed() < Duration::from_secs(10), "no model_exited event: {:?}", s.later.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(&format!("{}/health", s.url)).json()["status"], "degraded");
    // SIGTERM: exit 0, a `serve_stopped` event.
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait(Duration::from_secs(20)), Some(0), "{}", s.stderr());
    std::thread::sleep(Duration::from_millis(200));
    assert!(s.later.lock().unwrap().iter().any(|l| l.contains("\"serve_stopped\"")), "{:?}", s.later.lock().unwrap());

    // SIGTERM with a live child stops it; SIGKILL of pipe leaves no child behind.
    for sig in [libc::SIGTERM, libc::SIGKILL] {
        let mut s = Server::start(&t, &[]).unwrap_or_else(|e| panic!("{e:?}"));
        let pid = s.pids[0];
        assert!(!gone(pid));
        s.signal(sig);
        s.wait(Duration::from_secs(20));
        wait_gone(pid);
    }
}
