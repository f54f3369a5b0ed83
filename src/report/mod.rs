//! Everything `pipe` tells the user while it works.
//!
//! One [`Reporter`] per command receives [`Event`]s from the scheduler and the nodes and renders
//! them three ways:
//! - `--json`: one JSON object a line on stdout, each with `schema_version` (for CI);
//! - a terminal on stderr: indicatif bars per running node (steps, throughput, ETA) with the
//!   node lines printed above them;
//! - no terminal (CI logs, pipes): plain timestamped lines on stderr, progress at most every
//!   few seconds per node.
//!
//! `-q` silences the human output (JSON is still printed when asked for).

pub mod plot;
pub mod progress;

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// Version of the `--json` event format.
pub const SCHEMA_VERSION: u32 = 1;

/// Something that happened during a run.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The run begins; `nodes` are the selected nodes in order.
    RunStarted { pipeline: String, nodes: Vec<String> },
    /// A node's outputs were found in the cache.
    /// `source` is `local`, or `remote` for an entry of the remote cache; `pulled_bytes` is what
    /// was downloaded for it (absent when its outputs were not needed here: only the record was
    /// read).
    NodeCached {
        node: String,
        kind: String,
        key: String,
        source: CacheSource,
        #[serde(skip_serializing_if = "Option::is_none")]
        pulled_bytes: Option<u64>,
    },
    /// A node's outputs were downloaded from the remote cache because a node that runs here
    /// needs them.
    NodePulled { node: String, key: String, files: u64, bytes: u64 },
    /// A node's outputs and record were uploaded to the remote cache.
    NodePushed { node: String, key: String, remote: String, uploaded: u64, skipped: u64, bytes: u64 },
    /// A node started running, with the reasons it was not fresh.
    NodeStarted { node: String, kind: String, key: String, device: String, reasons: Vec<String> },
    /// A node was submitted to Slurm as job `job`; the job's output goes to `log`.
    NodeQueued { node: String, kind: String, key: String, job: String, log: String },
    /// Progress inside a node.
    NodeProgress { node: String, done: u64, total: Option<u64>, unit: String, message: Option<String> },
    /// Another process is computing the same key; this one waits and reuses its result.
    NodeWaiting { node: String, key: String },
    /// A node finished and its outputs were published.
    NodeFinished {
        node: String,
        kind: String,
        key: String,
        duration_ms: u64,
        summary: Option<String>,
        outputs: HashMap<String, String>,
    },
    /// A node failed.
    NodeFailed { node: String, kind: String, error: String, log: String },
    /// A node did not run because an upstream node failed.
    NodeSkipped { node: String, because: String },
    /// The run is over.
    RunFinished { ok: bool, ran: usize, cached: usize, failed: usize, skipped: usize, duration_ms: u64 },
    /// `pipe serve`: a model's llama-server is starting (loading the GGUF file).
    ModelStarting { model: String, node: String, gguf: String, log: String },
    /// `pipe serve`: every model answers at `url` (Ollama API there, OpenAI API under `/v1`).
    Serving { url: String, models: Vec<ServedModel> },
    /// `pipe serve`: a model's llama-server exited while serving; requests for it get 503.
    ModelExited { model: String, status: String, log: String, tail: String },
    /// `pipe serve` stopped (a signal) and stopped its llama-server children.
    ServeStopped { reason: String },
}

/// One model of [`Event::Serving`].
#[derive(Debug, Clone, Serialize)]
pub struct ServedModel {
    /// The name clients ask for.
    pub name: String,
    /// The export-gguf node it comes from.
    pub node: String,
    /// The GGUF file.
    pub gguf: String,
    /// The llama-server child's process id.
    pub pid: u32,
    /// The child's log file.
    pub log: String,
}

/// Where a fresh node's entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheSource {
    /// This machine's cache folder.
    Local,
    /// The remote cache.
    Remote,
}

#[derive(Serialize)]
struct Envelope<'a> {
    schema_version: u32,
    #[serde(flatten)]
    event: &'a Event,
}

enum Human {
    Quiet,
    Plain,
    Bars(MultiProgress),
}

/// Renders events; shared by the scheduler's threads.
pub struct Reporter {
    json: bool,
    human: Human,
    start: Instant,
    bars: Mutex<HashMap<String, ProgressBar>>,
    last_line: Mutex<HashMap<String, Instant>>,
}

