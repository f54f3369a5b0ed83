//! `pipe status [--why]`: a dry run that says, per node, fresh or will run, and why.

use std::sync::Arc;

use anyhow::Result;
use serde_json::json;

use super::{cache_dir, load_pipeline, ExitStatus};
use crate::cli::{GlobalArgs, StatusArgs};
use crate::report::{Reporter, SCHEMA_VERSION};
use crate::sched::{Freshness, Session};

/// Runs the command.
pub fn run(args: &StatusArgs, global: &GlobalArgs) -> Result<ExitStatus> {
    let executor = args.executor.as_deref().and_then(crate::slurm::Executor::parse);
    let pipeline = load_pipeline(&args.file, &args.set)?.with_default_executor(executor);
    let cache = cache_dir(global, Some(&args.file));
    let remote = super::open_remote(global, &cache)?;
    let session = Session::open(pipeline, &cache, Arc::new(Reporter::silent()))?.with_remote(remote);
    let selected = session.select(&args.target)?;
    let status = session.status(&selected);
    if args.json {
        let nodes: Vec<_> = status
            .iter()
            .map(|(i, f)| {
                let n = &session.pipeline.nodes[*i];
                let reasons: Vec<_> = match f {
                    Freshness::WillRun { reasons, .. } => {
                        reasons.iter().map(|r| json!({"text": r.to_string(), "detail": r})).collect()
                    }
                    _ => Vec::new(),
                };
                json!({"node": n.name, "kind": n.kind.name(), "status": f, "reasons": reasons})
            })
            .collect();
        println!("{}", json!({"schema_version": SCHEMA_VERSION, "pipeline": session.pipeline.name, "nodes": nodes}));
        return Ok(ExitStatus::Success);
    }
    let width = status.iter().map(|(i, _)| session.pipeline.nodes[*i].name.len()).max().unwrap_or(4);
    let mut stale = 0;
    for (i, f) in &status {
        let n = &session.pipeline.nodes[*i];
        let label = format!("{:<width$}  ({})", n.name, n.kind.name());
        match f {
            Freshness::Fresh { key } => println!("fresh     {label}  {}", &key[..12]),
            Freshness::Remote { key, remote } => {
                if args.why {
                    println!("remote    {label}  {}", &key[..12]);
                    println!("            - in the remote cache {remote}: pulled when its outputs are needed here, not run");
                } else {
                    println!("remote    {label}  {}: will be pulled, not run", &key[..12]);
                }
            }
            Freshness::WillRun { reasons, .. } => {
                stale += 1;
                if args.why {
                    println!("will run  {label}");
                    for r in reasons {
                        println!("            - {r}");
                    }
                } else {
                    let first = reasons.first().map(|r| format!(": {r}")).unwrap_or_default();
                    println!("will run  {label}{first}");
                }
            }
            Freshness::Slurm { key, job, job_state, host } => {
                stale += 1;
                let on = host.as_ref().map(|h| format!(" on {h}")).unwrap_or_default();
                println!("slurm     {label}  {}: Slurm job {job} {}{on}", &key[..12], job_state.to_lowercase());
            }
            Freshness::Error { message } => println!("error     {label}: {message}"),
        }
    }
    if stale == 0 {
        println!("everything is fresh");
    } else {
        println!("{stale} of {} nodes would run", status.len());
    }
    Ok(ExitStatus::Success)
}
