//! The scheduler: runs the selected part of the DAG, in dependency order, in parallel.
//!
//! # Outline
//! 1. [`Session::open`] loads the cache, the stat cache and the pipeline's last run record.
//! 2. [`Session::run`] keeps a ready set: a node is ready when every upstream node is done. Ready
//!    nodes take a slot from the [`DevicePool`] and run on their own thread.
//! 3. A worker computes the node's [`KeyParts`] (hashing inputs; upstream outputs are known by
//!    now), takes the key's lock (another process computing the same key makes it wait, then
//!    reuse the result), and either reports a cache hit or runs the kind into a staging folder
//!    and publishes the outputs. One function runs a kind, for `run` and for
//!    [`Session::verify_node`] alike: it catches a panic as an internal error and checks that
//!    every declared output was written.
//! 4. Results come back over a channel to the main loop, which frees the slot, records the node,
//!    and starts whatever became ready. A failure is one [`NodeFailed`] (the node, its kind and
//!    the [`Cause`]); it skips the node's dependents and, without `--keep-going`, stops starting
//!    new nodes; running ones finish.
//! 5. The run record (each completed node's key and parts) is saved for `status --why` and `gc`.
//!
//! A node whose executor is Slurm takes no slot here: after step 3's key, lock and cache checks,
//! it is submitted as a Slurm job that runs `pipe exec-node` on this cache, and its worker thread
//! follows the job until it ends (see [`slurm`]). The job runs the node with the same function
//! (`Session::compute`) as a local worker.
//!
//! Keys are computed as late as possible on purpose: a downstream key uses the upstream outputs'
//! content digests, so an upstream rerun that produces identical bytes leaves everything
//! downstream fresh (early cutoff).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::cache::store::Lookup;
use crate::cache::store::RunFacts;
use crate::cache::{CacheError, NodeRecord, RunNode, RunRecord, Store};
use crate::device::{DevicePool, DeviceReq, Lease};
use crate::graph::Graph;
use crate::hash::dirty::{explain, DirtyReason};
use crate::hash::statcache::StatCache;
use crate::hash::{Canon, Digest, KeyParts};
use crate::nodes::{NodeError, RunCtx};
use crate::params::did_you_mean;
use crate::remote::{Mode, Remote, RemoteError};
use crate::report::progress::NodeProgress;
use crate::report::{CacheSource, Event, Reporter};
use crate::slurm::Executor;
use crate::spec::validate::{suggest, SpecError};
use crate::spec::{InputRef, NodeSpec, Pipeline};

pub mod slurm;
mod sources;

pub use slurm::{JobError, SlurmSetup};

/// A pipeline bound to a cache.
pub struct Session {
    /// The validated pipeline.
    pub pipeline: Pipeline,
    /// Its DAG.
    pub graph: Graph,
    /// The cache.
    pub store: Store,
    /// Events go here.
    pub reporter: Arc<Reporter>,
    stat: Mutex<StatCache>,
    canonical_file: PathBuf,
    last_run: Option<RunRecord>,
    /// CUDA devices available to this session (decides what `device: auto` means in keys).
    gpus: Vec<usize>,
    /// The remote cache, when one is configured and not `off`.
    remote: Option<Remote>,
    /// Whether a failure to reach the remote was reported already.
    remote_down_reported: std::sync::atomic::AtomicBool,
    /// How to submit nodes whose executor is Slurm (`None`: such nodes fail).
    slurm: Option<SlurmSetup>,
    /// Source digests and extra key components taken from the remote (see `sources`).
    from_remote: Mutex<sources::FromRemote>,
}

/// How to run.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Nodes to consider (targets plus their ancestors).
    pub selected: BTreeSet<usize>,
    /// Nodes to rerun even when cached.
    pub force: BTreeSet<usize>,
    /// Keep running independent nodes after a failure.
    pub keep_going: bool,
    /// CPU slots.
    pub jobs: usize,
    /// CUDA ordinals available.
    pub gpus: Vec<usize>,
    /// Nodes whose outputs must be in the local cache when the run ends (the targets, or the
    /// pipeline's final nodes). A node the remote cache has is pulled only if it is here or a
    /// node that runs needs it; otherwise only its record is read.
    pub materialize: BTreeSet<usize>,
}

/// What happened.
#[derive(Debug, Default)]
pub struct RunSummary {
    /// Nodes that ran.
    pub ran: usize,
    /// Nodes served from the cache.
    pub cached: usize,
    /// Failed nodes, each with the path of its log when it got one.
    pub failed: Vec<Failure>,
    /// Nodes not run because of a failure.
    pub skipped: usize,
    /// Records of completed nodes by index.
    pub records: HashMap<usize, NodeRecord>,
}

/// A node's freshness as `pipe status` reports it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Freshness {
    /// Cached: running it would reuse this entry.
    Fresh { key: Digest },
    /// Not in the local cache but in the remote one: a run pulls it (if its outputs are needed
    /// here) instead of running it.
    Remote { key: Digest, remote: String },
    /// Will run, for these reasons.
    WillRun { key: Option<Digest>, reasons: Vec<DirtyReason> },
    /// Being computed by a Slurm job that a run submitted: queued or running on the cluster.
    Slurm { key: Digest, job: String, job_state: String, host: Option<String> },
    /// Its inputs cannot be resolved (a missing file, a failed download).
    Error { message: String },
}

/// A node's inputs could not be resolved to paths and digests, so it has no key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// An upstream node has no record yet (it did not run, or is not cached).
    #[error("upstream `{node}` has not run")]
    UpstreamNotRun { node: String },
    /// An upstream node's record lacks the output the input names.
    #[error("upstream `{node}` has no output `{output}`")]
    NoSuchOutput { node: String, output: String },
    /// An input file or folder could not be hashed.
    #[error("input `{slot}`: {}: {source}", path.display())]
    Read { slot: String, path: PathBuf, source: std::io::Error },
    /// An input's source string is not a source.
    #[error("input `{slot}`: {source}")]
    BadSource { slot: String, source: crate::source::ParseError },
    /// A source could not be made a local path.
    #[error("input `{slot}` ({text}): {source}")]
    Source { slot: String, text: String, source: Box<crate::source::SourceError> },
    /// The kind's extra key components could not be computed.
    #[error(transparent)]
    Extra(#[from] NodeError),
    /// A source fetched to run a node does not hash to the digest the remote cache gave for it
    /// (the node's key was computed from that digest).
    #[error("input `{slot}` ({text}): fetched here, it hashes to {fetched}, but the remote cache's entry for it says {remote}, which this run's keys were computed from; the source changed since it was pushed (a re-uploaded wheel or a moved hub ref). Run again with `--remote-mode off` for keys from the bytes here")]
    SourceDiffers { slot: String, text: String, remote: Digest, fetched: Digest },
    /// An upstream output the kind reads to compute its key is only in the remote cache, and
    /// could be neither pulled nor recomputed.
    #[error("input `{slot}`: upstream `{node}`'s output is not in the local cache: {source}")]
    Upstream { slot: String, node: String, source: Box<Cause> },
}

