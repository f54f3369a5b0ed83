//! `pipe fsck [--repair] [FILE]`: rehash every object in the cache and check every record
//! (a flipped bit that keeps a file's size passes the cheap check `pipe run` makes on every use).

use anyhow::Result;

use super::{existing_cache, ExitStatus};
use crate::cli::{FsckArgs, GlobalArgs};
use crate::report::fmt_bytes;

/// Runs the command: exit 0 when nothing is damaged (or `--repair` moved it aside), 1 otherwise.
pub fn run(args: &FsckArgs, global: &GlobalArgs) -> Result<ExitStatus> {
    let Some(store) = existing_cache(global, args.file.as_deref())? else { return Ok(ExitStatus::Success) };
    let report = store.fsck(args.repair)?;
    for d in &report.damaged {
        match &d.moved_to {
            Some(to) => println!("damaged  {}: {}; moved to {}", d.what, d.why, to.display()),
            None => println!("damaged  {}: {}", d.what, d.why),
        }
    }
    println!(
        "checked {} object(s) ({}) and {} record(s) in {}: {}",
        report.objects,
        fmt_bytes(report.bytes),
        report.records,
        store.root().display(),
        match (report.damaged.len(), args.repair) {
            (0, _) => "all intact".to_string(),
            (n, true) => format!("{n} damaged, moved aside; the next run computes them again"),
            (n, false) => format!("{n} damaged; `pipe fsck --repair` moves them aside so the next run computes them again"),
        }
    );
    Ok(if report.damaged.is_empty() || args.repair { ExitStatus::Success } else { ExitStatus::Failure })
}
