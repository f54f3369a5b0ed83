//! `pipe serve FILE [NODE]...`: bring export-gguf nodes up to date as `pipe run --target` would,
//! then serve their models over the Ollama and OpenAI APIs (src/serve) until Ctrl-C or SIGTERM.
//!
//! Order matters for what the user sees on failure: the command's own mistakes (no such node,
//! not an export node, no llama-server, the port taken) are reported before anything runs; a
//! failing export node is the run's error and nothing is served.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{cache_dir, load_pipeline, ExitStatus};
use crate::cli::{GlobalArgs, RunArgs, ServeArgs};
use crate::report::{Event, Reporter, ServedModel};
use crate::sched::Freshness;
use crate::serve::http::{self, Served, State};
use crate::serve::llama_server::{self, ChildConfig, LlamaServer};
use crate::serve::ModelInfo;

/// The node kind whose outputs are served.
const EXPORT: &str = "export-gguf";

/// How long a model may take to load before serving gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs the command.
pub fn run(args: &ServeArgs, global: &GlobalArgs) -> Result<ExitStatus> {
    let pipeline = load_pipeline(&args.file, &args.set)?;
    let nodes: Vec<String> = if args.nodes.is_empty() {
        pipeline.nodes.iter().filter(|n| n.kind.name() == EXPORT).map(|n| n.name.clone()).collect()
    } else {
        for name in &args.nodes {
            match pipeline.nodes.iter().find(|n| &n.name == name) {
                None => bail!(
                    "{}: no node `{name}` (its {EXPORT} nodes: {})",
                    args.file.display(),
                    export_names(&pipeline.nodes).join(", ")
                ),
                Some(n) if n.kind.name() != EXPORT => {
                    bail!(
                        "{}: node `{name}` is a {} node; `pipe serve` serves {EXPORT} nodes",
                        args.file.display(),
                        n.kind.name()
                    )
                }
                Some(_) => {}
            }
        }
        args.nodes.clone()
    };
    if nodes.is_empty() {
        bail!("{}: no {EXPORT} node to serve (add one: README, \"GGUF export\")", args.file.display());
    }
    let names: Vec<String> = nodes
        .iter()
        .map(|n| {
            let spec = pipeline.nodes.iter().find(|x| &x.name == n).expect("checked above");
            spec.params.str("name").unwrap_or(n).to_string()
        })
        .collect();
    let mut seen = BTreeSet::new();
    if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
        bail!("two served models are named `{dup}`: give the export nodes different `name` params");
    }
    let Some(program) = llama_server::program() else {
        bail!(
            "llama.cpp's `llama-server` was not found in {}; build it with `scripts/install-llamacpp.sh` (prints the folder for PIPE_LLAMA_CPP), or install llama.cpp so that llama-server is on PATH",
            llama_server::where_looked()
        );
    };
    // Taken before anything runs, so a busy port costs nothing.
    let listener = std::net::TcpListener::bind((args.host.as_str(), args.port)).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (another `pipe serve` or an Ollama server? pick another with --port, or --port 0 for any free one)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot listen on {}:{}: {e}{hint}", args.host, args.port)
    })?;
    let addr = listener.local_addr()?;

    let run_args = RunArgs {
        file: args.file.clone(),
        target: nodes.clone(),
        force: Vec::new(),
        set: args.set.clone(),
        keep_going: false,
        json: args.json,
        jobs: None,
        gpus: None,
        executor: None,
    };
    let (status, session) = super::run::run_session(&run_args, global)?;
    if status != ExitStatus::Success {
        eprintln!("error: nothing is served: the export did not finish");
        return Ok(status);
    }
    let selected = session.select(&nodes)?;
    let freshness = session.status(&selected);
    let mut infos = Vec::new();
    for (node, name) in nodes.iter().zip(&names) {
        let i = session.index(node)?;
        let record = match freshness.iter().find(|(j, _)| *j == i).map(|(_, f)| f) {
            Some(Freshness::Fresh { key }) => session.store.record(key),
            _ => None,
        };
        let Some(record) = record else { bail!("node `{node}` ran, but its cache entry is not here") };
        let out = record.outputs.get("model").with_context(|| format!("node `{node}` has no `model` output"))?;
        let folder = session.store.object_path(&out.digest);
        let spec = &session.pipeline.nodes[i];
        let system = spec.params.str("system").map(str::to_string);
        infos.push(ModelInfo::read(name, node, &folder, &out.digest, system)?);
    }

    let reporter = Arc::new(Reporter::new(args.json, global.quiet > 0, global.no_progress));
    let logs = log_dir(&cache_dir(global, Some(&args.file)))?;
    // Started from this thread, which lives until serving ends (llama_server: PR_SET_PDEATHSIG).
    let mut models = Vec::new();
    for info in infos {
        let log = llama_server::log_path(&logs, &info.name);
        reporter.emit(Event::ModelStarting {
            model: info.name.clone(),
            node: info.node.clone(),
            gguf: info.gguf.display().to_string(),
            log: log.display().to_string(),
        });
        let cfg = ChildConfig {
            program: program.clone(),
            gguf: info.gguf.clone(),
            alias: info.name.clone(),
            ctx_size: args.ctx_size,
            parallel: args.parallel,
            threads: args.threads,
            log,
        };
        let child = LlamaServer::start(&cfg)?;
        models.push(Served { info, child });
    }
    for m in &models {
        // Dropping `models` on an error stops every child.
        m.child.wait_ready(READY_TIMEOUT)?;
    }
    let url = format!("http://{}", display_addr(&addr));
    reporter.emit(Event::Serving {
        url: url.clone(),
        models: models
            .iter()
            .map(|m| ServedModel {
                name: m.info.name.clone(),
                node: m.info.node.clone(),
                gguf: m.info.gguf.display().to_string(),
                pid: m.child.pid,
                log: m.child.log.display().to_string(),
            })
            .collect(),
    });
    let state = Arc::new(State::new(models));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let reason = rt.block_on(http::serve(listener, state.clone(), reporter.clone(), shutdown_signal()))?;
    rt.shutdown_timeout(Duration::from_secs(2));
    // The last reference: stopping the children (LlamaServer's Drop).
    drop(Arc::try_unwrap(state).ok());
    reporter.emit(Event::ServeStopped { reason });
    Ok(ExitStatus::Success)
}

fn export_names(nodes: &[crate::spec::NodeSpec]) -> Vec<String> {
    nodes.iter().filter(|n| n.kind.name() == EXPORT).map(|n| n.name.clone()).collect()
}

/// `127.0.0.1:11434`, or `[::1]:11434`.
fn display_addr(addr: &std::net::SocketAddr) -> String {
    addr.to_string()
}

/// Where the children's logs go: `serve/` in the cache folder (outside its entries; `pipe gc`
/// leaves it alone).
fn log_dir(cache: &std::path::Path) -> Result<PathBuf> {
    let dir = cache.join("serve");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM, with which.
async fn shutdown_signal() -> String {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "interrupted".into();
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted".into(),
        _ = term.recv() => "terminated".into(),
    }
}
