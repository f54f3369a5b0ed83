//! Per-key lock files, so two `pipe` processes on one cache compute each key once.
//!
//! A lock is an OS advisory lock (`flock`) on `locks/<key>.lock`. The kernel drops it when the
//! holding process exits, however it exits (kill -9 included), so a dead process never leaves a
//! key stuck; the empty lock file left behind is harmless and removed by `pipe gc`.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use super::{io, CacheError};

/// A held lock; released on drop.
pub struct KeyLock {
    _file: File,
}

/// Takes the lock at `path`, calling `on_wait` once if another process holds it, then blocking.
pub fn acquire(path: &Path, on_wait: impl FnOnce()) -> Result<KeyLock, CacheError> {
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(io("opening lock", path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            on_wait();
            file.lock().map_err(io("locking", path))?;
        }
        Err(TryLockError::Error(e)) => return Err(CacheError::Io { action: "locking", path: path.to_path_buf(), source: e }),
    }
    Ok(KeyLock { _file: file })
}

/// Takes the lock only if it is free (used by `gc` to skip keys in use).
pub fn try_acquire(path: &Path) -> Result<Option<KeyLock>, CacheError> {
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(io("opening lock", path))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(KeyLock { _file: file })),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(CacheError::Io { action: "locking", path: path.to_path_buf(), source: e }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_until_the_first_releases() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("k.lock");
        let first = acquire(&p, || panic!("free lock must not wait")).unwrap();
        assert!(try_acquire(&p).unwrap().is_none());
        drop(first);
        assert!(try_acquire(&p).unwrap().is_some());
    }
}
