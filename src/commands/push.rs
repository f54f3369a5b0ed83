//! `pipe push FILE [NODE]...`: upload nodes that are fresh in the local cache to the remote
//! cache (objects first, then the record; what the remote has is skipped).

use std::sync::Arc;

use anyhow::Result;

use super::{cache_dir, load_pipeline, remote_config, ExitStatus};
use crate::cli::{GlobalArgs, PushArgs};
use crate::remote::{Mode, Remote};
use crate::report::Reporter;
use crate::sched::{Freshness, Session};

/// Runs the command.
pub fn run(args: &PushArgs, global: &GlobalArgs) -> Result<ExitStatus> {
    let pipeline = load_pipeline(&args.file, &args.set)?;
    let cache = cache_dir(global, Some(&args.file));
    let Some(mut cfg) = remote_config(global, &cache)? else {
        anyhow::bail!("no remote cache: pass --remote URL, set PIPE_REMOTE, or put `remote = \"URL\"` in pipe.toml");
    };
    if !cfg.mode.writes() {
        anyhow::bail!("the remote mode is `{}`: pushing needs `write` or `require`", cfg.mode);
    }
    // Push failures are errors here: pushing is all this command does.
    cfg.mode = Mode::Require;
    let remote = Some(Remote::open(&cfg)?);
    let reporter = Arc::new(Reporter::new(false, global.quiet > 0, global.no_progress));
    let session = Session::open(pipeline, &cache, reporter)?.with_remote(remote);
    let selected = session.select(&args.nodes)?;
    let wanted: Vec<usize> = if args.nodes.is_empty() {
        selected.iter().copied().collect()
    } else {
        args.nodes.iter().map(|n| session.index(n)).collect::<Result<_, _>>()?
    };
    let mut status = ExitStatus::Success;
    let (mut pushed, mut missing) = (0, 0);
    for (i, f) in session.status(&selected) {
        if !wanted.contains(&i) {
            continue;
        }
        let node = &session.pipeline.nodes[i];
        match f {
            Freshness::Fresh { key } => {
                let rec = session.store.record(&key).expect("fresh means recorded");
                if let Err(e) = session.push_node(i, &rec) {
                    eprintln!("error: pushing `{}`: {e}", node.name);
                    status = ExitStatus::Failure;
                } else {
                    pushed += 1;
                }
            }
            Freshness::Remote { .. } => {}
            _ => {
                missing += 1;
                if !args.nodes.is_empty() {
                    eprintln!("error: `{}` is not in the local cache; run it first", node.name);
                    status = ExitStatus::Failure;
                }
            }
        }
    }
    if global.quiet == 0 {
        let rest = if missing > 0 { format!(" ({missing} not computed here, nothing to push)") } else { String::new() };
        eprintln!("pushed {pushed} node(s) to {}{rest}", session.remote().map(|r| r.url()).unwrap_or(""));
    }
    Ok(status)
}
