//! Crash points for fault-injection tests: `PIPE_CRASH_AT=<point>` makes this process SIGKILL
//! itself when it reaches that point, exactly as `kill -9` would stop it there. The points are
//! the moments between the cache's writes that a random kill rarely hits:
//!
//! | point | where |
//! |---|---|
//! | `publish:<node>:objects` | a node's outputs are in `objects/`, its record is not written yet |
//! | `publish:<node>:record` | its record is written, the run has not heard of it yet |
//! | `run-record` | every node is done, the pipeline's run record is not saved yet |
//!
//! `tests/it/faults.rs` kills `pipelines/fortune.yaml` at each of them (and at moments inside
//! every node) and checks that the cache stays whole and the rerun ends with the same bytes.
//! Unset, a crash point costs one comparison against a string read once.

use std::sync::OnceLock;

/// Dies here, by SIGKILL, when `PIPE_CRASH_AT` names this point.
pub fn point(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    if AT.get_or_init(|| std::env::var("PIPE_CRASH_AT").ok()).as_deref() == Some(name) {
        // SAFETY: kill(2) on our own pid with a constant signal has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
