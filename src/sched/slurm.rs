//! Nodes whose executor is Slurm: the orchestrator's side (`Session::run_on_slurm`: submit,
//! follow, relay, read the record) and the job's side ([`Session::exec_node`]: the node's key
//! checked, the orchestrator's lock adopted, the node run by `Session::compute` like any
//! local node). The Slurm commands themselves are in [`crate::slurm`].
//!
//! Ctrl-C (SIGINT) or SIGTERM on an orchestrator that submitted jobs cancels them (`scancel`),
//! removes the lock leases it holds, and exits with 130 ([`install_interrupt_handler`]).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

use super::{Cause, Failure, NodeFailed, Session};
use crate::cache::lock::KeyLock;
use crate::cache::NodeRecord;
use crate::device::{DevicePool, DeviceReq};
use crate::hash::dirty::DirtyReason;
use crate::report::Event;
use crate::slurm::{self, JobInfo, JobSpec, SlurmError};

/// How this process submits Slurm jobs.
#[derive(Debug, Clone)]
pub struct SlurmSetup {
    /// The `pipe` binary the jobs run (this one: the compute nodes must see it at this path).
    pub exe: PathBuf,
    /// Arguments every `pipe exec-node` gets after its own: the run's `--set`, `--executor`,
    /// `--remote` and `--remote-mode`, so the job loads the same pipeline and cache.
    pub args: Vec<String>,
    /// The job's working folder (the orchestrator's).
    pub chdir: PathBuf,
}

/// Running a node as a Slurm job went wrong.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A Slurm command failed.
    #[error(transparent)]
    Slurm(#[from] SlurmError),
    /// The job ended without publishing the node.
    #[error("Slurm job {job} ended {state} (from {source_name}){detail}")]
    Ended {
        /// The job id.
        job: String,
        /// Slurm's state, reason and exit code ([`JobInfo::describe`]).
        state: String,
        /// Where Slurm's answer came from.
        source_name: &'static str,
        /// The node's own error, as the job reported it (`: ...`), if it did.
        detail: String,
        /// The job's output.
        log: PathBuf,
    },
    /// The job is unknown to every source pipe asks and published nothing.
    #[error("Slurm job {job} disappeared (neither scontrol, sacct nor the job-completion log knows it) and published nothing")]
    Lost { job: String, log: PathBuf },
    /// The job computed another key than the orchestrator did: the two do not see the same
    /// pipeline, inputs or cache.
    #[error("the job computed key {computed} for this node, the orchestrator {expected}: they do not see the same pipeline file, inputs or cache (is the project on a filesystem both see, at the same path?)")]
    KeyMismatch { expected: String, computed: String },
    /// An upstream record the job needs is not in the cache it sees.
    #[error("upstream `{node}` (key {key}) is not in the cache {}: is the cache on a filesystem both the orchestrator and the job see?", cache.display())]
    UpstreamMissing { node: String, key: String, cache: PathBuf },
    /// An `--upstream` argument is malformed or names a node that is not upstream.
    #[error("--upstream {arg}: {message}")]
    BadUpstream { arg: String, message: String },
    /// The node needs a device the job's machine lacks.
    #[error("node `{node}` needs {wanted}, which this machine does not have (did the job ask for GPUs? resources: gpus)")]
    NoDevice { node: String, wanted: String },
    /// This session was not set up to submit jobs.
    #[error("the node's executor is slurm, but this command does not submit Slurm jobs")]
    NotConfigured,
    /// The key lock is not a lease, so it cannot be handed to a job.
    #[error("internal error: the key lock is not a lease")]
    NoLease,
}

/// Job ids this process submitted and has not seen end, for Ctrl-C.
static JOBS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs (once) a SIGINT/SIGTERM handler that cancels this process's Slurm jobs, removes
/// its lock leases and exits with 130. The handler only sets a flag; a thread does the work
/// (running `scancel` is not async-signal-safe).
pub fn install_interrupt_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            libc::signal(libc::SIGINT, handler);
            libc::signal(libc::SIGTERM, handler);
        }
        let _ = std::thread::Builder::new().name("pipe-interrupt".into()).spawn(|| loop {
            std::thread::sleep(Duration::from_millis(100));
            if INTERRUPTED.load(Ordering::SeqCst) {
                let jobs = JOBS.lock().map(|j| j.clone()).unwrap_or_default();
                if !jobs.is_empty() {
                    eprintln!("interrupted: cancelling Slurm job(s) {}", jobs.join(", "));
                    slurm::cancel(&jobs);
                }
                crate::cache::lock::release_held_leases();
                std::process::exit(130);
            }
        });
    });
}

