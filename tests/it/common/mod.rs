//! The test harness: a [`TestContext`] is a temporary project folder with its own cache, and
//! [`Run`] is one finished `pipe` invocation with its `--json` events parsed.
//!
//! Every command runs the real binary (`CARGO_BIN_EXE_pipe`) in the project folder with
//! `--no-progress --color never --cache <cache>`, so tests never touch the repository's cache.

#![allow(dead_code)]

pub mod http;
pub mod s3;
pub mod slurm;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime};

use serde_json::Value;

/// The `pipe` binary under test.
pub const PIPE: &str = env!("CARGO_BIN_EXE_pipe");

/// The repository root (for fixtures).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A fixture under `tests/data/`.
pub fn fixture(rel: &str) -> PathBuf {
    repo().join("tests/data").join(rel)
}

/// Whether the default model's wheel is here for tests that run on it (scripts/test.sh fetches
/// it and sets `PIPE_TEST_GGUF`); otherwise says the test is skipped, or fails it when
/// `PIPE_REQUIRE_MODELS` is set (CI).
pub fn default_model_available() -> bool {
    if std::env::var_os("PIPE_TEST_GGUF").is_some() {
        return true;
    }
    assert!(std::env::var_os("PIPE_REQUIRE_MODELS").is_none(), "PIPE_TEST_GGUF must be set");
    eprintln!("skipping: the default model is fetched by scripts/test.sh");
    false
}

/// Blocks until the llama.cpp build that scripts/test.sh started in the background has built the
/// export gate's tools (`PIPE_TEST_LLAMA_CPP_STATUS` names the file it writes `ok` or `failed`
/// to); panics with the build log's place if it failed. Returns at once where the variable is not
/// set.
pub fn llama_cpp_ready() {
    static READY: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    if let Err(e) = READY.get_or_init(|| wait_for_status("PIPE_TEST_LLAMA_CPP_STATUS", "llama.cpp's tools")) {
        panic!("{e}");
    }
}

/// [`llama_cpp_ready`] for `llama-server`, which the same background build makes after the
/// gate's tools (`PIPE_TEST_LLAMA_SERVER_STATUS`).
pub fn llama_server_ready() {
    static READY: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    if let Err(e) = READY.get_or_init(|| wait_for_status("PIPE_TEST_LLAMA_SERVER_STATUS", "llama-server")) {
        panic!("{e}");
    }
}

