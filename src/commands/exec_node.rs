//! `pipe exec-node FILE NODE --key KEY` (hidden): what a Slurm job runs. Loads the pipeline with
//! the orchestrator's overrides, checks the node's key against `--key`, and runs the node with
//! the scheduler's one code path (`Session::exec_node`), publishing into the shared cache.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;

use super::{cache_dir, load_pipeline, ExitStatus};
use crate::cli::{ExecNodeArgs, GlobalArgs};
use crate::report::Reporter;
use crate::sched::Session;
use crate::slurm::Executor;

/// Runs the command.
pub fn run(args: &ExecNodeArgs, global: &GlobalArgs) -> Result<ExitStatus> {
    let executor = args.executor.as_deref().and_then(Executor::parse);
    let pipeline = load_pipeline(&args.file, &args.set)?.with_default_executor(executor);
    let cache = cache_dir(global, Some(&args.file));
    let reporter = Arc::new(Reporter::new(args.json, global.quiet > 0, global.no_progress));
    let remote = super::open_remote(global, &cache)?;
    let mut session = Session::open(pipeline, &cache, reporter)?.with_remote(remote);
    if args.lease.is_some() {
        session.store.use_leases();
    }
    let i = session.index(&args.node)?;
    let mut upstream = HashMap::new();
    for u in &args.upstream {
        let (node, key) = u.split_once('=').ok_or_else(|| anyhow::anyhow!("--upstream {u}: expected NODE=KEY"))?;
        upstream.insert(node.to_string(), key.to_string());
    }
    // For tests: a job that takes a while without using the CPU (time limits, waiting
    // orchestrators).
    if let Some(secs) = std::env::var("PIPE_EXEC_NODE_HOLD_SECS").ok().and_then(|s| s.parse::<f64>().ok()) {
        std::thread::sleep(std::time::Duration::from_secs_f64(secs));
    }
    let result = session.exec_node(i, &args.key, &upstream, args.lease.as_deref(), args.force);
    session.save_stat_cache();
    match result {
        Ok(_) => Ok(ExitStatus::Success),
        Err(f) => {
            eprintln!("error: {}", f.error);
            if let Some(log) = &f.log {
                eprintln!("  log: {}", log.display());
            }
            Ok(ExitStatus::Failure)
        }
    }
}