fn forget_job(id: &str) {
    if let Ok(mut j) = JOBS.lock() {
        j.retain(|x| x != id);
    }
}

/// Reads the lines a job appended to its output since `offset`, keeping a partial last line
/// for the next read.
struct Tail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl Tail {
    fn lines(&mut self) -> Vec<String> {
        let Ok(mut f) = std::fs::File::open(&self.path) else { return Vec::new() };
        // A requeued job's output starts again from the top.
        if f.metadata().is_ok_and(|m| m.len() < self.offset) {
            self.offset = 0;
            self.partial.clear();
        }
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return Vec::new();
        }
        self.offset += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let mut out: Vec<String> = self.partial.split('\n').map(String::from).collect();
        self.partial = out.pop().unwrap_or_default();
        out
    }
}

impl Session {
    /// Submits node `i` (key `key`, whose lock `lock` this process holds as a lease) as a Slurm
    /// job, follows it until it ends, relays its progress, and returns the record it published.
    pub(super) fn run_on_slurm(
        &self,
        i: usize,
        key: &str,
        lock: &KeyLock,
        done: &HashMap<String, NodeRecord>,
        force: bool,
        reasons: &[DirtyReason],
    ) -> Result<(NodeRecord, bool), Failure> {
        let node = &self.pipeline.nodes[i];
        let kind = node.kind;
        let failed = |cause: Cause, log: Option<PathBuf>| {
            let error = NodeFailed { node: node.name.clone(), kind: kind.name(), source: Box::new(cause) };
            self.reporter.emit(Event::NodeFailed {
                node: node.name.clone(),
                kind: kind.name().into(),
                error: error.source.to_string(),
                log: log.as_ref().map(|l| l.display().to_string()).unwrap_or_default(),
            });
            Failure { error, log }
        };
        let setup = self.slurm.as_ref().ok_or_else(|| failed(JobError::NotConfigured.into(), None))?;
        let token = lock.lease_token().ok_or_else(|| failed(JobError::NoLease.into(), None))?;
        let work = self.store.work_dir(key);
        let script = work.join("slurm").join("job.sh");
        let logs = self.store.root().join("logs");
        let output_pattern = logs.join(format!("{key}.slurm-%j.out"));
        let mut argv = vec![
            setup.exe.display().to_string(),
            "exec-node".into(),
            self.canonical_file.display().to_string(),
            node.name.clone(),
            "--key".into(),
            key.to_string(),
            "--lease".into(),
            token.to_string(),
            "--cache".into(),
            self.store.root().display().to_string(),
            "--json".into(),
            "--no-progress".into(),
            "--color".into(),
            "never".into(),
        ];
        for up in node.upstream() {
            if let Some(rec) = done.get(up) {
                argv.push("--upstream".into());
                argv.push(format!("{up}={}", rec.key));
            }
        }
        if force {
            argv.push("--force".into());
        }
        argv.extend(setup.args.iter().cloned());
        let job = JobSpec {
            name: format!("pipe-{}", node.name),
            script: &script,
            output: &output_pattern,
            chdir: &setup.chdir,
            argv,
            options: node.resources.sbatch_args(node.slurm_gpus()),
        };
        // Registered before sbatch returns the id would be better still; a Ctrl-C between the
        // two leaves one job running, which finds the lease gone and refuses to run.
        let id = slurm::submit(&job).map_err(|e| failed(JobError::from(e).into(), None))?;
        if let Ok(mut j) = JOBS.lock() {
            j.push(id.clone());
        }
        let _ = std::fs::write(work.join("slurm").join("job-id"), &id);
        let log = logs.join(format!("{key}.slurm-{id}.out"));
        self.reporter.emit(Event::NodeQueued {
            node: node.name.clone(),
            kind: kind.name().into(),
            key: key.to_string(),
            job: id.clone(),
            log: log.display().to_string(),
        });
        let mut tail = Tail { path: log.clone(), offset: 0, partial: String::new() };
        let mut started = false;
        let mut cached = false;
        let mut job_error: Option<String> = None;
        let mut relay = |lines: Vec<String>| {
            for line in lines {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                let s = |k: &str| v[k].as_str().map(String::from);
                match v["event"].as_str() {
                    Some("node_started") if !started => {
                        started = true;
                        self.reporter.emit(Event::NodeStarted {
                            node: node.name.clone(),
                            kind: kind.name().into(),
                            key: key.to_string(),
                            device: format!("slurm job {id}: {}", s("device").unwrap_or_default()),
                            reasons: reasons.iter().map(|r| r.to_string()).collect(),
                        });
                    }
                    Some("node_progress") => self.reporter.emit(Event::NodeProgress {
                        node: node.name.clone(),
                        done: v["done"].as_u64().unwrap_or(0),
                        total: v["total"].as_u64(),
                        unit: s("unit").unwrap_or_default(),
                        message: s("message"),
                    }),
                    // The job pushed its outputs to the remote cache (it was given the run's).
                    Some("node_pushed") => self.reporter.emit(Event::NodePushed {
                        node: node.name.clone(),
                        key: key.to_string(),
                        remote: s("remote").unwrap_or_default(),
                        uploaded: v["uploaded"].as_u64().unwrap_or(0),
                        skipped: v["skipped"].as_u64().unwrap_or(0),
                        bytes: v["bytes"].as_u64().unwrap_or(0),
                    }),
                    Some("node_pulled") => self.reporter.emit(Event::NodePulled {
                        node: s("node").unwrap_or_default(),
                        key: s("key").unwrap_or_default(),
                        files: v["files"].as_u64().unwrap_or(0),
                        bytes: v["bytes"].as_u64().unwrap_or(0),
                    }),
                    Some("node_cached") => cached = true,
                    Some("node_failed") => job_error = s("error"),
                    _ => {}
                }
            }
        };
        let mut unknown = 0;
        // Short jobs end within a second or two of starting: poll fast at first, then back off to
        // one query a second (each is a `scontrol` RPC to the controller).
        let mut poll = Duration::from_millis(200);
        let info: Option<JobInfo> = loop {
            std::thread::sleep(poll);
            poll = (poll * 3 / 2).min(Duration::from_secs(1));
            relay(tail.lines());
            match slurm::query(&id) {
                Some(info) if info.ended() => break Some(info),
                Some(_) => unknown = 0,
                // A job just submitted can be briefly unknown; one that stays unknown is lost.
                None => {
                    unknown += 1;
                    if unknown > 30 {
                        break None;
                    }
                }
            }
        };
        // The last lines, once the output is complete.
        std::thread::sleep(Duration::from_millis(200));
        relay(tail.lines());
        if !tail.partial.is_empty() {
            let last = std::mem::take(&mut tail.partial);
            relay(vec![last]);
        }
        forget_job(&id);
        match self.store.record(key) {
            Some(rec) if info.as_ref().is_none_or(|i| i.state == "COMPLETED") || started || cached => {
                if cached && !started {
                    self.emit_cached_locally(node, key.as_ref());
                    return Ok((rec, false));
                }
                if !started {
                    self.reporter.emit(Event::NodeStarted {
                        node: node.name.clone(),
                        kind: kind.name().into(),
                        key: key.to_string(),
                        device: format!("slurm job {id}"),
                        reasons: reasons.iter().map(|r| r.to_string()).collect(),
                    });
                }
                self.reporter.emit(Event::NodeFinished {
                    node: node.name.clone(),
                    kind: kind.name().into(),
                    key: key.to_string(),
                    duration_ms: rec.duration_ms,
                    summary: rec.summary.clone(),
                    outputs: self.output_paths(&rec),
                });
                let _ = std::fs::remove_dir_all(&work);
                self.push(&node.name, &rec, true).map_err(|c| failed(c, Some(log.clone())))?;
                Ok((rec, true))
            }
            _ => {
                let cause = match info {
                    Some(info) => JobError::Ended {
                        job: id.clone(),
                        state: info.describe(),
                        source_name: info.source,
                        detail: job_error.map(|e| format!(": {e}")).unwrap_or_default(),
                        log: log.clone(),
                    },
                    None => JobError::Lost { job: id.clone(), log: log.clone() },
                };
                Err(failed(cause.into(), Some(log)))
            }
        }
    }