/// What made a node fail.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    /// It has no key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The cache could not lock, stage or publish it.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Its work folder or log could not be created.
    #[error("creating {}: {source}", path.display())]
    Create { path: PathBuf, source: std::io::Error },
    /// Its kind failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// Its Slurm job could not be submitted, failed, or was not the job it should be.
    #[error(transparent)]
    Job(#[from] JobError),
    /// The remote cache failed and the mode is `require`.
    #[error("{source} (--remote-mode require)")]
    Remote { source: RemoteError },
    /// The cache's filesystem is full (ENOSPC somewhere in `source`).
    #[error("{source}; the cache's filesystem is full ({}): free space there (`pipe gc` deletes the entries no latest run needs) and run again", cache.display())]
    DiskFull { cache: PathBuf, source: Box<Cause> },
    /// An upstream node recomputed here (its remote copy was unusable) wrote other bytes than its
    /// record names, so keys computed from that record do not hold.
    #[error("upstream `{node}` was recomputed (its remote copy was unusable) and wrote other bytes than the remote record: output `{output}` {recomputed} instead of {recorded}; run again")]
    Diverged { node: String, output: String, recorded: Digest, recomputed: Digest },
}

/// A node failed: the scheduler's one report of it, naming the node and its kind.
#[derive(Debug, thiserror::Error)]
#[error("node '{node}' ({kind}): {source}")]
pub struct NodeFailed {
    /// The node's name.
    pub node: String,
    /// Its kind.
    pub kind: &'static str,
    /// Why.
    #[source]
    pub source: Box<Cause>,
}

/// A failed node in a [`RunSummary`].
#[derive(Debug)]
pub struct Failure {
    /// What failed and why.
    pub error: NodeFailed,
    /// The node's log, when it got as far as having one.
    pub log: Option<PathBuf>,
}

/// What re-executing a cached node found wrong with one output ([`Session::verify_node`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The cached object no longer hashes to the digest it is stored under: the cache was
    /// modified after the node ran.
    Tampered {
        /// The output.
        output: String,
        /// The digest recorded (the object's name).
        recorded: Digest,
        /// What the object hashes to now (or why it cannot be read).
        on_disk: String,
    },
    /// Re-executing the node wrote other bytes: the node is not deterministic.
    Nondeterministic {
        /// The output.
        output: String,
        /// The digest recorded.
        recorded: Digest,
        /// The digest of the re-executed output (or why it cannot be read).
        recomputed: String,
    },
}

/// A cached node, re-executed: its record and every output that did not match.
#[derive(Debug)]
pub struct Verified {
    /// The node's cache record.
    pub record: NodeRecord,
    /// Mismatching outputs; empty when the node reproduced its outputs.
    pub mismatches: Vec<Mismatch>,
}

/// A node could not be verified.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Its key cannot be computed (upstream not cached, an input missing).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Its key has no cache entry.
    #[error("node `{node}` is not in the cache; run the pipeline first")]
    NotCached { node: String },
    /// Re-executing it failed.
    #[error(transparent)]
    Failed(#[from] NodeFailed),
}

