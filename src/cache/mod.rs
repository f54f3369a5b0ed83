//! The cache folder: content-addressed outputs, node records, locks, run records.
//!
//! ```text
//! cache/
//!   objects/ab/abcd…        outputs by content digest (files read-only; folders hold files)
//!   nodes/<key>.json        node record: key parts, output digests, timing, log path
//!   logs/<key>.log          the log of the run that produced the record
//!   runs/<pipeline>.json    the latest run of each pipeline file (what `status --why` and `gc` read)
//!   locks/<key>.lock        per-key flock: one process computes a key, others wait then reuse it
//!   locks/<key>.lease       per-key lease on shared filesystems and for Slurm jobs (see [`lock`])
//!   work/<key>/             per-key scratch that survives kills (training checkpoints)
//!   extra/<digest>.json     memoised kind-specific key components
//!   stat-cache.json         (path, size, mtime, ctime, inode) -> digest
//!   tmp/                    staging; anything here is garbage once its process is gone
//! ```
//!
//! Publishing is atomic: outputs are written under `tmp/`, fsynced and renamed into `objects/`,
//! then the record is written to a temp file, fsynced and renamed into `nodes/`. A record exists
//! only when every object it names exists, so a kill at any moment leaves either no entry or a
//! whole one.

pub mod crash;
pub mod fsck;
pub mod lock;
pub mod pins;
pub mod store;

pub use store::{NodeRecord, OutputRecord, RunFacts, RunNode, RunRecord, Store};

use std::path::PathBuf;

/// Errors from the cache folder.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A filesystem operation on the cache failed.
    #[error("cache: {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    /// A record could not be encoded.
    #[error("cache: encoding {path}: {source}")]
    Encode { path: PathBuf, source: serde_json::Error },
}

pub(crate) fn io<'a>(action: &'static str, path: &'a std::path::Path) -> impl FnOnce(std::io::Error) -> CacheError + 'a {
    move |source| CacheError::Io { action, path: path.to_path_buf(), source }
}