    /// The job's side (`pipe exec-node`): runs node `i` against this cache exactly as a local
    /// run would, after checking that its key, computed from the `upstream` records (node name
    /// to key), is `expected`. With `lease`, adopts the lock the orchestrator holds under that
    /// token; without, takes the key's lock itself. `force` reruns it even when cached.
    /// Returns the record and whether it ran.
    pub fn exec_node(
        &self,
        i: usize,
        expected: &str,
        upstream: &HashMap<String, String>,
        lease: Option<&str>,
        force: bool,
    ) -> Result<(NodeRecord, bool), Failure> {
        let node = &self.pipeline.nodes[i];
        let kind = node.kind;
        let log_path = self.store.log_path(expected);
        let fail = |cause: Cause| {
            let error = NodeFailed { node: node.name.clone(), kind: kind.name(), source: Box::new(cause) };
            self.reporter.emit(Event::NodeFailed {
                node: node.name.clone(),
                kind: kind.name().into(),
                error: error.source.to_string(),
                log: log_path.display().to_string(),
            });
            Failure { error, log: Some(log_path.clone()) }
        };
        let ups: Vec<&str> = node.upstream().collect();
        let mut done = HashMap::new();
        for (name, key) in upstream {
            if !ups.contains(&name.as_str()) {
                let message = format!("`{name}` is not an upstream node of `{}`", node.name);
                return Err(fail(JobError::BadUpstream { arg: format!("{name}={key}"), message }.into()));
            }
            let rec = self.cached_record(key).ok_or_else(|| {
                fail(
                    JobError::UpstreamMissing { node: name.clone(), key: key.clone(), cache: self.store.root().to_path_buf() }
                        .into(),
                )
            })?;
            done.insert(name.clone(), rec);
        }
        let (parts, inputs) = self.key_parts(i, &done).map_err(|e| fail(e.into()))?;
        let key = parts.key();
        if key != expected {
            return Err(fail(JobError::KeyMismatch { expected: expected.to_string(), computed: key }.into()));
        }
        let _lock = match lease {
            Some(token) => self.store.adopt_lock(&key, token),
            None => {
                self.store.lock(&key, || self.reporter.emit(Event::NodeWaiting { node: node.name.clone(), key: key.clone() }))
            }
        }
        .map_err(|e| fail(e.into()))?;
        if let Some(rec) = self.store.record(&key).filter(|_| !force) {
            self.emit_cached_locally(node, key.as_ref());
            return Ok((rec, false));
        }
        self.ensure_inputs(i, &done).map_err(fail)?;
        let (cuda, _) = self.placement(node);
        let req = if cuda { DeviceReq::Cuda } else { DeviceReq::Cpu };
        let lease = DevicePool::new(1, &self.gpus).try_lease(req, node.gpus).ok_or_else(|| {
            let wanted = match node.gpus {
                crate::device::GpuCount::Count(n) if n > 1 => format!("{n} GPUs"),
                _ => "a GPU".to_string(),
            };
            fail(JobError::NoDevice { node: node.name.clone(), wanted }.into())
        })?;
        let reasons = if force { vec![DirtyReason::Forced] } else { self.reasons(i, &parts) };
        // `compute` reports its own failure.
        self.compute(i, &key, &parts, inputs, lease, &reasons).map(|rec| (rec, true))
    }

    /// Submits Slurm nodes with this setup; their keys are locked with leases (the cache is
    /// shared with the cluster's machines).
    pub fn with_slurm(mut self, setup: SlurmSetup) -> Session {
        self.store.use_leases();
        self.slurm = Some(setup);
        self
    }

    /// The Slurm job of a node key that an orchestrator submitted and that has not ended, with
    /// its state (for `pipe status`).
    pub fn slurm_job(&self, key: &str) -> Option<(String, JobInfo)> {
        let id = std::fs::read_to_string(self.store.work_dir(key).join("slurm").join("job-id")).ok()?;
        let id = id.trim().to_string();
        let info = slurm::query(&id)?;
        (!info.ended()).then_some((id, info))
    }
}
