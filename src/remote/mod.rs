//! The remote cache: node records and their outputs shared through object storage (S3 or any
//! S3-compatible server, or a shared filesystem), so that a teammate or a CI runner pulls what
//! someone else computed instead of computing it again.
//!
//! ```text
//! <url>/v1/
//!   objects/<digest>        a file output, or one file of a folder output, named by its blake3
//!   trees/<digest>.json     a folder output: its files (relative path, digest, size)
//!   nodes/<key>.json        a node record in an envelope, with a MAC when PIPE_REMOTE_KEY is set
//!   sources/<id>.json       a `pypi:`/`hf:` source's digest (id: blake3 of its text), enveloped
//!   extras/<id>.json        a kind's extra key components (tokenize's), enveloped
//! ```
//!
//! The last two let a checkout compute its keys without fetching a model it will not run:
//! a node that reads a source still fetches it and checks it against the digest.
//!
//! Writes go objects first and the record last: a record in the remote is the commit point, so a
//! killed upload never shows as an entry, and two runners pushing one key write the same bytes.
//! Reads trust nothing they download: a file is hashed as it streams into the local cache's
//! `tmp/`, a folder's manifest must hash to the folder's digest, a record must hash to its own
//! key, and nothing is published locally until it matched (then by the local cache's atomic
//! rename, objects before the record).
//!
//! Faults never fail a run unless the mode is `require`: an unreachable or failing remote is
//! reported once and the run goes on locally (see [`Remote::record`] and the scheduler).

pub mod config;
mod layout;
mod sign;
mod transfer;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};

pub use config::{Mode, RemoteConfig};
pub use layout::TreeEntry;

use crate::cache::store::ObjectState;
use crate::cache::{CacheError, NodeRecord, OutputRecord, Store};
use crate::hash::Digest;

/// Errors from the remote cache. None of them carries credentials: URLs are shown without
/// user or password, and the storage library's messages name paths, not secrets.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The remote URL cannot be used.
    #[error("remote `{url}`: {message}")]
    Url { url: String, message: String },
    /// The storage service failed (unreachable, refused, timed out, denied).
    #[error("remote {remote}: {action} {path}: {source}")]
    Store { remote: String, action: &'static str, path: String, source: Box<object_store::Error> },
    /// A downloaded object does not hash to its name: corrupted or truncated in the remote.
    #[error("remote {remote}: {path} is corrupt: its bytes hash to {got}, not {want} (not used)")]
    Corrupt { remote: String, path: String, want: String, got: String },
    /// A record or manifest in the remote cannot be used.
    #[error("remote {remote}: {path}: {message}")]
    Invalid { remote: String, path: String, message: String },
    /// The local cache failed while taking a download.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A local file could not be read or written during a transfer.
    #[error("remote transfer: {action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    /// The remote was found unreachable earlier in this run; it is not tried again.
    #[error("remote {remote} is unreachable (see the first warning); not tried again in this run")]
    Down { remote: String },
}

impl RemoteError {
    /// True for a missing object (not an error for reads: the remote simply lacks it).
    fn is_not_found(&self) -> bool {
        matches!(self, RemoteError::Store { source, .. } if matches!(**source, object_store::Error::NotFound { .. }))
    }

    /// True for an error of the service or the network, as opposed to bad content.
    pub fn is_transport(&self) -> bool {
        matches!(self, RemoteError::Store { .. } | RemoteError::Down { .. })
    }
}

/// What a push moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PushStats {
    /// Objects uploaded (files, manifests and the record).
    pub uploaded: u64,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Objects the remote already had.
    pub skipped: u64,
}

/// What a pull moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PullStats {
    /// Files downloaded.
    pub files: u64,
    /// Bytes downloaded.
    pub bytes: u64,
}

/// `sources/<blake3 of the text>.json`: a source's digest.
#[derive(serde::Serialize, serde::Deserialize)]
struct SourceEntry {
    source: String,
    digest: Digest,
}

/// `extras/<id>.json`: a kind's extra key components.
#[derive(serde::Serialize, serde::Deserialize)]
struct ExtrasEntry {
    id: String,
    values: BTreeMap<String, String>,
}

/// A connection to one remote cache. Every method blocks; transfers run on the remote's own
/// small async runtime, several at once for folders and big files.
pub struct Remote {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    layout: layout::Layout,
    shown: String,
    mode: Mode,
    mac: Option<sign::MacKey>,
    down: AtomicBool,
    denied: AtomicBool,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.shown).field("mode", &self.mode).finish()
    }
}