impl Reporter {
    /// Builds a reporter for the given flags.
    pub fn new(json: bool, quiet: bool, no_progress: bool) -> Reporter {
        let human = if quiet {
            Human::Quiet
        } else if !no_progress && std::io::stderr().is_terminal() {
            Human::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
        } else {
            Human::Plain
        };
        Reporter { json, human, start: Instant::now(), bars: Mutex::new(HashMap::new()), last_line: Mutex::new(HashMap::new()) }
    }

    /// A reporter that prints nothing (for `verify`'s inner runs and tests).
    pub fn silent() -> Reporter {
        Reporter { json: false, human: Human::Quiet, start: Instant::now(), bars: Mutex::default(), last_line: Mutex::default() }
    }

    /// Prints a human line (stderr), above any bars.
    pub fn line(&self, text: &str) {
        match &self.human {
            Human::Quiet => {}
            Human::Plain => {
                let _ = writeln!(std::io::stderr(), "[{}] {text}", clock());
            }
            Human::Bars(mp) => {
                let _ = mp.println(text);
            }
        }
    }

    /// Prints a warning line (even in bar mode; never in quiet mode).
    pub fn warn(&self, text: &str) {
        self.line(&format!("warning: {text}"));
    }

    /// Handles one event.
    pub fn emit(&self, ev: Event) {
        if self.json {
            let throttled = matches!(ev, Event::NodeProgress { .. }) && !self.due(&ev, Duration::from_millis(500));
            if !throttled {
                let mut out = std::io::stdout().lock();
                let _ = serde_json::to_writer(&mut out, &Envelope { schema_version: SCHEMA_VERSION, event: &ev });
                let _ = out.write_all(b"\n");
                let _ = out.flush();
            }
        }
        match &ev {
            Event::RunStarted { .. } => {}
            Event::NodeCached { node, kind, source: CacheSource::Local, .. } => self.line(&format!("Fresh    {node} ({kind})")),
            Event::NodeCached { node, kind, source: CacheSource::Remote, pulled_bytes, .. } => {
                self.finish_bar(node);
                let what = match pulled_bytes {
                    Some(b) => format!("pulled {}", fmt_bytes(*b)),
                    None => "record only: its outputs are not needed here".into(),
                };
                self.line(&format!("Fresh    {node} ({kind}) (remote: {what})"))
            }
            Event::NodePulled { node, files, bytes, .. } => {
                self.line(&format!("Pulled   {node}: {files} file(s), {} from the remote cache", fmt_bytes(*bytes)))
            }
            Event::NodePushed { node, remote, uploaded, skipped, bytes, .. } => self.line(&format!(
                "Pushed   {node} to {remote}: {uploaded} object(s), {}{}",
                fmt_bytes(*bytes),
                if *skipped > 0 { format!("; {skipped} already there") } else { String::new() }
            )),
            Event::NodeWaiting { node, .. } => {
                self.line(&format!("Waiting  {node}: the same key is being computed elsewhere (another node or pipe process)"))
            }
            Event::NodeStarted { node, kind, device, reasons, .. } => {
                let why = reasons.first().map(|r| format!(": {r}")).unwrap_or_default();
                let more = if reasons.len() > 1 { format!(" (+{} more)", reasons.len() - 1) } else { String::new() };
                self.line(&format!("Running  {node} ({kind}) [{device}]{why}{more}"));
                if let Human::Bars(mp) = &self.human {
                    let bar = mp.add(ProgressBar::new_spinner());
                    bar.set_style(spinner_style());
                    bar.set_prefix(node.clone());
                    bar.enable_steady_tick(Duration::from_millis(120));
                    self.bars.lock().expect("bars").insert(node.clone(), bar);
                }
            }
            Event::NodeQueued { node, kind, job, log, .. } => {
                self.line(&format!("Queued   {node} ({kind}) as Slurm job {job}\n         log: {log}"))
            }
            Event::NodeProgress { node, done, total, unit, message } => match &self.human {
                Human::Bars(_) => {
                    if let Some(bar) = self.bars.lock().expect("bars").get(node) {
                        if let Some(t) = total {
                            if bar.length() != Some(*t) {
                                bar.set_length(*t);
                                bar.set_style(bar_style(unit));
                            }
                        }
                        bar.set_position(*done);
                        if let Some(m) = message {
                            bar.set_message(m.clone());
                        }
                    }
                }
                Human::Plain if self.due(&ev, Duration::from_secs(5)) || total.is_some_and(|t| t == *done) => {
                    let of = total.map(|t| format!("/{t}")).unwrap_or_default();
                    let msg = message.as_ref().map(|m| format!(" {m}")).unwrap_or_default();
                    self.line(&format!("Progress {node}: {done}{of} {unit}{msg}"));
                }
                _ => {}
            },
            Event::NodeFinished { node, duration_ms, summary, .. } => {
                self.finish_bar(node);
                let s = summary.as_ref().map(|s| format!(": {s}")).unwrap_or_default();
                self.line(&format!("Finished {node} in {}{s}", fmt_ms(*duration_ms)));
            }
            Event::NodeFailed { node, kind, error, log } => {
                self.finish_bar(node);
                self.line(&format!("Failed   {node} ({kind}): {error}\n         log: {log}"));
            }
            Event::NodeSkipped { node, because } => self.line(&format!("Skipped  {node}: {because}")),
            Event::RunFinished { ok, ran, cached, failed, skipped, duration_ms } => {
                let mut parts = vec![format!("{ran} ran"), format!("{cached} fresh")];
                if *failed > 0 {
                    parts.push(format!("{failed} failed"));
                }
                if *skipped > 0 {
                    parts.push(format!("{skipped} skipped"));
                }
                let verdict = if *ok { "Done" } else { "Failed" };
                self.line(&format!("{verdict}: {} in {}", parts.join(", "), fmt_ms(*duration_ms)));
            }
            Event::ModelStarting { model, gguf, .. } => self.line(&format!("Starting llama-server for model `{model}` ({gguf})")),
            Event::Serving { url, models } => {
                // The result of the command, so on stdout (as `pipe show` prints), even with -q.
                if !self.json {
                    let mut out = std::io::stdout().lock();
                    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
                    let _ = writeln!(out, "Serving {} on {url} (Ollama API) and {url}/v1 (OpenAI API)", names.join(", "));
                    for m in models {
                        let _ = writeln!(
                            out,
                            "  {:<20} from node {}: {} (llama-server pid {}, log {})",
                            m.name, m.node, m.gguf, m.pid, m.log
                        );
                    }
                    let _ = writeln!(out, "Chat with it in Open WebUI (pip install open-webui):");
                    let _ = writeln!(out, "  OLLAMA_BASE_URL={url} open-webui serve");
                    let _ = writeln!(out, "  or: OPENAI_API_BASE_URL={url}/v1 OPENAI_API_KEY=none open-webui serve");
                    let _ = writeln!(out, "or with curl: curl {url}/api/chat -d '{{\"model\": \"{}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'", names.first().copied().unwrap_or(""));
                    let _ = writeln!(out, "Ctrl-C stops.");
                    let _ = out.flush();
                }
            }
            Event::ModelExited { model, status, log, tail } => {
                // An error the user must see, even with -q.
                if !self.json {
                    let _ = writeln!(
                        std::io::stderr(),
                        "error: llama-server for model `{model}` exited ({status}); requests for it get 503 (log: {log}). Its last lines:\n{tail}"
                    );
                }
            }
            Event::ServeStopped { reason } => self.line(&format!("Stopped ({reason}); the llama-server children are stopped")),
        }
    }

    fn finish_bar(&self, node: &str) {
        if let Some(bar) = self.bars.lock().expect("bars").remove(node) {
            bar.finish_and_clear();
        }
    }

    /// True when this (node, event) has not printed for `every`; records the print.
    fn due(&self, ev: &Event, every: Duration) -> bool {
        let Event::NodeProgress { node, .. } = ev else {
            return true;
        };
        let mut last = self.last_line.lock().expect("last_line");
        let now = Instant::now();
        match last.get(node) {
            Some(t) if now.duration_since(*t) < every => false,
            _ => {
                last.insert(node.clone(), now);
                true
            }
        }
    }

    /// Time since the reporter was made.
    pub fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix:.bold} {elapsed} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style(unit: &str) -> ProgressStyle {
    let t = format!("  {{prefix:.bold}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}} {{wide_msg}}");
    ProgressStyle::with_template(&t).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ")
}

/// Formats milliseconds for humans.
pub fn fmt_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// A byte count for people: `812 B`, `3.4 MiB`.
pub fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b as f64;
    let mut u = 0;
    while x >= 1024.0 && u < 4 {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

fn clock() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("{:02}:{:02}:{:02}", (secs / 3600) % 24, (secs / 60) % 60, secs % 60)
}