enum State {
    Pending,
    Running,
    Done,
    Failed,
    Skipped,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Session {
    /// Binds a pipeline to the cache folder `cache_dir`.
    pub fn open(pipeline: Pipeline, cache_dir: &Path, reporter: Arc<Reporter>) -> anyhow::Result<Session> {
        let graph = pipeline.graph().map_err(|_| anyhow::anyhow!("pipeline has a cycle"))?;
        let store = Store::open(cache_dir)?;
        let stat = Mutex::new(StatCache::load(&store.stat_cache_path()));
        let canonical_file = pipeline.file.canonicalize().unwrap_or_else(|_| pipeline.file.clone());
        let last_run = store.run_record(&canonical_file);
        let gpus = DevicePool::discover_gpus();
        Ok(Session {
            pipeline,
            graph,
            store,
            reporter,
            stat,
            canonical_file,
            last_run,
            gpus,
            remote: None,
            remote_down_reported: Default::default(),
            slurm: None,
            from_remote: Default::default(),
        })
    }

    /// Uses a remote cache.
    pub fn with_remote(mut self, remote: Option<Remote>) -> Session {
        self.remote = remote;
        self
    }

    /// The remote cache, if any.
    pub fn remote(&self) -> Option<&Remote> {
        self.remote.as_ref()
    }

    /// The pipeline's final selected nodes (no selected node downstream): what a run without
    /// `--target` leaves in the local cache.
    pub fn sinks(&self, selected: &BTreeSet<usize>) -> BTreeSet<usize> {
        selected
            .iter()
            .copied()
            .filter(|&i| !self.graph.descendants_of(&[i]).iter().any(|d| *d != i && selected.contains(d)))
            .collect()
    }

    /// Restricts the session to these CUDA devices (`--gpus`).
    pub fn with_gpus(mut self, gpus: Vec<usize>) -> Session {
        self.gpus = gpus;
        self
    }

    /// CUDA devices this session may use.
    pub fn gpus(&self) -> &[usize] {
        &self.gpus
    }

    /// Index of a node by name, with "did you mean" when absent.
    pub fn index(&self, name: &str) -> Result<usize, SpecError> {
        self.pipeline.nodes.iter().position(|n| n.name == name).ok_or_else(|| SpecError::UnknownNode {
            name: name.into(),
            file: self.pipeline.file.clone(),
            help: suggest(did_you_mean(name, self.pipeline.nodes.iter().map(|n| n.name.as_str()))),
        })
    }

    /// The targets and their ancestors; every node when `targets` is empty.
    pub fn select(&self, targets: &[String]) -> Result<BTreeSet<usize>, SpecError> {
        if targets.is_empty() {
            return Ok((0..self.pipeline.nodes.len()).collect());
        }
        let idx = targets.iter().map(|t| self.index(t)).collect::<Result<Vec<_>, _>>()?;
        Ok(self.graph.ancestors_of(&idx))
    }

    /// Persists the stat cache.
    pub fn save_stat_cache(&self) {
        if let Ok(mut s) = self.stat.lock() {
            let _ = s.save();
        }
    }

    /// Resolves node `i`'s inputs to paths and digests and builds its key parts.
    /// `done` holds the records of its upstream nodes.
    pub fn key_parts(
        &self,
        i: usize,
        done: &HashMap<String, NodeRecord>,
    ) -> Result<(KeyParts, BTreeMap<String, PathBuf>), KeyError> {
        let node = &self.pipeline.nodes[i];
        let mut inputs = BTreeMap::new();
        let mut digests = BTreeMap::new();
        for (slot, input) in &node.inputs {
            let (path, digest) = match input {
                InputRef::Node { node: up, output } => {
                    let rec = done.get(up).ok_or_else(|| KeyError::UpstreamNotRun { node: up.clone() })?;
                    let out = rec
                        .outputs
                        .get(output)
                        .ok_or_else(|| KeyError::NoSuchOutput { node: up.clone(), output: output.clone() })?;
                    (self.store.object_path(&out.digest), out.digest.clone())
                }
                InputRef::File(p) => {
                    let path = self.pipeline.root.join(p);
                    let d =
                        self.digest(&path).map_err(|source| KeyError::Read { slot: slot.clone(), path: path.clone(), source })?;
                    (path, d)
                }
                InputRef::Source(text) => self.source_input(slot, text)?,
            };
            inputs.insert(slot.clone(), path);
            digests.insert(slot.clone(), digest);
        }
        let kind = node.kind;
        let mut parts = KeyParts {
            kind: kind.name().into(),
            version: kind.version(),
            params: crate::nodes::key_params(kind, &node.params),
            inputs: digests,
            extra: BTreeMap::new(),
        };
        // Extra components are a pure function of kind, version, params and input bytes, so they
        // are memoised under a digest of exactly those (a no-op rerun must not reparse a tokenizer).
        // A device-sensitive kind's output depends on the device type it runs on.
        let (cuda, world) = self.placement(node);
        if kind.device_sensitive() && cuda {
            parts.extra.insert("device".into(), "cuda".into());
        }
        // Data-parallel ranks sum their gradients in another order than one device does, so the
        // world size changes the bits (not the math). One device adds nothing: keys from before
        // `gpus:` existed stay valid.
        if kind.data_parallel() && world > 1 {
            parts.extra.insert("world_size".into(), world.to_string());
        }
        // The memo also records every side file the kind read (a tokenizer_config.json beside a
        // tokenizer.json, say) with its digest; a changed side file invalidates the memo.
        let extra_id = parts.key();
        let reads_inputs = !kind.fingerprint_inputs().is_empty();
        let memo = self
            .store
            .extra(&extra_id)
            .filter(|m| {
                m.files
                    .iter()
                    .all(|(path, digest)| self.digest(std::path::Path::new(path)).ok().as_deref() == Some(digest.as_str()))
            })
            .or_else(|| if reads_inputs { self.remote_extras(&extra_id) } else { None });
        let device_extra = parts.extra.remove("device");
        let world_extra = parts.extra.remove("world_size");
        parts.extra = match memo {
            Some(m) => m.values,
            None => {
                // The kind reads its inputs to compute these: an upstream output known only by
                // its remote record must be here first.
                for (slot, input) in node.inputs.iter().filter(|(slot, _)| kind.fingerprint_inputs().contains(&slot.as_str())) {
                    if let InputRef::Node { node: up, .. } = input {
                        if !inputs[slot].exists() {
                            self.materialize(up, done).map_err(|source| KeyError::Upstream {
                                slot: slot.clone(),
                                node: up.clone(),
                                source: Box::new(source),
                            })?;
                        }
                    }
                }
                // A source it reads whose digest came from the remote is fetched (and checked).
                inputs = self.ensure_sources(i, inputs, Some(kind.fingerprint_inputs()))?;
                let e = kind.fingerprint_extra(&node.params, &inputs)?;
                let files = e.files.iter().filter_map(|f| Some((f.display().to_string(), self.digest(f).ok()?))).collect();
                let portable = e.files.iter().all(|f| inputs.values().any(|p| p == f));
                let _ = self
                    .store
                    .put_extra(&extra_id, &crate::cache::store::ExtraMemo { values: e.values.clone(), files, portable });
                e.values
            }
        };
        if let Some(d) = device_extra {
            parts.extra.insert("device".into(), d);
        }
        if let Some(w) = world_extra {
            parts.extra.insert("world_size".into(), w);
        }
        if reads_inputs {
            self.note_extra_id(parts.key(), extra_id);
        }
        Ok((parts, inputs))
    }

    /// Where node `i` computes, as far as its key is concerned: on CUDA or not, and on how many
    /// devices. A local node resolves `auto` against this session's GPUs; a Slurm node against
    /// what its job asks for (`auto` is CUDA when the job asks for GPUs), so the orchestrator
    /// and the job agree on the key whatever machines they run on. The executor itself is never
    /// part of a key.
    fn placement(&self, node: &NodeSpec) -> (bool, usize) {
        if node.executor() == Executor::Slurm {
            let gpus = node.slurm_gpus() as usize;
            let cuda = match node.device {
                DeviceReq::Cuda => true,
                DeviceReq::Cpu => false,
                DeviceReq::Auto => gpus > 0,
            };
            let world = match (cuda, node.gpus) {
                (false, _) => 1,
                (true, crate::device::GpuCount::Count(n)) => n,
                (true, crate::device::GpuCount::All) => gpus.max(1),
            };
            return (cuda, world);
        }
        let pool = DevicePool::new(1, &self.gpus);
        (pool.resolves_to_cuda(node.device), pool.world_size(node.device, node.gpus))
    }

    fn digest(&self, path: &Path) -> std::io::Result<Digest> {
        self.stat.lock().map_err(|_| std::io::Error::other("stat cache poisoned"))?.digest(path)
    }

    fn source_of(&self, i: usize, slot: &str) -> String {
        self.pipeline.nodes[i].inputs.get(slot).map(|r| r.to_string()).unwrap_or_else(|| "(removed)".into())
    }

    /// Why node `i` with these parts is not fresh, against the last recorded run.
    fn reasons(&self, i: usize, parts: &KeyParts) -> Vec<DirtyReason> {
        let node = &self.pipeline.nodes[i];
        let mut why = match self.last_run.as_ref().and_then(|r| r.nodes.get(&node.name)) {
            None => vec![DirtyReason::NeverRun],
            Some(last) => {
                let why = explain(&last.parts, parts, |slot| self.source_of(i, slot));
                if why.is_empty() {
                    vec![DirtyReason::EntryMissing]
                } else {
                    why
                }
            }
        };
        if let Some(point) = node.kind.resume_point(&self.store.work_dir(&parts.key())) {
            why.push(DirtyReason::Resumes { point });
        }
        why
    }

    /// Freshness of each selected node, in order, without running anything.
    pub fn status(&self, selected: &BTreeSet<usize>) -> Vec<(usize, Freshness)> {
        let mut done: HashMap<String, NodeRecord> = HashMap::new();
        let mut out = Vec::new();
        for &i in self.graph.order().iter().filter(|i| selected.contains(i)) {
            let node = &self.pipeline.nodes[i];
            let stale_up: Vec<String> = node.upstream().filter(|u| !done.contains_key(*u)).map(String::from).collect();
            if !stale_up.is_empty() {
                let mut reasons: Vec<DirtyReason> =
                    stale_up.into_iter().map(|node| DirtyReason::UpstreamWillRun { node }).collect();
                if let Some(last) = self.last_run.as_ref().and_then(|r| r.nodes.get(&node.name)) {
                    let mut now = last.parts.clone();
                    now.params = crate::nodes::key_params(node.kind, &node.params);
                    now.version = node.kind.version();
                    now.kind = node.kind.name().into();
                    reasons.extend(explain(&last.parts, &now, |s| self.source_of(i, s)));
                }
                out.push((i, Freshness::WillRun { key: None, reasons }));
                continue;
            }
            match self.key_parts(i, &done) {
                Err(e) => out.push((i, Freshness::Error { message: e.to_string() })),
                Ok((parts, _)) => {
                    let key = parts.key();
                    let remote = || {
                        let r = self.remote.as_ref().filter(|r| r.readable())?;
                        r.record(&key).ok().flatten().map(|rec| (rec, r.url().to_string()))
                    };
                    match self.store.lookup(&key) {
                        Lookup::Hit(rec) => {
                            done.insert(node.name.clone(), rec);
                            out.push((i, Freshness::Fresh { key }));
                        }
                        Lookup::Damaged { why, .. } => {
                            out.push((
                                i,
                                Freshness::WillRun { key: Some(key), reasons: vec![DirtyReason::EntryDamaged { why }] },
                            ));
                        }
                        Lookup::Absent => match remote() {
                            Some((rec, remote)) => {
                                done.insert(node.name.clone(), rec);
                                out.push((i, Freshness::Remote { key, remote }));
                            }
                            None => match self.slurm_job(&key) {
                                Some((job, info)) => {
                                    out.push((i, Freshness::Slurm { key, job, job_state: info.state, host: info.node }))
                                }
                                None => {
                                    let reasons = self.reasons(i, &parts);
                                    out.push((i, Freshness::WillRun { key: Some(key), reasons }));
                                }
                            },
                        },
                    }
                }
            }
        }
        self.save_stat_cache();
        out
    }

    /// Runs the selected nodes. Never panics on node failures; they are in the summary.
    pub fn run(&self, opts: &RunOptions) -> RunSummary {
        let n = self.pipeline.nodes.len();
        let mut state: Vec<State> = (0..n).map(|_| State::Pending).collect();
        let mut pool = DevicePool::new(opts.jobs, &opts.gpus);
        let mut summary = RunSummary::default();
        let mut done: HashMap<String, NodeRecord> = HashMap::new();
        let mut stop = false;
        let order: Vec<usize> = self.graph.order().iter().copied().filter(|i| opts.selected.contains(i)).collect();
        self.reporter.emit(Event::RunStarted {
            pipeline: self.pipeline.name.clone(),
            nodes: order.iter().map(|&i| self.pipeline.nodes[i].name.clone()).collect(),
        });
        if order.iter().any(|&i| self.pipeline.nodes[i].executor() == Executor::Slurm) {
            slurm::install_interrupt_handler();
        }
        for &i in &order {
            let node = &self.pipeline.nodes[i];
            if node.device == DeviceReq::Auto && !pool.has_gpus() && node.executor() == Executor::Local {
                self.reporter.warn(&format!(
                    "node `{}` has `device: auto` and no CUDA device is available: running on the CPU",
                    node.name
                ));
            }
        }
        let (tx, rx) = mpsc::channel::<(usize, Option<Lease>, Result<(NodeRecord, bool), Failure>)>();
        std::thread::scope(|scope| {
            let mut running = 0usize;
            loop {
                if !stop {
                    for &i in &order {
                        if !matches!(state[i], State::Pending) {
                            continue;
                        }
                        let node = &self.pipeline.nodes[i];
                        if !self.graph.upstream(i).iter().all(|u| matches!(state[*u], State::Done)) {
                            continue;
                        }
                        // A Slurm node holds nothing here: the cluster schedules it.
                        let lease = match node.executor() {
                            Executor::Slurm => None,
                            Executor::Local => match pool.try_lease(node.device, node.gpus) {
                                Some(l) => Some(l),
                                None => continue,
                            },
                        };
                        state[i] = State::Running;
                        running += 1;
                        // Every record so far, not just the direct upstream ones: an upstream output
                        // that is only in the remote may have to be recomputed from its own inputs.
                        let records = done.clone();
                        let force = opts.force.contains(&i);
                        let need_local = opts.materialize.contains(&i);
                        let tx = tx.clone();
                        scope.spawn(move || {
                            let r = self.execute(i, &records, force, lease, need_local);
                            let _ = tx.send((i, lease, r));
                        });
                    }
                }
                if running == 0 {
                    break;
                }
                let Ok((i, lease, result)) = rx.recv() else {
                    break;
                };
                running -= 1;
                if let Some(lease) = lease {
                    pool.release(lease);
                }
                match result {
                    Ok((rec, ran)) => {
                        if ran {
                            summary.ran += 1;
                        } else {
                            summary.cached += 1;
                        }
                        state[i] = State::Done;
                        done.insert(self.pipeline.nodes[i].name.clone(), rec.clone());
                        summary.records.insert(i, rec);
                    }
                    Err(f) => {
                        state[i] = State::Failed;
                        let name = self.pipeline.nodes[i].name.clone();
                        for d in self.graph.descendants_of(&[i]) {
                            if matches!(state[d], State::Pending) && opts.selected.contains(&d) {
                                state[d] = State::Skipped;
                                summary.skipped += 1;
                                self.reporter.emit(Event::NodeSkipped {
                                    node: self.pipeline.nodes[d].name.clone(),
                                    because: format!("upstream `{name}` failed"),
                                });
                            }
                        }
                        summary.failed.push(f);
                        if !opts.keep_going {
                            stop = true;
                        }
                    }
                }
            }
        });
        for &i in &order {
            if matches!(state[i], State::Pending) {
                summary.skipped += 1;
                self.reporter.emit(Event::NodeSkipped {
                    node: self.pipeline.nodes[i].name.clone(),
                    because: "the run stopped after a failure (use --keep-going to run independent nodes)".into(),
                });
            }
        }
        self.save_stat_cache();
        crate::cache::crash::point("run-record");
        self.save_run_record(&summary);
        summary
    }

    fn save_run_record(&self, summary: &RunSummary) {
        // A no-op run (every node's key as recorded) leaves the record alone: no write, no fsync.
        if let Some(last) = &self.last_run {
            let unchanged = summary
                .records
                .iter()
                .all(|(&i, r)| last.nodes.get(&self.pipeline.nodes[i].name).is_some_and(|n| n.key == r.key));
            let same_nodes = last.nodes.keys().all(|k| self.pipeline.nodes.iter().any(|n| &n.name == k));
            if unchanged && same_nodes && last.pipeline == self.pipeline.name {
                return;
            }
        }
        let mut rec = self.store.run_record(&self.canonical_file).unwrap_or_default();
        rec.pipeline = self.pipeline.name.clone();
        rec.file = self.canonical_file.display().to_string();
        rec.finished_at = now_secs();
        let names: BTreeSet<&str> = self.pipeline.nodes.iter().map(|n| n.name.as_str()).collect();
        rec.nodes.retain(|k, _| names.contains(k.as_str()));
        for (&i, r) in &summary.records {
            rec.nodes.insert(self.pipeline.nodes[i].name.clone(), RunNode { key: r.key.clone(), parts: r.parts.clone() });
        }
        if let Err(e) = self.store.save_run_record(&self.canonical_file, &rec) {
            self.reporter.warn(&format!("could not save the run record: {e}"));
        }
    }

    /// One node: key, lock, cache check (local, then remote), run, publish, push.
    /// `done` holds the records of the nodes done so far; `need_local` says the node's outputs
    /// must end up in the local cache even when the remote has them. `lease` is what it runs on
    /// here; `None` for a node submitted to Slurm.
    fn execute(
        &self,
        i: usize,
        done: &HashMap<String, NodeRecord>,
        force: bool,
        lease: Option<Lease>,
        need_local: bool,
    ) -> Result<(NodeRecord, bool), Failure> {
        let node = &self.pipeline.nodes[i];
        let kind = node.kind;
        let span = tracing::info_span!("node", node = %node.name, kind = kind.name());
        let _enter = span.enter();
        let failed = |cause: Cause| NodeFailed { node: node.name.clone(), kind: kind.name(), source: Box::new(cause) };
        let (parts, inputs) = self.key_parts(i, done).map_err(|e| {
            self.reporter.emit(Event::NodeFailed {
                node: node.name.clone(),
                kind: kind.name().into(),
                error: e.to_string(),
                log: String::new(),
            });
            Failure { error: failed(e.into()), log: None }
        })?;
        let key = parts.key();
        let log_path = self.store.log_path(&key);
        let fail = |cause: Cause| Failure { error: failed(cause), log: Some(log_path.clone()) };
        let lock = self
            .store
            .lock(&key, || self.reporter.emit(Event::NodeWaiting { node: node.name.clone(), key: key.clone() }))
            .map_err(|e| {
                // (A cache that cannot even be locked: read-only, full, gone.)
                let cause = self.space_hint(e.into());
                self.reporter.emit(Event::NodeFailed {
                    node: node.name.clone(),
                    kind: kind.name().into(),
                    error: cause.to_string(),
                    log: String::new(),
                });
                Failure { error: failed(cause), log: None }
            })?;
        // Pinned before it is looked up, with the entries lock held until the entry is found,
        // pulled or known to be missing: a `pipe gc` beside this run keeps it (cache::pins).
        let entries = self.store.hold_and_pin(&key).map_err(|e| fail(self.space_hint(e.into())))?;
        let mut damaged = None;
        if !force {
            if let Lookup::Damaged { why, objects } = self.store.lookup(&key) {
                // Reported, moved aside (kept in cache/tmp for a look), computed again.
                self.reporter.warn(&format!("the cache entry of `{}` is damaged: {why}; computing it again", node.name));
                for d in &objects {
                    let _ = self.store.quarantine(&self.store.object_path(d));
                }
                let _ = self.store.quarantine(&self.store.record_path(&key));
                damaged = Some(why);
            }
            if let Some(rec) = self.store.record(&key) {
                tracing::debug!("fresh: {key}");
                self.emit_cached_locally(node, &key);
                // An entry computed here before (or whose push was killed) reaches the remote now.
                self.push(&node.name, &rec, true).map_err(fail)?;
                return Ok((rec, false));
            }
            if let Some(rec) = self.take_from_remote(i, &key, need_local).map_err(fail)? {
                return Ok((rec, false));
            }
        }
        drop(entries);
        // Upstream outputs known only by their remote records are pulled (or recomputed) now.
        self.ensure_inputs(i, done).map_err(fail)?;
        let reasons = match (force, damaged) {
            (true, _) => vec![DirtyReason::Forced],
            (false, Some(why)) => vec![DirtyReason::EntryDamaged { why }],
            (false, None) => self.reasons(i, &parts),
        };
        for r in &reasons {
            tracing::debug!("dirty: {r}");
        }
        let Some(lease) = lease else {
            return self.run_on_slurm(i, &key, &lock, done, force, &reasons);
        };
        self.compute(i, &key, &parts, inputs, lease, &reasons).map(|rec| (rec, true))
    }

    /// Runs node `i` here under its held lock and publishes it: the one path from a key to a
    /// cache entry, for `pipe run` and for a Slurm job's `pipe exec-node` alike.
    fn compute(
        &self,
        i: usize,
        key: &str,
        parts: &KeyParts,
        inputs: BTreeMap<String, PathBuf>,
        lease: Lease,
        reasons: &[DirtyReason],
    ) -> Result<NodeRecord, Failure> {
        let node = &self.pipeline.nodes[i];
        let kind = node.kind;
        let key = key.to_string();
        let log_path = self.store.log_path(&key);
        let failed = |cause: Cause| NodeFailed { node: node.name.clone(), kind: kind.name(), source: Box::new(cause) };
        let fail = |cause: Cause| Failure { error: failed(cause), log: Some(log_path.clone()) };
        let inputs = self.ensure_sources(i, inputs, None).map_err(|e| fail(e.into()))?;
        self.reporter.emit(Event::NodeStarted {
            node: node.name.clone(),
            kind: kind.name().into(),
            key: key.clone(),
            device: lease.to_string(),
            reasons: reasons.iter().map(|r| r.to_string()).collect(),
        });
        let started_at = now_secs();
        let t0 = Instant::now();
        let staging = self.store.staging(&key).map_err(|e| fail(e.into()))?;
        let work = self.store.work_dir(&key);
        std::fs::create_dir_all(&work).map_err(|source| fail(Cause::Create { path: work.clone(), source }))?;
        let log_file =
            std::fs::File::create(&log_path).map_err(|source| fail(Cause::Create { path: log_path.clone(), source }))?;
        let log = Arc::new(Mutex::new(log_file));
        let progress = NodeProgress::new(&node.name, self.reporter.clone());
        let summary = match self.run_node(i, &key, inputs, &staging, &work, log.clone(), progress, lease) {
            Ok(summary) => summary,
            Err(e) => {
                let cause = self.space_hint(e.into());
                let event = Event::NodeFailed {
                    node: node.name.clone(),
                    kind: kind.name().into(),
                    error: cause.to_string(),
                    log: log_path.display().to_string(),
                };
                let failure = fail(cause);
                if let Ok(mut f) = log.lock() {
                    let _ = writeln!(f, "error: {}", failure.error);
                }
                let _ = std::fs::remove_dir_all(&staging);
                self.reporter.emit(event);
                return Err(failure);
            }
        };
        let duration_ms = t0.elapsed().as_millis() as u64;
        let outs: Vec<(&str, bool)> = kind.outputs(&node.params).iter().map(|o| (o.name, o.dir)).collect();
        let rec = self
            .store
            .hold_entries()
            .and_then(|_entries| {
                self.store.publish(&key, &node.name, parts, &staging, &outs, RunFacts { started_at, duration_ms, summary })
            })
            .map_err(|e| {
                let _ = std::fs::remove_dir_all(&staging);
                fail(self.space_hint(e.into()))
            })?;
        let _ = std::fs::remove_dir_all(&work);
        let finished = Event::NodeFinished {
            node: node.name.clone(),
            kind: kind.name().into(),
            key: key.clone(),
            duration_ms,
            summary: rec.summary.clone(),
            outputs: self.output_paths(&rec),
        };
        self.reporter.emit(finished);
        self.push(&node.name, &rec, false).map_err(fail)?;
        Ok(rec)
    }

    /// `cause`, said to come from a full cache filesystem when an ENOSPC is behind it.
    fn space_hint(&self, cause: Cause) -> Cause {
        let mut e: Option<&(dyn std::error::Error + 'static)> = Some(&cause);
        let mut full = false;
        while let Some(x) = e {
            let io = x.downcast_ref::<std::io::Error>();
            full |= io.is_some_and(|io| io.raw_os_error() == Some(libc::ENOSPC) || io.kind() == std::io::ErrorKind::StorageFull);
            // Libraries that flatten an io::Error into their own message (safetensors, say).
            full |= x.to_string().contains(&format!("(os error {})", libc::ENOSPC));
            e = x.source();
        }
        if full {
            Cause::DiskFull { cache: self.store.root().to_path_buf(), source: Box::new(cause) }
        } else {
            cause
        }
    }

    /// Reports a node served from the local cache.
    fn emit_cached_locally(&self, node: &NodeSpec, key: &str) {
        self.reporter.emit(Event::NodeCached {
            node: node.name.clone(),
            kind: node.kind.name().into(),
            key: key.to_string(),
            source: CacheSource::Local,
            pulled_bytes: None,
        });
    }

    /// Where each of a record's outputs is in the local cache (for `node_finished`).
    fn output_paths(&self, rec: &NodeRecord) -> HashMap<String, String> {
        rec.outputs.iter().map(|(k, v)| (k.clone(), self.store.object_path(&v.digest).display().to_string())).collect()
    }

    /// A remote failure: with `--remote-mode require` it fails the node; otherwise a warning
    /// (once for an unreachable remote) and the run goes on without it.
    fn remote_fault(&self, what: &str, e: RemoteError) -> Result<(), Cause> {
        if self.remote.as_ref().is_some_and(|r| r.mode() == Mode::Require) {
            return Err(Cause::Remote { source: e });
        }
        // An unreachable remote is reported once; every bad object or record is reported.
        if !e.is_transport() {
            self.reporter.warn(&format!("{what}: {e}; not used"));
        } else if !self.remote_down_reported.swap(true, std::sync::atomic::Ordering::Relaxed) {
            self.reporter.warn(&format!("{what}: {e}; going on without the remote"));
        }
        Ok(())
    }

    /// Node `i` from the remote cache: its record, and its outputs when `need_local`. `None`
    /// when there is no remote, it lacks the key, or what it has is unusable (then the node
    /// runs here).
    fn take_from_remote(&self, i: usize, key: &str, need_local: bool) -> Result<Option<NodeRecord>, Cause> {
        let Some(r) = self.remote.as_ref().filter(|r| r.readable()) else { return Ok(None) };
        let node = &self.pipeline.nodes[i];
        let rec = match r.record(key) {
            Ok(Some(rec)) => rec,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.remote_fault(&format!("remote cache, node `{}`", node.name), e)?;
                return Ok(None);
            }
        };
        let pulled_bytes = if need_local {
            let name = node.name.clone();
            let progress = |done: u64, total: u64| {
                self.reporter.emit(Event::NodeProgress {
                    node: name.clone(),
                    done,
                    total: Some(total),
                    unit: "bytes".into(),
                    message: Some("pulling".into()),
                })
            };
            match r.pull(&self.store, &rec, &progress) {
                Ok(stats) => Some(stats.bytes),
                Err(e) => {
                    self.remote_fault(&format!("pulling `{}` from the remote cache", node.name), e)?;
                    return Ok(None);
                }
            }
        } else {
            None
        };
        self.reporter.emit(Event::NodeCached {
            node: node.name.clone(),
            kind: node.kind.name().into(),
            key: key.to_string(),
            source: CacheSource::Remote,
            pulled_bytes,
        });
        Ok(Some(rec))
    }

    /// Uploads a node's entry to the remote (when writable). `if_missing`: first check whether
    /// the remote has the record, and do nothing if so.
    fn push(&self, node: &str, rec: &NodeRecord, if_missing: bool) -> Result<(), Cause> {
        let Some(r) = self.remote.as_ref().filter(|r| r.writable()) else { return Ok(()) };
        if if_missing {
            match r.has_record(&rec.key) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return self.remote_fault(&format!("remote cache, node `{node}`"), e),
            }
        }
        let progress = |done: u64, total: u64| {
            self.reporter.emit(Event::NodeProgress {
                node: node.to_string(),
                done,
                total: Some(total),
                unit: "bytes".into(),
                message: Some("pushing".into()),
            })
        };
        match r.push(&self.store, rec, &progress) {
            Ok(stats) => {
                self.push_key_inputs(node, rec);
                self.reporter.emit(Event::NodePushed {
                    node: node.to_string(),
                    key: rec.key.clone(),
                    remote: r.url().to_string(),
                    uploaded: stats.uploaded,
                    skipped: stats.skipped,
                    bytes: stats.bytes,
                });
                Ok(())
            }
            Err(e) => self.remote_fault(&format!("pushing `{node}` to the remote cache"), e),
        }
    }

