//! Skips rehashing files that have not changed since they were last hashed.
//!
//! An entry maps a canonical path to (size, mtime, ctime, inode, digest). A file is trusted only
//! when all four stat fields are equal. Touching a file changes its mtime, so it is rehashed, and
//! since its bytes are the same so is its digest: nothing downstream reruns.
//!
//! Racy-git guard: a file whose mtime is within two seconds of the moment it was hashed could
//! still be written again inside the same timestamp tick, so such entries are not stored.
//!
//! The cache lives in one JSON file under the cache folder, loaded at start and written back
//! (temp file + rename) when anything changed. Two processes may overwrite each other's additions;
//! that only costs a rehash later, never a wrong digest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{hash_file, hash_path_with, Digest};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    inode: u64,
    digest: Digest,
}

/// A persistent (path, stat) -> digest map.
#[derive(Default)]
pub struct StatCache {
    file: Option<PathBuf>,
    entries: HashMap<PathBuf, Entry>,
    dirty: bool,
    /// How many files were hashed (not served from the cache) since load; for tests and benches.
    pub hashed: usize,
}

fn stat(path: &Path) -> std::io::Result<(u64, i128, i128, u64)> {
    let md = std::fs::metadata(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mt = i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec());
        let ct = i128::from(md.ctime()) * 1_000_000_000 + i128::from(md.ctime_nsec());
        Ok((md.len(), mt, ct, md.ino()))
    }
    #[cfg(not(unix))]
    {
        let mt = md.modified()?.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
        Ok((md.len(), mt, 0, 0))
    }
}

impl StatCache {
    /// Loads the cache file, starting empty when it is missing or unreadable.
    pub fn load(file: &Path) -> StatCache {
        let entries = std::fs::read(file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        StatCache { file: Some(file.to_path_buf()), entries, dirty: false, hashed: 0 }
    }

    /// The digest of a file, from the cache when its stat is unchanged.
    pub fn file_digest(&mut self, path: &Path) -> std::io::Result<Digest> {
        let canon = path.canonicalize()?;
        let (size, mtime_ns, ctime_ns, inode) = stat(&canon)?;
        if let Some(e) = self.entries.get(&canon) {
            if e.size == size && e.mtime_ns == mtime_ns && e.ctime_ns == ctime_ns && e.inode == inode {
                return Ok(e.digest.clone());
            }
        }
        let digest = hash_file(&canon)?;
        self.hashed += 1;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
        if now - mtime_ns > 2_000_000_000 {
            self.entries.insert(canon, Entry { size, mtime_ns, ctime_ns, inode, digest: digest.clone() });
            self.dirty = true;
        }
        Ok(digest)
    }

    /// The digest of a file or folder, each file through the cache.
    pub fn digest(&mut self, path: &Path) -> std::io::Result<Digest> {
        hash_path_with(path, &mut |p| self.file_digest(p))
    }

    /// Writes the cache back if it changed (temp file, then rename).
    pub fn save(&mut self) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        self.entries.retain(|p, _| p.exists());
        let tmp = file.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec(&self.entries)?)?;
        std::fs::rename(&tmp, file)?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn age(path: &Path, secs: u64) {
        let t = SystemTime::now() - Duration::from_secs(secs);
        std::fs::File::options().write(true).open(path).unwrap().set_modified(t).unwrap();
    }

    #[test]
    fn unchanged_files_are_not_rehashed_and_changed_ones_are() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("a.txt");
        std::fs::write(&f, b"hello").unwrap();
        age(&f, 60);
        let db = t.path().join("stat.json");
        let mut c = StatCache::load(&db);
        let d1 = c.file_digest(&f).unwrap();
        c.save().unwrap();
        let mut c = StatCache::load(&db);
        assert_eq!(c.file_digest(&f).unwrap(), d1);
        assert_eq!(c.hashed, 0, "served from the stat cache");
        std::fs::write(&f, b"world").unwrap();
        assert_ne!(c.file_digest(&f).unwrap(), d1);
        assert_eq!(c.hashed, 1);
    }

    #[test]
    fn recently_written_files_are_not_trusted() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("a.txt");
        std::fs::write(&f, b"hello").unwrap();
        let mut c = StatCache::load(&t.path().join("stat.json"));
        c.file_digest(&f).unwrap();
        c.file_digest(&f).unwrap();
        assert_eq!(c.hashed, 2);
    }
}