fn wait_for_status(var: &str, what: &str) -> Result<(), String> {
    let Some(status) = std::env::var_os(var) else { return Ok(()) };
    let status = PathBuf::from(status);
    let deadline = std::time::Instant::now() + Duration::from_secs(1800);
    loop {
        match std::fs::read_to_string(&status) {
            Ok(s) if s.trim() == "ok" => return Ok(()),
            Ok(s) if !s.trim().is_empty() => {
                return Err(format!("building {what} failed ({}: {}); see target/llamacpp.log", status.display(), s.trim()))
            }
            _ if std::time::Instant::now() > deadline => return Err(format!("building {what} did not finish in 30 minutes")),
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// A temporary project folder with its own cache folder (`<dir>/cache-under-test`).
pub struct TestContext {
    dir: tempfile::TempDir,
    /// `--cache` for every command.
    pub cache: PathBuf,
}

impl TestContext {
    /// An empty project.
    pub fn new() -> TestContext {
        let dir = tempfile::Builder::new().prefix("pipe-it-").tempdir().expect("temp dir");
        let cache = dir.path().join("cache-under-test");
        TestContext { dir, cache }
    }

    /// A project with the tiny tokenizer copied to `tok/` and the tutorial's damaged
    /// `fortune.jsonl` copied to `data/fortune.jsonl`.
    pub fn with_fixtures() -> TestContext {
        let t = TestContext::new();
        t.copy_tokenizer();
        t.copy(&repo().join("pipelines/data/fortune.jsonl"), "data/fortune.jsonl");
        t
    }

    /// The project folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the project.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file (creating folders); returns its path.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&p, contents).expect("write");
        p
    }

    /// Reads a project file as text.
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).expect("read")
    }

    /// Copies a file into the project.
    pub fn copy(&self, from: &Path, rel: &str) -> PathBuf {
        let bytes = std::fs::read(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        self.write(rel, bytes)
    }

    /// Copies `tests/data/tiny-tokenizer` to `tok/`.
    pub fn copy_tokenizer(&self) {
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            self.copy(&fixture(&format!("tiny-tokenizer/{f}")), &format!("tok/{f}"));
        }
    }

    /// Writes `n` valid, distinct records as JSON Lines (about 280 bytes each).
    pub fn write_records(&self, rel: &str, n: usize) -> PathBuf {
        let text: String = (0..n).map(|i| format!("{}\n", record(i))).collect();
        self.write(rel, text)
    }

    /// A `pipe` command in the project folder with the test cache; `args` follow the global flags.
    pub fn cmd<I, S>(&self, args: I) -> assert_cmd::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        self.await_tools(&args);
        let mut c = assert_cmd::Command::new(PIPE);
        c.current_dir(self.dir()).env_remove("PIPE_CACHE").env_remove("PIPE_LOG").env_remove("RUST_LOG").env("NO_COLOR", "1");
        c.args(args);
        c.arg("--no-progress").arg("--color").arg("never").arg("--cache").arg(&self.cache);
        c.timeout(Duration::from_secs(120));
        c
    }

    /// A plain `std::process::Command` for `pipe` (for spawning), configured like [`Self::cmd`].
    pub fn std_cmd<I, S>(&self, args: I) -> std::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        self.await_tools(&args);
        let mut c = std::process::Command::new(PIPE);
        c.current_dir(self.dir()).env_remove("PIPE_CACHE").env_remove("PIPE_LOG").env_remove("RUST_LOG").env("NO_COLOR", "1");
        c.args(args);
        c.arg("--no-progress").arg("--color").arg("never").arg("--cache").arg(&self.cache);
        c
    }

    /// A command on a pipeline with an `export-gguf` node may run llama.cpp (the gate), which
    /// scripts/test.sh builds while the tests already run: wait for that build first.
    fn await_tools<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) {
        let exports = args.iter().any(|a| {
            let p = self.dir().join(a.as_ref());
            p.extension().is_some_and(|e| e == "yaml" || e == "yml")
                && std::fs::read_to_string(&p).is_ok_and(|text| text.contains("export-gguf"))
        });
        if exports {
            llama_cpp_ready();
        }
    }

    /// Runs any `pipe` command to completion.
    pub fn pipe<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Run::from(self.cmd(args).output().expect("pipe runs"))
    }

    /// `pipe run FILE --json EXTRA...`.
    pub fn run(&self, file: &str, extra: &[&str]) -> Run {
        let mut args = vec!["run", file, "--json"];
        args.extend_from_slice(extra);
        self.pipe(args)
    }

    /// `pipe show FILE NODE --json`, parsed.
    pub fn show(&self, file: &str, node: &str, extra: &[&str]) -> Value {
        let mut args = vec!["show", file, node, "--json"];
        args.extend_from_slice(extra);
        let r = self.pipe(args).success();
        serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("show --json is not JSON ({e}): {}", r.stdout))
    }

    /// The cached path of `node`'s `output` (via `pipe show --json`).
    pub fn output_path(&self, file: &str, node: &str, output: &str, extra: &[&str]) -> PathBuf {
        let v = self.show(file, node, extra);
        let p =
            v["outputs"][output]["path"].as_str().unwrap_or_else(|| panic!("`{node}` has no cached output `{output}`: {v:#}"));
        PathBuf::from(p)
    }

    /// The cached output parsed as JSON.
    pub fn output_json(&self, file: &str, node: &str, output: &str, extra: &[&str]) -> Value {
        let p = self.output_path(file, node, output, extra);
        serde_json::from_slice(&std::fs::read(&p).expect("output readable")).expect("output is JSON")
    }

    /// Node records in the cache (`nodes/*.json`).
    pub fn node_records(&self) -> Vec<PathBuf> {
        list(&self.cache.join("nodes"), "json")
    }

    /// Every file under the cache, relative, sorted (to compare before/after).
    pub fn cache_listing(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.cache, &self.cache, &mut out);
        out.sort();
        out
    }

    /// Sets a file's mtime `secs` seconds into the future without changing its bytes.
    pub fn touch_forward(&self, rel: &str, secs: u64) {
        let f = std::fs::File::options().write(true).open(self.path(rel)).expect("open for touch");
        f.set_modified(SystemTime::now() + Duration::from_secs(secs)).expect("set mtime");
    }
}

/// One valid record, distinct for every `i`, mixing Chinese and English like the tutorial data.
pub fn record(i: usize) -> String {
    serde_json::json!({
        "instruction": format!("大师，请帮我看看第{i}号的运势如何？"),
        "input": if i.is_multiple_of(3) { format!("born {}", 1980 + i % 40) } else { String::new() },
        "output": format!("Record {i}: 老夫掐指一算，你近日财运平稳，贵人在东南方。Keep calm and carry on, the stars favour the patient."),
    })
    .to_string()
}

fn list(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == ext)).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap_or(&p).display().to_string());
        }
    }
}