    /// Pushes the local entry of node `i` (for `pipe push`), whether or not the remote has it.
    pub fn push_node(&self, i: usize, rec: &NodeRecord) -> Result<(), Cause> {
        self.push(&self.pipeline.nodes[i].name, rec, false)
    }

    /// The record of `key` in the local cache, else in the remote one (not pulled).
    pub fn cached_record(&self, key: &str) -> Option<NodeRecord> {
        self.store.record(key).or_else(|| self.remote.as_ref().filter(|r| r.readable())?.record(key).ok().flatten())
    }

    /// Makes the outputs of every upstream node of `i` present in the local cache.
    fn ensure_inputs(&self, i: usize, done: &HashMap<String, NodeRecord>) -> Result<(), Cause> {
        for up in self.pipeline.nodes[i].upstream() {
            self.materialize(up, done)?;
        }
        Ok(())
    }

    /// Makes node `up`'s outputs (as its record in `done` names them) present in the local
    /// cache: pulled from the remote, or, when that fails, recomputed here from its own inputs
    /// (materialised the same way), which must reproduce the recorded bytes.
    fn materialize(&self, up: &str, done: &HashMap<String, NodeRecord>) -> Result<(), Cause> {
        let rec = done.get(up).ok_or_else(|| KeyError::UpstreamNotRun { node: up.into() })?;
        let present = |r: &NodeRecord| r.outputs.values().all(|o| self.store.object_ok(o));
        if present(rec) {
            return Ok(());
        }
        let i =
            self.pipeline.nodes.iter().position(|n| n.name == up).ok_or_else(|| KeyError::UpstreamNotRun { node: up.into() })?;
        let _lock =
            self.store.lock(&rec.key, || self.reporter.emit(Event::NodeWaiting { node: up.into(), key: rec.key.clone() }))?;
        if present(rec) {
            return Ok(());
        }
        if let Some(r) = self.remote.as_ref().filter(|r| r.readable()) {
            let pulled =
                self.store.hold_entries().map_err(RemoteError::from).and_then(|_entries| r.pull(&self.store, rec, &|_, _| {}));
            match pulled {
                Ok(stats) => {
                    self.reporter.emit(Event::NodePulled {
                        node: up.into(),
                        key: rec.key.clone(),
                        files: stats.files,
                        bytes: stats.bytes,
                    });
                    return Ok(());
                }
                Err(e) => self.remote_fault(&format!("pulling `{up}` from the remote cache"), e)?,
            }
        }
        // Recompute it here.
        let node = &self.pipeline.nodes[i];
        self.ensure_inputs(i, done)?;
        let (parts, inputs) = self.key_parts(i, done)?;
        let inputs = self.ensure_sources(i, inputs, None)?;
        let key = parts.key();
        self.reporter.emit(Event::NodeStarted {
            node: node.name.clone(),
            kind: node.kind.name().into(),
            key: key.clone(),
            device: "cpu".into(),
            reasons: vec![DirtyReason::EntryMissing.to_string()],
        });
        let t0 = Instant::now();
        let started_at = now_secs();
        let staging = self.store.staging(&key)?;
        let work = self.store.work_dir(&key);
        std::fs::create_dir_all(&work).map_err(|source| Cause::Create { path: work.clone(), source })?;
        let log_path = self.store.log_path(&key);
        let log = std::fs::File::create(&log_path).map_err(|source| Cause::Create { path: log_path.clone(), source })?;
        let lease = DevicePool::new(1, &self.gpus).try_lease(node.device, node.gpus).unwrap_or(Lease::Cpu);
        let progress = NodeProgress::new(&node.name, self.reporter.clone());
        let summary = self.run_node(i, &key, inputs, &staging, &work, Arc::new(Mutex::new(log)), progress, lease)?;
        let outs: Vec<(&str, bool)> = node.kind.outputs(&node.params).iter().map(|o| (o.name, o.dir)).collect();
        let duration_ms = t0.elapsed().as_millis() as u64;
        let local = {
            let _entries = self.store.hold_entries()?;
            self.store.publish(&key, &node.name, &parts, &staging, &outs, RunFacts { started_at, duration_ms, summary })?
        };
        let _ = std::fs::remove_dir_all(&work);
        for (name, out) in &rec.outputs {
            let got = local.outputs.get(name).map(|o| o.digest.clone()).unwrap_or_default();
            if got != out.digest {
                return Err(Cause::Diverged {
                    node: up.into(),
                    output: name.clone(),
                    recorded: out.digest.clone(),
                    recomputed: got,
                });
            }
        }
        self.reporter.emit(Event::NodeFinished {
            node: node.name.clone(),
            kind: node.kind.name().into(),
            key,
            duration_ms,
            summary: local.summary.clone(),
            outputs: self.output_paths(&local),
        });
        Ok(())
    }

