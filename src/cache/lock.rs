//! Per-key locks, so two `pipe` processes on one cache compute each key once, on one machine or
//! on several that share the cache folder.
//!
//! # Two kinds of lock
//! - **flock** ([`LockMode::Flock`], the default on a local filesystem): an OS advisory lock on
//!   `locks/<key>.lock`. The kernel drops it when the holding process exits, however it exits
//!   (kill -9 included), so a dead process never leaves a key stuck; the empty lock file left
//!   behind is harmless and removed by `pipe gc`.
//! - **lease** ([`LockMode::Lease`]): `flock` is not reliable across machines on network
//!   filesystems (NFS, Lustre, GPFS, CephFS, ...: some ignore it, some emulate it per client), so
//!   where the cache is on one of those (detected with `statfs`), for every run that submits
//!   Slurm jobs, and with `PIPE_LOCK=lease`, a lock is the flock (which still orders processes
//!   of one machine) *and* a lease file `locks/<key>.lease`. The lease is created atomically
//!   (written to a temp file, then `link(2)`ed to its name, which fails if it exists, atomically
//!   on NFS too) and holds the holder's host, pid, a random token and an expiry. A heartbeat
//!   thread pushes the expiry forward every third of the time to live (`PIPE_LOCK_TTL` seconds,
//!   default 30) while the lock is held; a lease is broken only once it has expired (its holder
//!   died or stalled for a whole time to live), by renaming it away, after which the breaker
//!   creates its own. A holder whose lease was broken notices at its next heartbeat and logs it.
//!
//! # Handing a lease to a Slurm job
//! The orchestrator holds a key's lease while the node's Slurm job runs, and passes the token to
//! the job (`pipe exec-node --lease TOKEN`). The job [`adopt`]s the lease (it refuses if the file
//! holds another token) and refreshes it too, so the lease stays alive while either side lives;
//! only the orchestrator removes it. Other orchestrators wait on the lease and then find the
//! record the job published.
//!
//! Limits: leases assume clocks agree to well within the time to live (NTP); a process that
//! stalls longer than the time to live can lose its lease to another, and then both may compute
//! the key (publishing stays atomic and both write the same bytes, so the cache stays correct).

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{io, CacheError};

/// How a cache locks a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// `flock` only: processes of one machine.
    Flock,
    /// `flock` plus a lease file: processes of several machines on a shared filesystem.
    Lease,
    /// The lease file alone (`PIPE_LOCK=lease-only`): how processes on two machines see each
    /// other where `flock` is not shared between them; for tests on one machine.
    LeaseOnly,
}

impl LockMode {
    /// `PIPE_LOCK` (`flock`, `lease`, `lease-only`, `auto`), else what the filesystem at `root`
    /// needs: leases on network and cluster filesystems, flock elsewhere.
    pub fn for_folder(root: &Path) -> LockMode {
        match std::env::var("PIPE_LOCK").as_deref() {
            Ok("lease") => LockMode::Lease,
            Ok("lease-only") => LockMode::LeaseOnly,
            Ok("flock") => LockMode::Flock,
            _ if on_shared_filesystem(root) => LockMode::Lease,
            _ => LockMode::Flock,
        }
    }
}

/// True when `path` is on a filesystem that other machines may share (by `statfs`'s type).
pub fn on_shared_filesystem(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const SHARED: &[i64] = &[
        0x6969,                 // NFS
        0x517B,                 // SMB
        0xFF53_4D42_u32 as i64, // CIFS
        0xFE53_4D42_u32 as i64, // SMB2
        0x0BD0_0BD0,            // Lustre
        0x4750_4653,            // GPFS
        0x00C3_6400,            // CephFS
        0x1983_0326,            // BeeGFS
        0x0102_1997,            // 9p
        0x5346_414F,            // AFS
        0x7461_636F,            // OCFS2
        0x0116_1970,            // GFS2
        0xAAD7_AAEA_u32 as i64, // PanFS
    ];
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a writable statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)]
    let t = st.f_type as i64;
    SHARED.contains(&t) || SHARED.contains(&(t & 0xFFFF_FFFF))
}

/// A held lock; released on drop.
pub struct KeyLock {
    _file: Option<File>,
    lease: Option<LeaseGuard>,
}

impl KeyLock {
    /// The lease's token, when this lock is a lease (to hand to a Slurm job).
    pub fn lease_token(&self) -> Option<&str> {
        self.lease.as_ref().map(|l| l.token.as_str())
    }
}

/// The contents of a lease file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct LeaseFile {
    token: String,
    host: String,
    pid: u32,
    /// Unix milliseconds after which the lease may be broken.
    expires_at_ms: u64,
}

