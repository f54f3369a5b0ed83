//! The content-addressed store: publishing outputs and records atomically, reading them back,
//! run records, and garbage collection. See the module docs of [`crate::cache`] for the layout.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::lock::{self, KeyLock, LockMode};
use super::pins::{self, EntriesGuard, Pins};
use super::{io, CacheError};
use crate::hash::{self, Digest, KeyParts};

/// One published output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputRecord {
    /// Content digest (also the object's name).
    pub digest: Digest,
    /// True when the output is a folder.
    pub dir: bool,
    /// Total size in bytes.
    pub bytes: u64,
}

/// What a completed node run left in the cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node key.
    pub key: Digest,
    /// The node's name in the pipeline that produced it (informational).
    pub node: String,
    /// Everything that went into the key.
    pub parts: KeyParts,
    /// Outputs by name.
    pub outputs: BTreeMap<String, OutputRecord>,
    /// Unix seconds when the run started.
    pub started_at: u64,
    /// Wall time of the run.
    pub duration_ms: u64,
    /// `pipe` version that produced it.
    pub pipe_version: String,
    /// The node's one-line summary ("334 records, 4 bad").
    #[serde(default)]
    pub summary: Option<String>,
}

impl NodeRecord {
    /// The first output (name, digest) whose digest is not of a digest's form: a damaged or
    /// crafted record, whose object path would not be a file of `objects/`.
    pub fn bad_digest(&self) -> Option<(&str, &str)> {
        self.outputs.iter().find(|(_, o)| !hash::is_digest(&o.digest)).map(|(n, o)| (n.as_str(), o.digest.as_str()))
    }
}

/// A node as recorded in the latest run of a pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunNode {
    /// Its key.
    pub key: Digest,
    /// Its key parts (for `status --why`).
    pub parts: KeyParts,
}

/// The latest run of one pipeline file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunRecord {
    /// The pipeline's name.
    pub pipeline: String,
    /// The pipeline file's canonical path.
    pub file: String,
    /// Unix seconds.
    pub finished_at: u64,
    /// Completed nodes (ran or cached) by name.
    pub nodes: BTreeMap<String, RunNode>,
}

/// What [`Store::lookup`] found for a key.
#[derive(Debug)]
pub enum Lookup {
    /// A usable entry.
    Hit(NodeRecord),
    /// No entry (or one whose objects were collected).
    Absent,
    /// A damaged entry: `why`, and the digests of the objects to move aside before recomputing.
    Damaged { why: String, objects: Vec<Digest> },
}

/// An object as [`Store::object_state`] finds it.
#[derive(Debug, PartialEq, Eq)]
pub enum ObjectState {
    /// There, of the recorded kind and size.
    Intact,
    /// Not there (collected, or never pulled).
    Gone,
    /// There but not what its record says: what is wrong.
    Damaged(String),
}

/// Memoised kind-specific key components and the side files (path, digest) they were computed from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExtraMemo {
    /// The components.
    pub values: BTreeMap<String, String>,
    /// Files read to compute them, with their digests at the time.
    pub files: Vec<(String, Digest)>,
    /// Whether the kind read only its own inputs (already in the key by content) to compute
    /// them, so that another machine may reuse them (the remote cache shares such memos).
    #[serde(default)]
    pub portable: bool,
}

/// What `gc` removed (or would remove).
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    /// Node records removed.
    pub records: Vec<String>,
    /// Objects removed.
    pub objects: Vec<String>,
    /// Bytes freed.
    pub bytes: u64,
}

/// A cache folder.
pub struct Store {
    root: PathBuf,
    lock_mode: LockMode,
    pins: Pins,
}

const DIRS: &[&str] = &["objects", "nodes", "logs", "runs", "locks", "work", "extra", "tmp", pins::LIVE];