    /// Runs node `i`'s kind once, into `staging` (each output at `staging/<name>`): the one way
    /// a kind is run, for `run` and `verify` alike. Writes the node's header to `log`, turns a
    /// panic into an internal error, and checks that every declared output was written. Returns
    /// the one-line summary the kind set.
    #[allow(clippy::too_many_arguments)]
    fn run_node(
        &self,
        i: usize,
        key: &str,
        inputs: BTreeMap<String, PathBuf>,
        staging: &Path,
        work: &Path,
        log: Arc<Mutex<std::fs::File>>,
        progress: NodeProgress,
        lease: Lease,
    ) -> Result<Option<String>, NodeError> {
        let node = &self.pipeline.nodes[i];
        let kind = node.kind;
        let mut ctx = RunCtx {
            node: &node.name,
            params: &node.params,
            inputs,
            staging: staging.to_path_buf(),
            work: work.to_path_buf(),
            log,
            progress,
            summary: None,
            lease,
        };
        ctx.log(format!("node {} ({} v{}) key {key} on {lease}", node.name, kind.name(), kind.version()));
        for (slot, p) in &ctx.inputs {
            ctx.log(format!("input {slot}: {}", p.display()));
        }
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| kind.run(&mut ctx))).unwrap_or_else(|p| {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            Err(NodeError::Failed(format!("internal error (a bug in pipe, please report it): {}", msg.unwrap_or_default())))
        })?;
        for o in kind.outputs(&node.params) {
            if !staging.join(o.name).exists() {
                return Err(NodeError::Failed(format!("internal error: kind {} did not write output `{}`", kind.name(), o.name)));
            }
        }
        Ok(ctx.summary)
    }

    /// Re-executes node `i` from its cached inputs into a scratch folder and compares each
    /// output with its cache entry: the cached object must still hash to its digest, and the
    /// re-executed output must hash to it too. `done` holds the records of its upstream nodes.
    pub fn verify_node(&self, i: usize, done: &HashMap<String, NodeRecord>) -> Result<Verified, VerifyError> {
        let node = &self.pipeline.nodes[i];
        let (parts, inputs) = self.key_parts(i, done)?;
        let inputs = self.ensure_sources(i, inputs, None)?;
        let key = parts.key();
        let failed = |cause: Cause| NodeFailed { node: node.name.clone(), kind: node.kind.name(), source: Box::new(cause) };
        // Kept from a gc beside this verification while it reads the entry (cache::pins).
        let entries = self.store.hold_and_pin(&key).map_err(|e| failed(e.into()))?;
        // An entry only in the remote cache is pulled (checked against its digests) to be verified.
        let record = match self.store.lookup(&key) {
            Lookup::Hit(rec) => rec,
            // An object that fails the cheap check is verified like any other: reported as
            // tampered below. (An edited record is not this key's: there is nothing to verify.)
            Lookup::Damaged { objects, .. } if !objects.is_empty() => {
                self.store.record_any(&key).ok_or_else(|| VerifyError::NotCached { node: node.name.clone() })?
            }
            _ => self
                .take_from_remote(i, &key, true)
                .map_err(failed)?
                .ok_or_else(|| VerifyError::NotCached { node: node.name.clone() })?,
        };
        drop(entries);
        self.ensure_inputs(i, done).map_err(failed)?;
        let staging = self.store.staging(&key).map_err(|e| failed(e.into()))?;
        let work = staging.join(".work");
        std::fs::create_dir_all(&work).map_err(|source| failed(Cause::Create { path: work.clone(), source }))?;
        let log_path = staging.join(".log");
        let log = std::fs::File::create(&log_path).map_err(|source| failed(Cause::Create { path: log_path, source }))?;
        let lease = DevicePool::new(1, &self.gpus).try_lease(node.device, node.gpus).unwrap_or(Lease::Cpu);
        let progress = NodeProgress::silent(&node.name);
        let ran = self.run_node(i, &key, inputs, &staging, &work, Arc::new(Mutex::new(log)), progress, lease);
        let hash = |p: &Path| crate::hash::hash_path(p).unwrap_or_else(|e| format!("(unreadable: {e})"));
        let mut mismatches = Vec::new();
        for (name, out) in &record.outputs {
            let on_disk = hash(&self.store.object_path(&out.digest));
            if on_disk != out.digest {
                mismatches.push(Mismatch::Tampered { output: name.clone(), recorded: out.digest.clone(), on_disk });
            }
        }
        if ran.is_ok() {
            for (name, out) in &record.outputs {
                let recomputed = hash(&staging.join(name));
                if recomputed != out.digest {
                    mismatches.push(Mismatch::Nondeterministic {
                        output: name.clone(),
                        recorded: out.digest.clone(),
                        recomputed,
                    });
                }
            }
        }
        let _ = std::fs::remove_dir_all(&staging);
        ran.map_err(|e| failed(e.into()))?;
        Ok(Verified { record, mismatches })
    }
}

