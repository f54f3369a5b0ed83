//! Moving bytes: verified downloads into a local staging path, uploads that skip what the remote
//! has. Big files go in 32 MiB parts, several at once (ranged GETs down, multipart uploads up).

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use super::layout::{self, Layout, Manifest, TreeEntry};
use super::{PushStats, RemoteError};

/// Part size of multipart uploads, the smallest part of ranged downloads, and the size up to
/// which a file moves in one request.
const PART: u64 = 32 << 20;
/// The largest part of a ranged download.
const MAX_GET_PART: u64 = 256 << 20;

/// The part size of a ranged download of `bytes`: the file split across the requests in flight
/// (a server that reads the whole object for each ranged GET, as some do, then reads it about
/// [`PARALLEL`] times, not once per 32 MiB), within [`PART`]..=[`MAX_GET_PART`] so that a
/// retried part stays cheap. Parts stream to disk: their size costs no memory.
fn get_part(bytes: u64) -> u64 {
    bytes.div_ceil(PARALLEL as u64).clamp(PART, MAX_GET_PART)
}
/// Transfers in flight at once (parts of a file, or files of a folder).
const PARALLEL: usize = 4;

/// A test hook: `PIPE_TEST_REMOTE_PAUSE_MS` makes every file and part transfer wait this long
/// after it is done, so that tests can kill pipe in the middle of a push or a pull.
fn pause() {
    static PAUSE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let ms = *PAUSE.get_or_init(|| std::env::var("PIPE_TEST_REMOTE_PAUSE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0));
    if ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

pub(crate) struct Transfers<'a> {
    pub(crate) store: &'a dyn ObjectStore,
    pub(crate) layout: &'a Layout,
    pub(crate) shown: &'a str,
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RemoteError + 'a {
    move |source| RemoteError::Io { action, path: path.to_path_buf(), source }
}

impl Transfers<'_> {
    fn err(&self, action: &'static str, path: &ObjPath) -> impl FnOnce(object_store::Error) -> RemoteError {
        let (remote, path) = (self.shown.to_string(), path.to_string());
        move |source| RemoteError::Store { remote, action, path, source: Box::new(source) }
    }

    fn corrupt(&self, path: &ObjPath, want: &str, got: String) -> RemoteError {
        RemoteError::Corrupt { remote: self.shown.to_string(), path: path.to_string(), want: want.to_string(), got }
    }

    /// A folder output's manifest, checked ([`layout::check_manifest`]).
    pub(crate) async fn manifest(&self, digest: &str) -> Result<Vec<TreeEntry>, RemoteError> {
        let path = self.layout.tree(digest);
        let bytes =
            self.store.get(&path).await.map_err(self.err("reading", &path))?.bytes().await.map_err(self.err("reading", &path))?;
        let invalid = |message: String| RemoteError::Invalid { remote: self.shown.to_string(), path: path.to_string(), message };
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| invalid(format!("not a folder manifest: {e}")))?;
        if m.pipe_tree != 1 {
            return Err(invalid(format!("manifest version {} (this pipe reads 1)", m.pipe_tree)));
        }
        layout::check_manifest(&m.files, digest).map_err(invalid)?;
        Ok(m.files)
    }

    /// Downloads a folder's files under `dest` (created), each verified.
    pub(crate) async fn download_tree(
        &self,
        entries: &[TreeEntry],
        dest: &Path,
        tick: &(dyn Fn(u64) + Sync),
    ) -> Result<(), RemoteError> {
        std::fs::create_dir_all(dest).map_err(io("creating", dest))?;
        for e in entries {
            if let Some(parent) = dest.join(&e.path).parent() {
                std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
            }
        }
        futures::stream::iter(entries.iter().map(|e| self.download_file(&e.digest, e.bytes, dest.join(&e.path), tick)))
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Downloads the file object `digest` (`bytes` long) to `dest`, and checks its blake3.
    pub(crate) async fn download_file(
        &self,
        digest: &str,
        bytes: u64,
        dest: impl AsRef<Path>,
        tick: &(dyn Fn(u64) + Sync),
    ) -> Result<(), RemoteError> {
        let dest = dest.as_ref();
        let path = self.layout.object(digest);
        let mut file = std::fs::File::create(dest).map_err(io("creating", dest))?;
        let got = if bytes <= PART {
            // One streamed GET, hashed as it arrives.
            let mut stream = self.store.get(&path).await.map_err(self.err("reading", &path))?.into_stream();
            let mut h = blake3::Hasher::new();
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(self.err("reading", &path))?;
                h.update(&chunk);
                file.write_all(&chunk).map_err(io("writing", dest))?;
                n += chunk.len() as u64;
                tick(chunk.len() as u64);
            }
            pause();
            if n != bytes {
                return Err(self.corrupt(&path, digest, format!("{n} bytes instead of {bytes} (truncated or replaced)")));
            }
            h.finalize().to_hex().to_string()
        } else {
            // Parts in parallel, each streamed to its place (writeback started as each lands),
            // then the whole file hashed: about 0.15 s a GiB, against 3 s to move it
            // (BENCHMARKS.md section 15).
            let meta = self.store.head(&path).await.map_err(self.err("reading", &path))?;
            if meta.size != bytes {
                return Err(self.corrupt(
                    &path,
                    digest,
                    format!("an object of {} bytes instead of {bytes} (truncated or replaced)", meta.size),
                ));
            }
            file.set_len(bytes).map_err(io("writing", dest))?;
            let part = get_part(bytes);
            let ranges: Vec<std::ops::Range<u64>> = (0..bytes).step_by(part as usize).map(|s| s..(s + part).min(bytes)).collect();
            let (file, path) = (&file, &path);
            futures::stream::iter(ranges.into_iter().map(|r| async move {
                // Each part streamed to its place as it arrives (not collected into one buffer
                // first: a copy less, and the disk starts sooner).
                let opts = GetOptions::new().with_range(Some(r.clone()));
                let mut stream = self.store.get_opts(path, opts).await.map_err(self.err("reading", path))?.into_stream();
                let mut at = r.start;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(self.err("reading", path))?;
                    if at + chunk.len() as u64 > r.end {
                        return Err(self.corrupt(path, digest, "a part longer than asked for (replaced)".into()));
                    }
                    file.write_all_at(&chunk, at).map_err(io("writing", dest))?;
                    at += chunk.len() as u64;
                    tick(chunk.len() as u64);
                }
                if at != r.end {
                    return Err(self.corrupt(path, digest, "a short part (truncated)".into()));
                }
                start_writeback(file, r.start, r.end - r.start);
                pause();
                Ok(())
            }))
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await?;
            crate::hash::hash_file(dest).map_err(io("hashing", dest))?
        };
        if got != digest {
            return Err(self.corrupt(&path, digest, got));
        }
        file.sync_all().map_err(io("syncing", dest))?;
        Ok(())
    }

    /// Uploads the local file `src` as object `digest`, unless the remote has it.
    pub(crate) async fn upload_file(
        &self,
        digest: &str,
        src: impl AsRef<Path>,
        bytes: u64,
        tick: &(dyn Fn(u64) + Sync),
    ) -> Result<PushStats, RemoteError> {
        let src = src.as_ref();
        let path = self.layout.object(digest);
        match self.store.head(&path).await {
            Ok(meta) if meta.size == bytes => {
                tick(bytes);
                return Ok(PushStats { skipped: 1, ..Default::default() });
            }
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.err("checking", &path)(e)),
        }
        let mut file = std::fs::File::open(src).map_err(io("reading", src))?;
        if bytes <= PART {
            let mut buf = Vec::with_capacity(bytes as usize);
            file.read_to_end(&mut buf).map_err(io("reading", src))?;
            self.store.put(&path, PutPayload::from(buf)).await.map_err(self.err("writing", &path))?;
            tick(bytes);
            pause();
        } else {
            let upload = self.store.put_multipart(&path).await.map_err(self.err("starting an upload of", &path))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART as usize);
            let mut buf = vec![0u8; PART as usize];
            let result: Result<(), RemoteError> = async {
                loop {
                    let n = read_full(&mut file, &mut buf).map_err(io("reading", src))?;
                    if n == 0 {
                        break;
                    }
                    w.wait_for_capacity(PARALLEL).await.map_err(self.err("writing", &path))?;
                    w.write(&buf[..n]);
                    tick(n as u64);
                    pause();
                }
                Ok(())
            }
            .await;
            if let Err(e) = result {
                let _ = w.abort().await;
                return Err(e);
            }
            w.finish().await.map_err(self.err("finishing an upload of", &path))?;
        }
        Ok(PushStats { uploaded: 1, bytes, skipped: 0 })
    }

    /// Uploads a folder output: its files (each unless present), then its manifest. A manifest
    /// in the remote means every file it lists was uploaded before it.
    pub(crate) async fn upload_tree(
        &self,
        digest: &str,
        dir: &Path,
        entries: &[TreeEntry],
        tick: &(dyn Fn(u64) + Sync),
    ) -> Result<PushStats, RemoteError> {
        let mpath = self.layout.tree(digest);
        match self.store.head(&mpath).await {
            Ok(_) => {
                tick(entries.iter().map(|e| e.bytes).sum());
                return Ok(PushStats { skipped: 1 + entries.len() as u64, ..Default::default() });
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.err("checking", &mpath)(e)),
        }
        let all: Vec<PushStats> =
            futures::stream::iter(entries.iter().map(|e| self.upload_file(&e.digest, dir.join(&e.path), e.bytes, tick)))
                .buffer_unordered(PARALLEL)
                .try_collect()
                .await?;
        let mut stats = PushStats::default();
        for s in all {
            stats.uploaded += s.uploaded;
            stats.bytes += s.bytes;
            stats.skipped += s.skipped;
        }
        let body = serde_json::to_vec(&Manifest { pipe_tree: 1, files: entries.to_vec() }).expect("a manifest always encodes");
        stats.bytes += body.len() as u64;
        self.store.put(&mpath, PutPayload::from(body)).await.map_err(self.err("writing", &mpath))?;
        stats.uploaded += 1;
        Ok(stats)
    }
}

/// Starts writing a just-written range to disk without waiting for it, so that the fsync before
/// publishing finds little left to write (as the GGUF writer does).
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open file descriptor; no memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset as libc::off64_t, len as libc::off64_t, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File, _offset: u64, _len: u64) {}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