/// What a record keeps about the run that computed it (none of it is part of the key).
#[derive(Debug, Clone, Default)]
pub struct RunFacts {
    /// Unix seconds when the node started.
    pub started_at: u64,
    /// How long it ran.
    pub duration_ms: u64,
    /// The node's one-line summary.
    pub summary: Option<String>,
}

impl Store {
    /// Opens (creating if needed) the cache at `root`.
    pub fn open(root: &Path) -> Result<Store, CacheError> {
        for d in DIRS {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io("creating", &p))?;
        }
        let ignore = root.join(".gitignore");
        if !ignore.exists() {
            let _ = fs::write(&ignore, "*\n");
        }
        let root = root.canonicalize().map_err(io("opening", root))?;
        let lock_mode = LockMode::for_folder(&root);
        Ok(Store { root, lock_mode, pins: Pins::default() })
    }

    /// The cache folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Holds the entries lock shared, for a step that finds, pulls or publishes an entry, so
    /// that no gc runs in between ([`pins`]).
    pub fn hold_entries(&self) -> Result<EntriesGuard, CacheError> {
        pins::hold_shared(&self.root)
    }

    /// Holds the entries lock shared and pins `key`, keeping its entry from gc while this
    /// process lives ([`pins`]): call before looking the key up, and keep the guard until the
    /// entry is found, pulled or known to be missing.
    pub fn hold_and_pin(&self, key: &str) -> Result<EntriesGuard, CacheError> {
        let guard = self.hold_entries()?;
        self.pins.pin(&self.root, key)?;
        Ok(guard)
    }

    /// Where the object with this digest lives.
    pub fn object_path(&self, digest: &str) -> PathBuf {
        // Records are checked to hold digests when read; a shorter name still gets a path.
        self.root.join("objects").join(digest.get(..2).unwrap_or(digest)).join(digest)
    }

    pub fn record_path(&self, key: &str) -> PathBuf {
        self.root.join("nodes").join(format!("{key}.json"))
    }

    /// The log of the run that produced `key`.
    pub fn log_path(&self, key: &str) -> PathBuf {
        self.root.join("logs").join(format!("{key}.log"))
    }

    /// The persistent scratch folder of `key` (checkpoints).
    pub fn work_dir(&self, key: &str) -> PathBuf {
        self.root.join("work").join(key)
    }

    /// The stat cache file.
    pub fn stat_cache_path(&self) -> PathBuf {
        self.root.join("stat-cache.json")
    }

    /// Memoised extra key components, stored under a digest of what determines them.
    pub fn extra(&self, id: &str) -> Option<ExtraMemo> {
        serde_json::from_slice(&fs::read(self.root.join("extra").join(format!("{id}.json"))).ok()?).ok()
    }

    /// Stores memoised extra key components.
    pub fn put_extra(&self, id: &str, extra: &ExtraMemo) -> Result<(), CacheError> {
        let path = self.root.join("extra").join(format!("{id}.json"));
        let bytes = serde_json::to_vec(extra).map_err(|source| CacheError::Encode { path: path.clone(), source })?;
        write_atomic(&path, &bytes)
    }

    /// The record for `key`, if it exists and every object it names is present and intact as
    /// far as a cheap check tells ([`Store::lookup`] says why not).
    pub fn record(&self, key: &str) -> Option<NodeRecord> {
        match self.lookup(key) {
            Lookup::Hit(rec) => Some(rec),
            _ => None,
        }
    }

    /// The entry of `key`: a hit; absent (no record, or an object gone, e.g. collected); or
    /// damaged: a record that does not read or is not the record of its key (edited), or an
    /// object that is not what its record says (truncated, replaced, a file for a folder). The
    /// checks are cheap (sizes, the record's own key), made on every use; `pipe fsck` rehashes.
    pub fn lookup(&self, key: &str) -> Lookup {
        let path = self.record_path(key);
        let Ok(bytes) = fs::read(&path) else { return Lookup::Absent };
        let rec: NodeRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                return Lookup::Damaged { why: format!("its record {} does not read: {e}", path.display()), objects: vec![] }
            }
        };
        if rec.key != key || rec.parts.key() != key {
            let why = format!("its record {} was edited: it hashes to {}, not to its key", path.display(), rec.parts.key());
            return Lookup::Damaged { why, objects: vec![] };
        }
        if let Some((name, digest)) = rec.bad_digest() {
            let why = format!("its record {} gives output `{name}` the digest {digest:?}, which is not a digest", path.display());
            return Lookup::Damaged { why, objects: vec![] };
        }
        for (name, o) in &rec.outputs {
            match self.object_state(o) {
                ObjectState::Intact => {}
                ObjectState::Gone => return Lookup::Absent,
                ObjectState::Damaged(found) => {
                    let why = format!("output `{name}` ({}) {found}", self.object_path(&o.digest).display());
                    return Lookup::Damaged { why, objects: vec![o.digest.clone()] };
                }
            }
        }
        Lookup::Hit(rec)
    }

    /// An output's object by a cheap check: there or not, and of the kind (file or folder) and
    /// size its record says.
    pub fn object_state(&self, o: &OutputRecord) -> ObjectState {
        let p = self.object_path(&o.digest);
        let Ok(md) = fs::symlink_metadata(&p) else { return ObjectState::Gone };
        let (size, what) = if md.is_dir() { (tree_size(&p), "folder") } else { (md.len(), "file") };
        if md.is_dir() != o.dir {
            return ObjectState::Damaged(format!("is a {what}, its record says a {}", if o.dir { "folder" } else { "file" }));
        }
        if size != o.bytes {
            return ObjectState::Damaged(format!("is {size} bytes, its record says {}", o.bytes));
        }
        ObjectState::Intact
    }

    /// Whether an output's object is present and passes the cheap check.
    pub fn object_ok(&self, o: &OutputRecord) -> bool {
        matches!(self.object_state(o), ObjectState::Intact)
    }

    /// Moves a damaged object (or a record) out of the way, into `tmp/damaged-*` (kept for a look,
    /// removed by `pipe gc`), so that a recomputed entry can be published in its place.
    pub fn quarantine(&self, path: &Path) -> Result<PathBuf, CacheError> {
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let dest = self.root.join("tmp").join(format!("damaged-{name}-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        fs::create_dir_all(self.root.join("tmp")).map_err(io("creating", &self.root.join("tmp")))?;
        fs::rename(path, &dest).map_err(io("moving aside", path))?;
        Ok(dest)
    }

    /// Locks keys with leases from now on (a cache that Slurm jobs on other machines share).
    pub fn use_leases(&mut self) {
        if self.lock_mode == LockMode::Flock {
            self.lock_mode = LockMode::Lease;
        }
    }

    /// How this cache locks keys.
    pub fn lock_mode(&self) -> LockMode {
        self.lock_mode
    }

    fn lease_path(&self, key: &str) -> PathBuf {
        self.root.join("locks").join(format!("{key}.lease"))
    }

    /// Locks `key` against other processes; `on_wait` runs if someone else holds it.
    pub fn lock(&self, key: &str, on_wait: impl FnOnce()) -> Result<KeyLock, CacheError> {
        lock::acquire_mode(self.lock_mode, &self.root.join("locks").join(format!("{key}.lock")), &self.lease_path(key), on_wait)
    }

    /// Adopts the lease on `key` that the process which submitted this one holds with `token`.
    pub fn adopt_lock(&self, key: &str, token: &str) -> Result<KeyLock, CacheError> {
        lock::adopt(&self.lease_path(key), token)
    }

    /// A fresh, empty staging folder under `tmp/`.
    pub fn staging(&self, key: &str) -> Result<PathBuf, CacheError> {
        let nonce: u32 = rand::random();
        let p = self.root.join("tmp").join(format!("{}-{}-{nonce:08x}", &key[..12.min(key.len())], std::process::id()));
        fs::create_dir_all(&p).map_err(io("creating", &p))?;
        Ok(p)
    }

    /// Moves each output from `staging` into `objects/` and writes the node record, atomically.
    /// `outputs` lists (name, is_dir). Returns the published record.
    pub fn publish(
        &self,
        key: &str,
        node: &str,
        parts: &KeyParts,
        staging: &Path,
        outputs: &[(&str, bool)],
        run: RunFacts,
    ) -> Result<NodeRecord, CacheError> {
        let RunFacts { started_at, duration_ms, summary } = run;
        let mut recs = BTreeMap::new();
        for &(name, dir) in outputs {
            let src = staging.join(name);
            let md = fs::metadata(&src).map_err(io("reading output", &src))?;
            if md.is_dir() != dir {
                let what = if dir { "a folder" } else { "a file" };
                return Err(CacheError::Io {
                    action: "publishing",
                    path: src,
                    source: std::io::Error::other(format!("output `{name}` must be {what}")),
                });
            }
            sync_tree(&src)?;
            let digest = hash::hash_path(&src).map_err(io("hashing", &src))?;
            let bytes = tree_size(&src);
            self.adopt_object(&src, &digest)?;
            recs.insert(name.to_string(), OutputRecord { digest, dir, bytes });
        }
        let rec = NodeRecord {
            key: key.to_string(),
            node: node.to_string(),
            parts: parts.clone(),
            outputs: recs,
            started_at,
            duration_ms,
            pipe_version: env!("CARGO_PKG_VERSION").to_string(),
            summary,
        };
        super::crash::point(&format!("publish:{node}:objects"));
        self.write_record(&rec)?;
        super::crash::point(&format!("publish:{node}:record"));
        let _ = fs::remove_dir_all(staging);
        Ok(rec)
    }

    /// Moves a file or folder whose content hashes to `digest` (the caller checked) into
    /// `objects/`, read-only, by an atomic rename. Another process publishing the same content
    /// first is fine: same bytes, theirs are kept.
    pub fn adopt_object(&self, src: &Path, digest: &str) -> Result<(), CacheError> {
        let dest = self.object_path(digest);
        if dest.exists() {
            if tree_size(&dest) == tree_size(src) {
                return Ok(());
            }
            // Not the same bytes after all (truncated or replaced since): the new ones take its place.
            self.quarantine(&dest)?;
        }
        sync_tree(src)?;
        let parent = dest.parent().expect("objects have a parent");
        fs::create_dir_all(parent).map_err(io("creating", parent))?;
        make_read_only(src);
        match fs::rename(src, &dest) {
            Ok(()) => sync_dir(parent),
            Err(_) if dest.exists() => {}
            Err(e) => return Err(CacheError::Io { action: "publishing", path: dest, source: e }),
        }
        Ok(())
    }

    /// Writes a node record (atomically). Every object it names must be in `objects/` already:
    /// the record is what makes them a cache entry.
    pub fn write_record(&self, rec: &NodeRecord) -> Result<(), CacheError> {
        let path = self.record_path(&rec.key);
        let bytes = serde_json::to_vec_pretty(rec).map_err(|source| CacheError::Encode { path: path.clone(), source })?;
        write_atomic(&path, &bytes)
    }

    /// The record of `key` even when some of its objects are missing locally (the remote cache
    /// pulls those).
    pub fn record_any(&self, key: &str) -> Option<NodeRecord> {
        let rec: NodeRecord = serde_json::from_slice(&fs::read(self.record_path(key)).ok()?).ok()?;
        rec.bad_digest().is_none().then_some(rec)
    }

    fn run_path(&self, pipeline_file: &Path) -> PathBuf {
        let id = blake3::hash(pipeline_file.to_string_lossy().as_bytes()).to_hex();
        self.root.join("runs").join(format!("{}.json", &id[..16]))
    }

    /// The latest run record of a pipeline file (by canonical path).
    pub fn run_record(&self, pipeline_file: &Path) -> Option<RunRecord> {
        serde_json::from_slice(&fs::read(self.run_path(pipeline_file)).ok()?).ok()
    }

    /// Replaces the latest run record of a pipeline file.
    pub fn save_run_record(&self, pipeline_file: &Path, rec: &RunRecord) -> Result<(), CacheError> {
        let path = self.run_path(pipeline_file);
        let bytes = serde_json::to_vec_pretty(rec).map_err(|source| CacheError::Encode { path: path.clone(), source })?;
        write_atomic(&path, &bytes)
    }

    /// Deletes every node record, object, log and work folder not referenced by the latest run of
    /// some pipeline, plus stale staging folders. Keys locked or pinned by a running process
    /// are left alone ([`pins`]); `on_wait` is called if gc must wait for a run's cache step.
    pub fn gc(&self, dry_run: bool, on_wait: impl FnOnce()) -> Result<GcReport, CacheError> {
        let _entries = pins::hold_exclusive(&self.root, on_wait)?;
        let mut keep_keys = pins::live_keys(&self.root)?;
        for entry in read_dir(&self.root.join("runs"))? {
            if let Ok(rec) = serde_json::from_slice::<RunRecord>(&fs::read(&entry).unwrap_or_default()) {
                keep_keys.extend(rec.nodes.values().map(|n| n.key.clone()));
            }
        }
        let mut keep_objects = BTreeSet::new();
        let mut report = GcReport::default();
        for path in read_dir(&self.root.join("nodes"))? {
            let key = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
            let rec: Option<NodeRecord> = fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok());
            let in_use = !keep_keys.contains(&key) && self.key_in_use(&key)?;
            if keep_keys.contains(&key) || in_use {
                if let Some(rec) = rec {
                    keep_objects.extend(rec.outputs.values().map(|o| o.digest.clone()));
                }
                continue;
            }
            report.records.push(key.clone());
            if !dry_run {
                remove(&path)?;
                remove(&self.log_path(&key))?;
                remove(&self.work_dir(&key))?;
            }
        }
        for shard in read_dir(&self.root.join("objects"))? {
            for obj in read_dir(&shard)? {
                let digest = obj.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
                if keep_objects.contains(&digest) {
                    continue;
                }
                report.bytes += tree_size(&obj);
                report.objects.push(digest);
                if !dry_run {
                    remove(&obj)?;
                }
            }
        }
        if !dry_run {
            // Work folders of keys that never finished and are not running now.
            for w in read_dir(&self.root.join("work"))? {
                let key = w.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
                if !keep_keys.contains(&key) && !self.key_in_use(&key)? && !self.record_path(&key).exists() {
                    report.bytes += tree_size(&w);
                    remove(&w)?;
                }
            }
            for t in read_dir(&self.root.join("tmp"))? {
                let pid =
                    t.file_name().and_then(|n| n.to_str()).and_then(|n| n.split('-').nth(1)).and_then(|p| p.parse::<u32>().ok());
                if pid.is_none_or(|p| !process_alive(p)) {
                    remove(&t)?;
                }
            }
        }
        Ok(report)
    }

    fn key_in_use(&self, key: &str) -> Result<bool, CacheError> {
        if lock::lease_live(&self.lease_path(key)) {
            return Ok(true);
        }
        let p = self.root.join("locks").join(format!("{key}.lock"));
        if !p.exists() {
            return Ok(false);
        }
        Ok(lock::try_acquire(&p)?.is_none())
    }
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

pub(crate) fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, CacheError> {
    match fs::read_dir(dir) {
        Ok(rd) => Ok(rd.filter_map(|e| e.ok().map(|e| e.path())).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(CacheError::Io { action: "listing", path: dir.to_path_buf(), source: e }),
    }
}

fn remove(path: &Path) -> Result<(), CacheError> {
    let r = match fs::symlink_metadata(path) {
        Err(_) => return Ok(()),
        Ok(md) if md.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    r.map_err(io("removing", path))
}

/// Writes `bytes` to `path` through a temp file, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let nonce: u32 = rand::random();
    let tmp = path.with_extension(format!("tmp-{}-{nonce:08x}", std::process::id()));
    let mut f = fs::File::create(&tmp).map_err(io("writing", &tmp))?;
    f.write_all(bytes).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    fs::rename(&tmp, path).map_err(io("renaming", path))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent);
    }
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

fn sync_tree(path: &Path) -> Result<(), CacheError> {
    if path.is_dir() {
        for p in read_dir(path)? {
            sync_tree(&p)?;
        }
        sync_dir(path);
    } else {
        fs::File::open(path).and_then(|f| f.sync_all()).map_err(io("syncing", path))?;
    }
    Ok(())
}

fn make_read_only(path: &Path) {
    if path.is_dir() {
        for p in read_dir(path).unwrap_or_default() {
            make_read_only(&p);
        }
    } else if let Ok(md) = fs::metadata(path) {
        let mut perm = md.permissions();
        perm.set_readonly(true);
        let _ = fs::set_permissions(path, perm);
    }
}

/// Total bytes of a file or folder.
pub fn tree_size(path: &Path) -> u64 {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => read_dir(path).unwrap_or_default().iter().map(|p| tree_size(p)).sum(),
        Ok(md) => md.len(),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> KeyParts {
        KeyParts { kind: "k".into(), version: 1, params: BTreeMap::new(), inputs: BTreeMap::new(), extra: BTreeMap::new() }
    }

    #[test]
    fn published_outputs_are_found_by_key_and_content() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let key = parts().key();
        assert!(store.record(&key).is_none());
        let st = store.staging(&key).unwrap();
        fs::write(st.join("out"), b"data").unwrap();
        let rec = store
            .publish(&key, "n", &parts(), &st, &[("out", false)], RunFacts { started_at: 0, duration_ms: 1, summary: None })
            .unwrap();
        assert_eq!(fs::read(store.object_path(&rec.outputs["out"].digest)).unwrap(), b"data");
        assert!(store.record(&key).is_some());
        assert!(!st.exists(), "staging is removed after publishing");
    }

    #[test]
    fn a_record_whose_object_vanished_is_not_a_hit() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let key = parts().key();
        let st = store.staging(&key).unwrap();
        fs::write(st.join("out"), b"x").unwrap();
        let rec = store
            .publish(&key, "n", &parts(), &st, &[("out", false)], RunFacts { started_at: 0, duration_ms: 1, summary: None })
            .unwrap();
        remove(&store.object_path(&rec.outputs["out"].digest)).unwrap();
        assert!(store.record(&key).is_none());
    }

    #[test]
    fn gc_keeps_what_the_latest_run_references() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let mut keys = Vec::new();
        for (i, content) in [b"keep".as_slice(), b"drop".as_slice()].iter().enumerate() {
            let mut p = parts();
            p.version = i as u32;
            let key = p.key();
            let st = store.staging(&key).unwrap();
            fs::write(st.join("out"), content).unwrap();
            store
                .publish(&key, "n", &p, &st, &[("out", false)], RunFacts { started_at: 0, duration_ms: 1, summary: None })
                .unwrap();
            keys.push((key, p));
        }
        let mut run = RunRecord::default();
        run.nodes.insert("n".into(), RunNode { key: keys[0].0.clone(), parts: keys[0].1.clone() });
        store.save_run_record(Path::new("/p.yaml"), &run).unwrap();
        let dry = store.gc(true, || {}).unwrap();
        assert_eq!(dry.records, vec![keys[1].0.clone()]);
        assert!(store.record(&keys[1].0).is_some(), "dry run deletes nothing");
        store.gc(false, || {}).unwrap();
        assert!(store.record(&keys[0].0).is_some());
        assert!(store.record(&keys[1].0).is_none());
    }
}
