//! `pipe run`: validate, then run every selected node that is not fresh.

use std::sync::Arc;

use anyhow::Result;

use super::{cache_dir, load_pipeline, ExitStatus};
use crate::cli::{GlobalArgs, RunArgs};
use crate::device::{DevicePool, PoolProblem};
use crate::report::{Event, Reporter};
use crate::sched::{RunOptions, Session, SlurmSetup};
use crate::slurm::Executor;
use crate::spec::validate::Diagnostics;

/// Runs the command.
pub fn run(args: &RunArgs, global: &GlobalArgs) -> Result<ExitStatus> {
    Ok(run_session(args, global)?.0)
}

/// Runs the command and returns the session it ran in (`pipe serve` reads the targets' records
/// from it).
pub fn run_session(args: &RunArgs, global: &GlobalArgs) -> Result<(ExitStatus, Session)> {
    let executor = args.executor.as_deref().and_then(Executor::parse);
    let pipeline = load_pipeline(&args.file, &args.set)?.with_default_executor(executor);
    let cache = cache_dir(global, Some(&args.file));
    let reporter = Arc::new(Reporter::new(args.json, global.quiet > 0, global.no_progress));
    let remote = super::open_remote(global, &cache)?;
    let mut session = Session::open(pipeline, &cache, reporter.clone())?.with_remote(remote);
    if let Some(ids) = &args.gpus {
        let visible = session.gpus().to_vec();
        if let Some(bad) = ids.iter().find(|i| !visible.contains(i)) {
            anyhow::bail!("--gpus: CUDA device {bad} is not available (visible: {visible:?})");
        }
        session = session.with_gpus(ids.clone());
    }
    let selected = session.select(&args.target)?;
    let force = args.force.iter().map(|f| session.index(f)).collect::<Result<_, _>>()?;
    if selected.iter().any(|&i| session.pipeline.nodes[i].executor() == Executor::Slurm) {
        session = session.with_slurm(slurm_setup(args, global)?);
    }
    let gpus = session.gpus().to_vec();
    let pool = DevicePool::new(1, &gpus);
    let mut gpu_diag: Option<Diagnostics> = None;
    // GPUs of Slurm nodes are the cluster's business.
    for &i in selected.iter().filter(|&&i| session.pipeline.nodes[i].executor() == Executor::Local) {
        let node = &session.pipeline.nodes[i];
        match (pool.check(node.device, node.gpus), node.gpus_span) {
            (Ok(()), _) => {}
            // A `gpus:` the pool cannot satisfy is a mistake in the file: point at it.
            (Err(p @ PoolProblem::TooFewGpus { .. }), Some(span)) => {
                let file = &session.pipeline.file;
                let diag =
                    gpu_diag.get_or_insert_with(|| Diagnostics::new(file, &std::fs::read_to_string(file).unwrap_or_default()));
                let help = if gpus.is_empty() {
                    "multi-GPU training needs a CUDA build of pipe (`--features cuda`) on a machine with that many GPUs"
                        .to_string()
                } else {
                    format!("GPUs of this run: {gpus:?} (`--gpus`, CUDA_VISIBLE_DEVICES); ask for fewer or `gpus: all`")
                };
                diag.error(span, p.message(&node.name), "too many GPUs", Some(help));
            }
            (Err(p), _) => anyhow::bail!("{}", p.message(&node.name)),
        }
    }
    if let Some(diag) = gpu_diag {
        diag.finish()?;
    }
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    // What must be in the local cache at the end: the targets, or the pipeline's final nodes.
    let materialize = if args.target.is_empty() {
        session.sinks(&selected)
    } else {
        args.target.iter().map(|t| session.index(t)).collect::<Result<_, _>>()?
    };
    let opts = RunOptions { selected, force, keep_going: args.keep_going, jobs, gpus, materialize };
    let summary = session.run(&opts);
    let ok = summary.failed.is_empty();
    reporter.emit(Event::RunFinished {
        ok,
        ran: summary.ran,
        cached: summary.cached,
        failed: summary.failed.len(),
        skipped: summary.skipped,
        duration_ms: reporter.elapsed_ms(),
    });
    if !ok {
        for f in &summary.failed {
            eprintln!("error: {}", f.error);
            if let Some(log) = &f.log {
                eprintln!("  log: {}", log.display());
            }
        }
        return Ok((ExitStatus::Failure, session));
    }
    Ok((ExitStatus::Success, session))
}

/// How this run submits Slurm jobs: this binary, run from here, with the arguments that make the
/// job load the same pipeline and cache. Fails early when `sbatch` is not there.
fn slurm_setup(args: &RunArgs, global: &GlobalArgs) -> Result<SlurmSetup> {
    let found = std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("sbatch").is_file()));
    if !found {
        anyhow::bail!("nodes run with `executor: slurm`, but `sbatch` is not on PATH (run on a Slurm login node, or use `--executor local`)");
    }
    let mut extra = Vec::new();
    for s in &args.set {
        extra.push("--set".to_string());
        extra.push(s.clone());
    }
    if let Some(e) = &args.executor {
        extra.push("--executor".into());
        extra.push(e.clone());
    }
    if let Some(r) = &global.remote {
        extra.push("--remote".into());
        extra.push(r.clone());
    }
    if let Some(m) = &global.remote_mode {
        extra.push("--remote-mode".into());
        extra.push(m.clone());
    }
    Ok(SlurmSetup { exe: std::env::current_exe()?, args: extra, chdir: std::env::current_dir()? })
}