/// A finished `pipe` invocation.
#[derive(Clone)]
pub struct Run {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\n--- stdout\n{}\n--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

impl Run {
    /// Asserts exit 0.
    #[track_caller]
    pub fn success(self) -> Run {
        assert_eq!(self.code, Some(0), "expected success: {self:?}");
        self
    }

    /// Asserts this exit code.
    #[track_caller]
    pub fn code(self, code: i32) -> Run {
        assert_eq!(self.code, Some(code), "expected exit {code}: {self:?}");
        self
    }

    /// The `--json` events on stdout (lines that are not JSON objects are an error).
    pub fn events(&self) -> Vec<Value> {
        events_of(&self.stdout)
    }

    /// Events of one type (`node_started`, ...).
    pub fn events_of(&self, event: &str) -> Vec<Value> {
        self.events().into_iter().filter(|e| e["event"] == event).collect()
    }

    /// How many events of one type.
    pub fn count(&self, event: &str) -> usize {
        self.events_of(event).len()
    }

    /// Node names of the events of one type, in order.
    pub fn nodes_with(&self, event: &str) -> Vec<String> {
        self.events_of(event).iter().map(|e| e["node"].as_str().expect("event has a node").to_string()).collect()
    }

    /// Nodes that executed (`node_started`), sorted.
    pub fn ran_nodes(&self) -> Vec<String> {
        let mut v = self.nodes_with("node_started");
        v.sort();
        v
    }

    /// Nodes served from the cache (`node_cached`), sorted.
    pub fn cached_nodes(&self) -> Vec<String> {
        let mut v = self.nodes_with("node_cached");
        v.sort();
        v
    }

    /// Nodes that failed (`node_failed`), sorted.
    pub fn failed_nodes(&self) -> Vec<String> {
        let mut v = self.nodes_with("node_failed");
        v.sort();
        v
    }

    /// Nodes skipped (`node_skipped`), sorted.
    pub fn skipped_nodes(&self) -> Vec<String> {
        let mut v = self.nodes_with("node_skipped");
        v.sort();
        v
    }
}

/// Parses `--json` output: one JSON object per non-empty line, each with `schema_version`.
pub fn events_of(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON event ({e}): {l}"));
            assert_eq!(v["schema_version"], 1, "event without schema_version 1: {l}");
            v
        })
        .collect()
}

/// Sorted owned strings, for comparing node lists.
pub fn names(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// The fix -> tokenize pipeline over `data/fortune.jsonl` and `tok/tokenizer.json`.
pub const FORTUNE: &str = "\
name: fortune-test
nodes:
  fix:
    kind: fix-json
    inputs:
      records: data/fortune.jsonl
    params:
      on_error: skip
  tokenize:
    kind: tokenize
    inputs:
      records: fix.records
      tokenizer: tok/tokenizer.json
    params:
      max_length: 64
";

/// Escapes a string for use in a regex (insta filters).
pub fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// miette wraps long messages at 100 columns, continuing them on lines that start with `  │ `;
/// where the wrap falls depends on the length of the temp folder's path. Joins those lines so
/// snapshots do not depend on where the test's temp folder is.
pub fn unwrap_diagnostics(text: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        match (line.strip_prefix("  │ "), out.last_mut()) {
            (Some(rest), Some(prev)) if prev.starts_with("  × ") => {
                prev.push(' ');
                prev.push_str(rest);
            }
            _ => out.push(line.trim_end().to_string()),
        }
    }
    out.join("\n")
}

/// Reads JSON events from a spawned process's stdout until one matches, returning the lines read.
pub fn read_until(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    pred: impl Fn(&Value) -> bool,
) -> (Vec<String>, bool) {
    let mut seen = Vec::new();
    for line in lines {
        let line = line.expect("read stdout");
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        seen.push(line);
        if pred(&v) {
            return (seen, true);
        }
    }
    (seen, false)
}

/// The Python interpreter for reference scripts (`PYTHON`, else `python3`) when it can import
/// `tokenizers`. `None` means skip, unless `PIPE_REQUIRE_PYTHON=1`, which makes it a failure.
pub fn python_with_tokenizers(test: &str) -> Option<String> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&python)
        .args(["-c", "import tokenizers"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Some(python);
    }
    if std::env::var("PIPE_REQUIRE_PYTHON").as_deref() == Ok("1") {
        panic!("{test}: PIPE_REQUIRE_PYTHON=1 but `{python} -c 'import tokenizers'` fails (pip install tokenizers)");
    }
    eprintln!("SKIPPED {test}: `{python}` cannot import `tokenizers` (pip install tokenizers; set PIPE_REQUIRE_PYTHON=1 to make this a failure)");
    None
}
