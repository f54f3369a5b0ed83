//! `pipe verify FILE [NODE]...`: re-execute cached nodes ignoring the cache and compare output
//! digests with the cached ones. A mismatch ([`Mismatch`]) means the cache was modified on disk
//! or the node is not deterministic, and exits 1.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;

use super::{cache_dir, load_pipeline, ExitStatus};
use crate::cli::{GlobalArgs, VerifyArgs};
use crate::report::Reporter;
use crate::sched::{Mismatch, Session, Verified};

/// Runs the command.
pub fn run(args: &VerifyArgs, global: &GlobalArgs) -> Result<ExitStatus> {
    let pipeline = load_pipeline(&args.file, &args.set)?;
    let cache = cache_dir(global, Some(&args.file));
    let remote = super::open_remote(global, &cache)?;
    let session = Session::open(pipeline, &cache, Arc::new(Reporter::silent()))?.with_remote(remote);
    let wanted: Vec<usize> = if args.nodes.is_empty() {
        (0..session.pipeline.nodes.len()).collect()
    } else {
        args.nodes.iter().map(|n| session.index(n)).collect::<Result<_, _>>()?
    };
    let needed = session.graph.ancestors_of(&wanted);
    let mut done = HashMap::new();
    let mut status = ExitStatus::Success;
    for &i in session.graph.order().iter().filter(|i| needed.contains(i)) {
        let node = &session.pipeline.nodes[i];
        if wanted.contains(&i) {
            match session.verify_node(i, &done) {
                Ok(Verified { record, mismatches }) => {
                    if mismatches.is_empty() {
                        println!("ok        {} ({}): {} output(s) identical", node.name, node.kind.name(), record.outputs.len());
                    }
                    let short = |d: &str| d[..12.min(d.len())].to_string();
                    for m in mismatches {
                        status = ExitStatus::Failure;
                        match m {
                            Mismatch::Tampered { output, recorded, on_disk } => println!(
                                "MISMATCH  {} ({}): output `{output}`: the cached object {} was modified on disk (it now hashes to {})",
                                node.name,
                                node.kind.name(),
                                short(&recorded),
                                short(&on_disk)
                            ),
                            Mismatch::Nondeterministic { output, recorded, recomputed } => println!(
                                "MISMATCH  {} ({}): output `{output}`: cached {} but re-executed {}",
                                node.name,
                                node.kind.name(),
                                short(&recorded),
                                short(&recomputed)
                            ),
                        }
                    }
                    done.insert(node.name.clone(), record);
                }
                Err(e) => {
                    println!("error     {}: {e}", node.name);
                    return Ok(ExitStatus::Failure);
                }
            }
        } else {
            match session.key_parts(i, &done).ok().and_then(|(p, _)| session.cached_record(&p.key())) {
                Some(rec) => {
                    done.insert(node.name.clone(), rec);
                }
                None => {
                    println!("error     {}: not in the cache; run the pipeline first", node.name);
                    return Ok(ExitStatus::Failure);
                }
            }
        }
    }
    Ok(status)
}