/// Digest of arbitrary canonical parts (used for memo ids).
pub fn digest_of(f: impl FnOnce(&mut Canon)) -> Digest {
    let mut c = Canon::default();
    f(&mut c);
    blake3::hash(&c.0).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session over a one-node pipeline: lora-train on two dummy input files (keys hash their
    /// bytes; nothing is loaded), with `node_extra` lines under the node.
    fn session(dir: &Path, node_extra: &str, gpus: &[usize]) -> Session {
        std::fs::write(dir.join("model.gguf"), "m").unwrap();
        std::fs::write(dir.join("data.bin"), "d").unwrap();
        let yaml = format!(
            "name: t\nnodes:\n  train:\n    kind: lora-train\n{node_extra}    inputs: {{ model: model.gguf, dataset: data.bin }}\n"
        );
        std::fs::write(dir.join("p.yaml"), yaml).unwrap();
        let pipeline = crate::spec::load(&dir.join("p.yaml"), &[]).unwrap();
        Session::open(pipeline, &dir.join("cache"), Arc::new(Reporter::silent())).unwrap().with_gpus(gpus.to_vec())
    }

    fn key_extra(s: &Session) -> (Digest, BTreeMap<String, String>) {
        let (parts, _) = s.key_parts(0, &HashMap::new()).unwrap();
        (parts.key(), parts.extra)
    }

    #[test]
    fn the_world_size_is_in_a_data_parallel_key_only_above_one_gpu() {
        let dir = tempfile::tempdir().unwrap();
        let (one_gpu, extra) = key_extra(&session(dir.path(), "    device: cuda\n", &[0, 1]));
        assert_eq!(extra.get("device").map(String::as_str), Some("cuda"));
        assert!(!extra.contains_key("world_size"), "{extra:?}");
        let (gpus_1, _) = key_extra(&session(dir.path(), "    gpus: 1\n", &[0, 1]));
        assert_eq!(gpus_1, one_gpu, "`gpus: 1` keeps the key of a node without `gpus`");
        let (gpus_2, extra) = key_extra(&session(dir.path(), "    gpus: 2\n", &[0, 1]));
        assert_eq!(extra.get("world_size").map(String::as_str), Some("2"));
        assert_ne!(gpus_2, one_gpu);
        let (all, _) = key_extra(&session(dir.path(), "    gpus: all\n", &[3, 5]));
        assert_eq!(all, gpus_2, "`all` of two GPUs is two GPUs, whichever ordinals");
        let (all_three, extra) = key_extra(&session(dir.path(), "    gpus: all\n", &[0, 1, 2]));
        assert_eq!(extra.get("world_size").map(String::as_str), Some("3"));
        assert_ne!(all_three, gpus_2);
    }

    #[test]
    fn where_a_node_runs_and_what_it_asks_slurm_for_are_not_in_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let (local, _) = key_extra(&session(dir.path(), "", &[]));
        let slurm = "    executor: slurm\n    resources: { partition: gpu, time: 30, cpus: 4, mem: 8G, extra: [--qos=x] }\n";
        let (on_slurm, extra) = key_extra(&session(dir.path(), slurm, &[]));
        assert_eq!(on_slurm, local, "executor and resources change no key: {extra:?}");
        // What the job computes on does: `cuda` on Slurm is CUDA whatever this machine has,
        // and `auto` is CUDA when the job asks for GPUs.
        let (cuda, extra) = key_extra(&session(dir.path(), "    executor: slurm\n    device: cuda\n", &[]));
        assert_eq!(extra.get("device").map(String::as_str), Some("cuda"));
        let (local_cuda, _) = key_extra(&session(dir.path(), "    device: cuda\n", &[0]));
        assert_eq!(cuda, local_cuda, "a CUDA node's key is the same here and on the cluster");
        let (auto_gpu, _) =
            key_extra(&session(dir.path(), "    executor: slurm\n    device: auto\n    resources: { gpus: 1 }\n", &[]));
        assert_eq!(auto_gpu, cuda);
        let (auto_cpu, _) = key_extra(&session(dir.path(), "    executor: slurm\n    device: auto\n", &[0]));
        assert_eq!(auto_cpu, local, "`auto` on a Slurm job without GPUs is the CPU, whatever this machine has");
    }
}
