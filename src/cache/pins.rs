//! Keeping `pipe gc` away from what running pipelines use.
//!
//! A run *pins* every key it looks up, pulls or computes: `live/<pid>-<nonce>.keys` lists them,
//! one per line, and the run holds an flock on that file for as long as it lives (the kernel
//! drops it when the process exits, however it exits). gc keeps every key that a live pin file
//! names, with its objects, and removes the pin files of processes that are gone.
//!
//! Pinning alone leaves a window: gc reads the pin files, a run then pins a key and finds its
//! record, and gc deletes that record. So the steps that find, pull or publish an entry hold the
//! *entries lock* (`locks/entries.lock`) shared, and gc holds it exclusively while it decides and
//! deletes. A run waits for a gc in progress (it takes seconds); a gc waits for those steps,
//! never for a node's computation, which holds no lock of this kind.
//!
//! Both rely on flock, so they order processes of one machine; processes on other machines that
//! share the cache folder are not seen by gc (run gc where nothing else runs on such a cache).

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{io, CacheError};

/// The folder of the pin files.
pub const LIVE: &str = "live";

/// The entries lock, held shared by running pipelines' cache steps and exclusively by gc.
pub struct EntriesGuard {
    _file: File,
}

fn entries_lock(root: &Path) -> Result<(File, PathBuf), CacheError> {
    let path = root.join("locks").join("entries.lock");
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io("opening lock", &path))?;
    Ok((file, path))
}

/// Holds the entries lock shared (many runs at once), waiting while a gc holds it.
pub fn hold_shared(root: &Path) -> Result<EntriesGuard, CacheError> {
    let (file, path) = entries_lock(root)?;
    file.lock_shared().map_err(io("locking", &path))?;
    Ok(EntriesGuard { _file: file })
}

/// Holds the entries lock exclusively, calling `on_wait` once if a run's cache step holds it.
pub fn hold_exclusive(root: &Path, on_wait: impl FnOnce()) -> Result<EntriesGuard, CacheError> {
    let (file, path) = entries_lock(root)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            on_wait();
            file.lock().map_err(io("locking", &path))?;
        }
        Err(TryLockError::Error(e)) => return Err(CacheError::Io { action: "locking", path, source: e }),
    }
    Ok(EntriesGuard { _file: file })
}

/// This process's pin file, made on its first pin and removed when the store is dropped.
#[derive(Default)]
pub struct Pins {
    file: Mutex<Option<(File, PathBuf, BTreeSet<String>)>>,
}

impl Pins {
    /// Adds `key` to this process's pin file (creating and locking it first).
    pub fn pin(&self, root: &Path, key: &str) -> Result<(), CacheError> {
        let mut slot = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let nonce: u32 = rand::random();
            let path = root.join(LIVE).join(format!("{}-{nonce:08x}.keys", std::process::id()));
            let file = OpenOptions::new().create_new(true).append(true).open(&path).map_err(io("creating", &path))?;
            file.lock().map_err(io("locking", &path))?;
            *slot = Some((file, path, BTreeSet::new()));
        }
        let (file, path, pinned) = slot.as_mut().expect("made above");
        if pinned.insert(key.to_string()) {
            file.write_all(format!("{key}\n").as_bytes()).map_err(io("writing", path))?;
        }
        Ok(())
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        if let Some((_, path, _)) = self.file.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The keys pinned by live processes; the pin files of processes that are gone are removed.
/// Call with the entries lock held exclusively.
pub fn live_keys(root: &Path) -> Result<BTreeSet<String>, CacheError> {
    let mut keys = BTreeSet::new();
    for path in super::store::read_dir(&root.join(LIVE))? {
        let Ok(file) = OpenOptions::new().read(true).open(&path) else { continue };
        match file.try_lock_shared() {
            // Nobody holds it: its process is gone.
            Ok(()) => {
                let _ = std::fs::remove_file(&path);
            }
            Err(TryLockError::WouldBlock) => {
                let text = std::fs::read_to_string(&path).map_err(io("reading", &path))?;
                keys.extend(text.lines().filter(|l| !l.is_empty()).map(String::from));
            }
            Err(TryLockError::Error(e)) => return Err(CacheError::Io { action: "locking", path, source: e }),
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_processs_pins_are_read_and_a_dead_ones_file_is_removed() {
        let t = tempfile::tempdir().unwrap();
        for d in [LIVE, "locks"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        let pins = Pins::default();
        pins.pin(t.path(), "aaa").unwrap();
        pins.pin(t.path(), "bbb").unwrap();
        pins.pin(t.path(), "aaa").unwrap();
        // A file nobody holds, as a killed run leaves it.
        std::fs::write(t.path().join(LIVE).join("1-dead.keys"), "ccc\n").unwrap();
        let _x = hold_exclusive(t.path(), || {}).unwrap();
        assert_eq!(live_keys(t.path()).unwrap(), BTreeSet::from(["aaa".to_string(), "bbb".to_string()]));
        assert!(!t.path().join(LIVE).join("1-dead.keys").exists());
        drop(pins);
        assert!(live_keys(t.path()).unwrap().is_empty(), "a dropped store's pins are gone");
    }
}