impl Remote {
    /// Connects (lazily: nothing is sent until the first request) to the remote `cfg` names.
    pub fn open(cfg: &RemoteConfig) -> Result<Remote, RemoteError> {
        let url =
            url::Url::parse(&cfg.url).map_err(|e| RemoteError::Url { url: config::redact(&cfg.url), message: e.to_string() })?;
        let shown = config::redact(&cfg.url);
        let bad = |message: String| RemoteError::Url { url: shown.clone(), message };
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match url.scheme() {
            "s3" => {
                let bucket =
                    url.host_str().filter(|b| !b.is_empty()).ok_or_else(|| bad("no bucket: use s3://BUCKET/PREFIX".into()))?;
                // Client options first: `s3_builder` adds `allow_http` to them for an http endpoint.
                // Payloads are not hashed into the request signature (SHA-256 over every uploaded
                // byte, a CPU-bound pass as long as the transfer): each object is named by its
                // blake3 and checked against it by every reader, and TLS protects https endpoints.
                let b = AmazonS3Builder::from_env()
                    .with_unsigned_payload(true)
                    .with_bucket_name(bucket)
                    .with_client_options(client_options())
                    .with_retry(retry_config());
                let b = config::s3_builder(b).map_err(bad)?;
                let s3 = b.build().map_err(|e| bad(e.to_string()))?;
                (Arc::new(s3), url.path().trim_matches('/').to_string())
            }
            "file" => {
                let path = url.to_file_path().map_err(|_| bad("not a local path: use file:///absolute/path".into()))?;
                std::fs::create_dir_all(&path).map_err(|e| bad(format!("creating {}: {e}", path.display())))?;
                let fs = LocalFileSystem::new_with_prefix(&path).map_err(|e| bad(e.to_string()))?;
                (Arc::new(fs), String::new())
            }
            other => {
                return Err(bad(format!("unsupported scheme `{other}://` (this build supports s3:// and file://)")));
            }
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pipe-remote")
            .enable_all()
            .build()
            .map_err(|e| RemoteError::Io { action: "starting the transfer runtime", path: PathBuf::new(), source: e })?;
        Ok(Remote {
            rt,
            store,
            layout: layout::Layout::new(&prefix),
            shown,
            mode: cfg.mode,
            mac: cfg.key.as_deref().map(sign::MacKey::new),
            down: AtomicBool::new(false),
            denied: AtomicBool::new(false),
        })
    }

    /// The remote's URL, without credentials.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// The mode it was opened with.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether pushes are attempted (mode `write` or `require`, and no permission error yet).
    pub fn writable(&self) -> bool {
        self.mode.writes() && !self.denied.load(Ordering::Relaxed)
    }

    /// Whether reads are attempted.
    pub fn readable(&self) -> bool {
        self.mode.reads()
    }

    fn check_up(&self) -> Result<(), RemoteError> {
        if self.down.load(Ordering::Relaxed) {
            return Err(RemoteError::Down { remote: self.shown.clone() });
        }
        Ok(())
    }

    /// Notes a transport failure: after one, the remote is not tried again in this process
    /// (a dead server must not cost every node its timeouts). Permission errors on writes only
    /// stop writes. Returns the error.
    fn note(&self, e: RemoteError) -> RemoteError {
        if let RemoteError::Store { source, .. } = &e {
            match &**source {
                object_store::Error::NotFound { .. } | object_store::Error::AlreadyExists { .. } => {}
                object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                    self.denied.store(true, Ordering::Relaxed);
                }
                _ => self.down.store(true, Ordering::Relaxed),
            }
        }
        e
    }