/// A held (or adopted) lease and its heartbeat thread.
struct LeaseGuard {
    path: PathBuf,
    token: String,
    /// Whether this process created it (and removes it on release).
    owner: bool,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Leases this process created and holds, for [`release_held_leases`].
static HELD: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The lease time to live (`PIPE_LOCK_TTL` seconds, default 30).
pub fn lease_ttl() -> Duration {
    let secs = std::env::var("PIPE_LOCK_TTL").ok().and_then(|s| s.parse::<f64>().ok()).filter(|s| *s > 0.0).unwrap_or(30.0);
    Duration::from_secs_f64(secs)
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its length.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown".into()
    }
}

fn read_lease(path: &Path) -> Option<LeaseFile> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn lease_bytes(token: &str, ttl: Duration) -> Vec<u8> {
    let l = LeaseFile {
        token: token.to_string(),
        host: hostname(),
        pid: std::process::id(),
        expires_at_ms: now_ms() + ttl.as_millis() as u64,
    };
    serde_json::to_vec(&l).expect("a lease encodes")
}

/// Creates the lease at `path` if none exists: written to a temp file, then linked to its name.
fn create_lease(path: &Path, token: &str, ttl: Duration) -> std::io::Result<bool> {
    let tmp = path.with_extension(format!("lease.new-{token}"));
    std::fs::write(&tmp, lease_bytes(token, ttl))?;
    let r = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Refreshes the lease at `path` if it still holds `token`; false when it was lost.
fn refresh_lease(path: &Path, token: &str, ttl: Duration) -> bool {
    if read_lease(path).is_none_or(|l| l.token != token) {
        return false;
    }
    let tmp = path.with_extension(format!("lease.beat-{token}-{}", std::process::id()));
    std::fs::write(&tmp, lease_bytes(token, ttl)).and_then(|()| std::fs::rename(&tmp, path)).is_ok()
}

/// Breaks the expired lease `expired` at `path`: renames it away, and puts it back if what was
/// renamed turns out to be someone else's fresh lease.
fn break_lease(path: &Path, expired: &LeaseFile, me: &str) {
    let aside = path.with_extension(format!("lease.broken-{me}"));
    if std::fs::rename(path, &aside).is_err() {
        return;
    }
    match read_lease(&aside) {
        Some(l) if l.token != expired.token => {
            let _ = std::fs::hard_link(&aside, path);
        }
        _ => tracing::warn!(
            "broke the expired lock lease {} of {} pid {} (expired {} ms ago)",
            path.display(),
            expired.host,
            expired.pid,
            now_ms().saturating_sub(expired.expires_at_ms)
        ),
    }
    let _ = std::fs::remove_file(&aside);
}

impl LeaseGuard {
    fn start(path: PathBuf, token: String, owner: bool, ttl: Duration) -> LeaseGuard {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (p, t, s) = (path.clone(), token.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("pipe-lease".into())
            .spawn(move || {
                let (lock, cv) = &*s;
                let mut stopped = lock.lock().expect("lease stop flag");
                loop {
                    // The flag may be set before this thread first waits.
                    if *stopped {
                        return;
                    }
                    let (guard, _) = cv.wait_timeout(stopped, ttl / 3).expect("lease stop flag");
                    stopped = guard;
                    if *stopped {
                        return;
                    }
                    if !refresh_lease(&p, &t, ttl) {
                        tracing::warn!("lost the lock lease {}: another process broke it after it expired", p.display());
                        return;
                    }
                }
            })
            .ok();
        if owner {
            HELD.lock().expect("held leases").push((path.clone(), token.clone()));
        }
        LeaseGuard { path, token, owner, stop, thread }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        {
            let (lock, cv) = &*self.stop;
            *lock.lock().expect("lease stop flag") = true;
            cv.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.owner {
            if read_lease(&self.path).is_some_and(|l| l.token == self.token) {
                let _ = std::fs::remove_file(&self.path);
            }
            HELD.lock().expect("held leases").retain(|(_, t)| *t != self.token);
        }
    }
}

/// Removes every lease this process holds (for an exit that skips destructors: Ctrl-C).
pub fn release_held_leases() {
    let held = std::mem::take(&mut *HELD.lock().unwrap_or_else(|e| e.into_inner()));
    for (path, token) in held {
        if read_lease(&path).is_some_and(|l| l.token == token) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// True when a live (unexpired) lease is at `path`.
pub fn lease_live(path: &Path) -> bool {
    read_lease(path).is_some_and(|l| l.expires_at_ms > now_ms())
}

/// Takes the lease at `path`, calling `on_wait` once if another holds it, then polling until it
/// is released or expires.
pub fn acquire_lease(path: &Path, on_wait: impl FnOnce()) -> Result<KeyLock, CacheError> {
    let ttl = lease_ttl();
    let token = format!("{:016x}{:08x}", rand::random::<u64>(), std::process::id());
    let mut on_wait = Some(on_wait);
    loop {
        if create_lease(path, &token, ttl).map_err(io("creating lease", path))? {
            return Ok(KeyLock { _file: None, lease: Some(LeaseGuard::start(path.to_path_buf(), token, true, ttl)) });
        }
        match read_lease(path) {
            Some(l) if l.expires_at_ms < now_ms() => {
                break_lease(path, &l, &token);
                continue;
            }
            // Unreadable: a lease being replaced, or garbage; garbage older than a time to live goes.
            None => {
                let old = std::fs::metadata(path).and_then(|m| m.modified()).ok().and_then(|m| m.elapsed().ok());
                if old.is_some_and(|age| age > ttl) {
                    let _ = std::fs::remove_file(path);
                    continue;
                }
            }
            Some(_) => {}
        }
        if let Some(f) = on_wait.take() {
            f();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Adopts the lease at `path` that a parent process (the orchestrator of a Slurm job) holds
/// with `token`: refreshes it while held, never removes it.
pub fn adopt(path: &Path, token: &str) -> Result<KeyLock, CacheError> {
    match read_lease(path) {
        Some(l) if l.token == token => {
            Ok(KeyLock { _file: None, lease: Some(LeaseGuard::start(path.to_path_buf(), token.to_string(), false, lease_ttl())) })
        }
        other => Err(CacheError::Io {
            action: "adopting the lock lease",
            path: path.to_path_buf(),
            source: std::io::Error::other(match other {
                None => "no lease is held (did the orchestrator stop?)".to_string(),
                Some(l) => format!("the lease is held by another process ({} pid {})", l.host, l.pid),
            }),
        }),
    }
}

/// Takes the key lock in `mode`: the flock at `flock_path`, and with leases also the lease at
/// `lease_path`.
pub fn acquire_mode(mode: LockMode, flock_path: &Path, lease_path: &Path, on_wait: impl FnOnce()) -> Result<KeyLock, CacheError> {
    let waited = std::cell::Cell::new(false);
    let mut on_wait = Some(on_wait);
    let mut wait_once = || {
        if !waited.replace(true) {
            if let Some(f) = on_wait.take() {
                f();
            }
        }
    };
    let file = match mode {
        LockMode::LeaseOnly => None,
        LockMode::Flock | LockMode::Lease => acquire(flock_path, &mut wait_once)?._file,
    };
    if mode == LockMode::Flock {
        return Ok(KeyLock { _file: file, lease: None });
    }
    let lease = acquire_lease(lease_path, &mut wait_once)?;
    Ok(KeyLock { _file: file, lease: lease.lease })
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
    Ok(KeyLock { _file: Some(file), lease: None })
}

/// Takes the lock only if it is free (used by `gc` to skip keys in use).
pub fn try_acquire(path: &Path) -> Result<Option<KeyLock>, CacheError> {
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(io("opening lock", path))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(KeyLock { _file: Some(file), lease: None })),
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

    #[test]
    fn a_lease_excludes_a_second_holder_until_released_and_can_be_adopted_by_token() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("k.lease");
        let first = acquire_lease(&p, || panic!("a free lease must not wait")).unwrap();
        let token = first.lease_token().unwrap().to_string();
        assert!(lease_live(&p));
        assert!(adopt(&p, "someone-else").is_err());
        let adopted = adopt(&p, &token).unwrap();
        drop(adopted);
        assert!(lease_live(&p), "an adopted lease is not removed by the adopter");
        let waited = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let h = s.spawn(|| acquire_lease(&p, || waited.store(true, std::sync::atomic::Ordering::SeqCst)).unwrap());
            std::thread::sleep(Duration::from_millis(600));
            assert!(waited.load(std::sync::atomic::Ordering::SeqCst), "the second holder waits");
            drop(first);
            let second = h.join().unwrap();
            assert_ne!(second.lease_token().unwrap(), token);
        });
        assert!(!p.exists(), "the owner removes its lease on release");
    }

    #[test]
    fn an_expired_lease_is_broken_and_a_live_one_is_not() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("k.lease");
        let stale = LeaseFile { token: "dead".into(), host: "elsewhere".into(), pid: 1, expires_at_ms: now_ms() - 1 };
        std::fs::write(&p, serde_json::to_vec(&stale).unwrap()).unwrap();
        let lock = acquire_lease(&p, || panic!("an expired lease is broken, not waited for")).unwrap();
        assert_ne!(read_lease(&p).unwrap().token, "dead");
        drop(lock);
        let live = LeaseFile { token: "alive".into(), host: "elsewhere".into(), pid: 1, expires_at_ms: now_ms() + 60_000 };
        std::fs::write(&p, serde_json::to_vec(&live).unwrap()).unwrap();
        let created = create_lease(&p, "me", Duration::from_secs(1)).unwrap();
        assert!(!created, "a live lease is never replaced");
        assert_eq!(read_lease(&p).unwrap().token, "alive");
    }
}
