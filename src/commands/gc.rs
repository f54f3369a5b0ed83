//! `pipe gc [--dry-run]`: delete cache entries no pipeline's latest run references.

use anyhow::Result;

use super::{existing_cache, ExitStatus};
use crate::cli::{GcArgs, GlobalArgs};
use crate::report::fmt_bytes;

/// Runs the command.
pub fn run(args: &GcArgs, global: &GlobalArgs) -> Result<ExitStatus> {
    let Some(store) = existing_cache(global, args.file.as_deref())? else { return Ok(ExitStatus::Success) };
    let report = store.gc(args.dry_run, || eprintln!("waiting for a running pipeline's cache step to finish..."))?;
    let verb = if args.dry_run { "would delete" } else { "deleted" };
    if args.dry_run {
        for r in &report.records {
            println!("record  {r}");
        }
        for o in &report.objects {
            println!("object  {o}");
        }
    }
    println!(
        "{verb} {} node record(s) and {} object(s), {} in {}",
        report.records.len(),
        report.objects.len(),
        fmt_bytes(report.bytes),
        store.root().display()
    );
    Ok(ExitStatus::Success)
}