    fn store_err(
        &self,
        action: &'static str,
        path: &object_store::path::Path,
    ) -> impl FnOnce(object_store::Error) -> RemoteError + '_ {
        let path = path.to_string();
        move |source| RemoteError::Store { remote: self.shown.clone(), action, path, source: Box::new(source) }
    }

    /// The record of `key`, if the remote has a valid one. A record whose content does not
    /// hash to `key`, or (with a MAC key set) is unsigned or badly signed, is an
    /// [`RemoteError::Invalid`]: the caller ignores it and computes the node.
    pub fn record(&self, key: &str) -> Result<Option<NodeRecord>, RemoteError> {
        let path = self.layout.record(key);
        let Some(bytes) = self.get_small(&path)? else { return Ok(None) };
        let invalid = |message: String| RemoteError::Invalid { remote: self.shown.clone(), path: path.to_string(), message };
        let rec = sign::open(&bytes, self.mac.as_ref()).map_err(invalid)?;
        if rec.key != key || rec.parts.key() != key {
            return Err(invalid(format!("the record is for key {}, its parts hash to {}", rec.key, rec.parts.key())));
        }
        if let Some((name, digest)) = rec.bad_digest() {
            return Err(invalid(format!("the record gives output `{name}` the digest {digest:?}, which is not a digest")));
        }
        Ok(Some(rec))
    }

    /// A small sealed entry at `path` (a source's digest, extra key components), if the remote
    /// has a valid one.
    fn small<T: serde::de::DeserializeOwned>(
        &self,
        domain: &str,
        path: &object_store::path::Path,
    ) -> Result<Option<T>, RemoteError> {
        let Some(bytes) = self.get_small(path)? else { return Ok(None) };
        let invalid = |message: String| RemoteError::Invalid { remote: self.shown.clone(), path: path.to_string(), message };
        sign::open_in(domain, &bytes, self.mac.as_ref()).map(Some).map_err(invalid)
    }

    /// The bytes of a small object (a record, an entry), `None` when the remote lacks it.
    fn get_small(&self, path: &object_store::path::Path) -> Result<Option<bytes::Bytes>, RemoteError> {
        self.check_up()?;
        match self.rt.block_on(async { self.store.get(path).await?.bytes().await }) {
            Ok(b) => Ok(Some(b)),
            Err(e) => {
                let e = self.store_err("reading", path)(e);
                if e.is_not_found() {
                    Ok(None)
                } else {
                    Err(self.note(e))
                }
            }
        }
    }

    fn put_small<T: serde::Serialize>(
        &self,
        domain: &str,
        path: &object_store::path::Path,
        value: &T,
    ) -> Result<(), RemoteError> {
        self.check_up()?;
        let body = sign::seal_in(domain, value, self.mac.as_ref());
        self.rt.block_on(self.store.put(path, body.into())).map_err(self.store_err("writing", path)).map_err(|e| self.note(e))?;
        Ok(())
    }

    /// The digest of source `text` (`pypi:...`, `hf:...`) as whoever pushed a node reading it
    /// computed it: the keys of a checkout that pulls need it, the source's bytes only if a node
    /// that reads them runs there (and then they are checked against it).
    pub fn source_digest(&self, text: &str) -> Result<Option<Digest>, RemoteError> {
        let path = self.layout.source(text);
        let Some(entry) = self.small::<SourceEntry>("source", &path)? else { return Ok(None) };
        if entry.source != text {
            let message = format!("the entry is for source `{}`", entry.source);
            return Err(RemoteError::Invalid { remote: self.shown.clone(), path: path.to_string(), message });
        }
        Ok(Some(entry.digest))
    }

    /// Records source `text`'s digest in the remote.
    pub fn push_source(&self, text: &str, digest: &str) -> Result<(), RemoteError> {
        self.put_small("source", &self.layout.source(text), &SourceEntry { source: text.into(), digest: digest.into() })
    }

    /// A kind's extra key components memoised under `id` (a digest of the kind, its version,
    /// params and input digests: see `Session::key_parts`), if the remote has them.
    pub fn extras(&self, id: &str) -> Result<Option<BTreeMap<String, String>>, RemoteError> {
        let path = self.layout.extras(id);
        let Some(entry) = self.small::<ExtrasEntry>("extras", &path)? else { return Ok(None) };
        if entry.id != id {
            let message = format!("the entry is for {}", entry.id);
            return Err(RemoteError::Invalid { remote: self.shown.clone(), path: path.to_string(), message });
        }
        Ok(Some(entry.values))
    }

    /// Stores extra key components under `id` in the remote.
    pub fn push_extras(&self, id: &str, values: &BTreeMap<String, String>) -> Result<(), RemoteError> {
        self.put_small("extras", &self.layout.extras(id), &ExtrasEntry { id: id.into(), values: values.clone() })
    }

    /// Whether the remote has a record for `key` (not read or checked: for skipping pushes).
    pub fn has_record(&self, key: &str) -> Result<bool, RemoteError> {
        self.check_up()?;
        let path = self.layout.record(key);
        match self.rt.block_on(self.store.head(&path)) {
            Ok(_) => Ok(true),
            Err(e) => {
                let e = self.store_err("checking", &path)(e);
                if e.is_not_found() {
                    Ok(false)
                } else {
                    Err(self.note(e))
                }
            }
        }
    }

    /// Downloads every output of `rec` the local cache lacks into it, verified, then writes the
    /// record locally. `progress` gets the bytes done so far and the total.
    pub fn pull(&self, cache: &Store, rec: &NodeRecord, progress: &(dyn Fn(u64, u64) + Sync)) -> Result<PullStats, RemoteError> {
        self.check_up()?;
        let total: u64 = rec.outputs.values().filter(|o| !cache.object_path(&o.digest).exists()).map(|o| o.bytes).sum();
        let mut stats = PullStats::default();
        let done = std::sync::atomic::AtomicU64::new(0);
        let tick = |n: u64| progress(done.fetch_add(n, Ordering::Relaxed) + n, total);
        for out in rec.outputs.values() {
            let s = self.pull_output(cache, out, &tick).map_err(|e| self.note(e))?;
            stats.files += s.files;
            stats.bytes += s.bytes;
        }
        cache.write_record(rec)?;
        Ok(stats)
    }

    /// Downloads one output into the local cache (nothing when it is there already).
    pub fn pull_output(&self, cache: &Store, out: &OutputRecord, tick: &(dyn Fn(u64) + Sync)) -> Result<PullStats, RemoteError> {
        match cache.object_state(out) {
            ObjectState::Intact => return Ok(PullStats::default()),
            ObjectState::Gone => {}
            // Damaged here (truncated, replaced): moved aside so the good bytes can take its place.
            ObjectState::Damaged(_) => {
                cache.quarantine(&cache.object_path(&out.digest))?;
            }
        }
        self.check_up()?;
        let t = transfer::Transfers { store: &*self.store, layout: &self.layout, shown: &self.shown };
        let staging = cache.staging(&out.digest)?;
        let result = self.rt.block_on(async {
            if out.dir {
                let entries = t.manifest(&out.digest).await?;
                t.download_tree(&entries, &staging.join("o"), tick).await?;
                Ok::<_, RemoteError>(PullStats { files: entries.len() as u64, bytes: entries.iter().map(|e| e.bytes).sum() })
            } else {
                t.download_file(&out.digest, out.bytes, &staging.join("o"), tick).await?;
                Ok(PullStats { files: 1, bytes: out.bytes })
            }
        });
        let result = result.and_then(|s| {
            cache.adopt_object(&staging.join("o"), &out.digest)?;
            Ok(s)
        });
        let _ = std::fs::remove_dir_all(&staging);
        result
    }

    /// Uploads `rec`'s outputs (what the remote lacks) from the local cache, then the record.
    pub fn push(&self, cache: &Store, rec: &NodeRecord, progress: &(dyn Fn(u64, u64) + Sync)) -> Result<PushStats, RemoteError> {
        self.check_up()?;
        let t = transfer::Transfers { store: &*self.store, layout: &self.layout, shown: &self.shown };
        let total: u64 = rec.outputs.values().map(|o| o.bytes).sum();
        let done = std::sync::atomic::AtomicU64::new(0);
        let tick = |n: u64| progress(done.fetch_add(n, Ordering::Relaxed) + n, total);
        let result = self.rt.block_on(async {
            let mut stats = PushStats::default();
            for out in rec.outputs.values() {
                let path = cache.object_path(&out.digest);
                let s = if out.dir {
                    let entries = layout::tree_entries(&path).map_err(|source| RemoteError::Io {
                        action: "reading",
                        path: path.clone(),
                        source,
                    })?;
                    t.upload_tree(&out.digest, &path, &entries, &tick).await?
                } else {
                    t.upload_file(&out.digest, &path, out.bytes, &tick).await?
                };
                stats.uploaded += s.uploaded;
                stats.bytes += s.bytes;
                stats.skipped += s.skipped;
            }
            let body = sign::seal(rec, self.mac.as_ref());
            let rpath = self.layout.record(&rec.key);
            stats.bytes += body.len() as u64;
            self.store.put(&rpath, body.into()).await.map_err(self.store_err("writing", &rpath))?;
            stats.uploaded += 1;
            Ok::<_, RemoteError>(stats)
        });
        result.map_err(|e| self.note(e))
    }
}

fn client_options() -> ClientOptions {
    // Connecting is quick or not at all; one request (a 32 MiB part at worst) gets two minutes.
    ClientOptions::new().with_connect_timeout(Duration::from_secs(5)).with_timeout(Duration::from_secs(120))
}

fn retry_config() -> RetryConfig {
    // A few retries with backoff for a flaky service; a dead one gives up within ~10 s so the
    // run goes on locally.
    RetryConfig {
        backoff: BackoffConfig { init_backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(2), base: 2.0 },
        max_retries: 3,
        retry_timeout: Duration::from_secs(10),
    }
}
