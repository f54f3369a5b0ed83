//! `pipe show FILE NODE`: the node's key, state, artifacts (paths, sizes) and metadata.

use std::sync::Arc;

use anyhow::Result;
use serde_json::json;

use super::{cache_dir, load_pipeline, ExitStatus};
use crate::cli::{GlobalArgs, ShowArgs};
use crate::report::{fmt_bytes, fmt_ms, Reporter, SCHEMA_VERSION};
use crate::sched::{Freshness, Session};

/// Runs the command.
pub fn run(args: &ShowArgs, global: &GlobalArgs) -> Result<ExitStatus> {
    let pipeline = load_pipeline(&args.file, &args.set)?;
    let cache = cache_dir(global, Some(&args.file));
    let remote = super::open_remote(global, &cache)?;
    let session = Session::open(pipeline, &cache, Arc::new(Reporter::silent()))?.with_remote(remote);
    let i = session.index(&args.node)?;
    let selected = session.graph.ancestors_of(&[i]);
    let status = session.status(&selected);
    let fresh = status.iter().find(|(j, _)| *j == i).map(|(_, f)| f.clone());
    let node = &session.pipeline.nodes[i];
    let record = match &fresh {
        Some(Freshness::Fresh { key }) => session.store.record(key),
        _ => None,
    };
    if args.json {
        let outputs: serde_json::Map<String, serde_json::Value> = record
            .iter()
            .flat_map(|r| r.outputs.iter())
            .map(|(k, o)| {
                (
                    k.clone(),
                    json!({"path": session.store.object_path(&o.digest), "digest": o.digest, "bytes": o.bytes, "dir": o.dir}),
                )
            })
            .collect();
        println!(
            "{}",
            json!({"schema_version": SCHEMA_VERSION, "node": node.name, "kind": node.kind.name(), "status": fresh,
                   "params": node.params, "inputs": node.inputs.iter().map(|(k, v)| (k.clone(), v.to_string())).collect::<std::collections::BTreeMap<_,_>>(),
                   "outputs": outputs, "record": record,
                   "log": record.as_ref().map(|r| session.store.log_path(&r.key))})
        );
        return Ok(ExitStatus::Success);
    }
    println!("node     {} ({} v{})", node.name, node.kind.name(), node.kind.version());
    for (slot, input) in &node.inputs {
        println!("input    {slot}: {input}");
    }
    for (k, v) in &node.params.0 {
        println!("param    {k} = {v}");
    }
    match (&fresh, &record) {
        (Some(Freshness::Fresh { key }), Some(rec)) => {
            println!("state    fresh");
            println!("key      {key}");
            println!("ran      {} ago, took {}", ago(rec.started_at), fmt_ms(rec.duration_ms));
            if let Some(s) = &rec.summary {
                println!("summary  {s}");
            }
            for (name, o) in &rec.outputs {
                println!("output   {name}: {} ({})", session.store.object_path(&o.digest).display(), fmt_bytes(o.bytes));
            }
            println!("log      {}", session.store.log_path(key).display());
        }
        (Some(Freshness::WillRun { reasons, .. }), _) => {
            println!("state    not in the cache; `pipe run` would run it:");
            for r in reasons {
                println!("           - {r}");
            }
        }
        (Some(Freshness::Remote { key, remote }), _) => {
            println!("state    in the remote cache {remote}, not here (`pipe run FILE --target {}` pulls it)", node.name);
            println!("key      {key}");
        }
        (Some(Freshness::Error { message }), _) => println!("state    error: {message}"),
        _ => println!("state    unknown"),
    }
    Ok(ExitStatus::Success)
}

fn ago(t: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(t);
    fmt_ms(now.saturating_sub(t) * 1000)
}
