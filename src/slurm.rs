//! Slurm: where a node runs ([`Executor`]), what it asks the cluster for ([`Resources`]), and
//! the few Slurm commands pipe drives (`sbatch`, `scontrol`, `sacct`, `scancel`).
//!
//! A leaf module: the spec reads `executor:` and `resources:` into it, the scheduler submits
//! jobs and follows them through it. Nothing here knows about pipelines or the cache.
//!
//! # How a node runs on Slurm
//! 1. The orchestrator (`pipe run`) computes the node's key, takes its lock and makes the
//!    inputs present in the cache, exactly as for a local node.
//! 2. It writes a job script that runs `pipe exec-node FILE NODE --key KEY --lease TOKEN` (the
//!    same binary, the same cache, the same `--set` overrides) and submits it with
//!    `sbatch --parsable` ([`submit`]), the node's [`Resources`] as sbatch options.
//! 3. The job loads the pipeline, recomputes the key from the upstream records in the cache,
//!    refuses to run if it differs, adopts the orchestrator's lock and runs the node with the
//!    same code as a local run, publishing atomically.
//! 4. The orchestrator polls the job ([`query`]: `scontrol show job`, else `sacct`, else the
//!    job-completion log), relays the job's `--json` progress, and reads the record when the
//!    job ends. A job that ends without a record fails the node with Slurm's state and reason.
//!
//! Limits: the cache must be on a filesystem the compute nodes see at the same path (or the
//! remote cache must be configured for both sides); the `pipe` binary must be runnable at the
//! same path on the compute nodes.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    /// In the `pipe` process (a worker thread), as always.
    #[default]
    Local,
    /// As a Slurm job that runs `pipe exec-node`.
    Slurm,
}

impl Executor {
    /// The YAML / command-line names.
    pub const NAMES: &'static [&'static str] = &["local", "slurm"];

    /// Parses a YAML / command-line name.
    pub fn parse(s: &str) -> Option<Executor> {
        match s {
            "local" => Some(Executor::Local),
            "slurm" => Some(Executor::Slurm),
            _ => None,
        }
    }
}

impl std::fmt::Display for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Executor::Local => "local",
            Executor::Slurm => "slurm",
        })
    }
}

/// What a Slurm job asks for (`resources:` of a node over `defaults: resources:`). Never part
/// of a node's key: where a node runs does not change what it computes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// `--time`, as Slurm reads it (minutes, `MM:SS`, `HH:MM:SS`, `D-HH[:MM[:SS]]`).
    pub time: Option<String>,
    /// `--cpus-per-task`.
    pub cpus: Option<u32>,
    /// `--mem` (a number of megabytes, or with a K/M/G/T suffix).
    pub mem: Option<String>,
    /// `--gpus`; by default the node's `gpus:` when it runs on CUDA.
    pub gpus: Option<u32>,
    /// Further sbatch arguments, passed as given.
    pub extra: Vec<String>,
}

/// The keys of `resources:`.
pub const RESOURCE_KEYS: &[&str] = &["partition", "account", "time", "cpus", "mem", "gpus", "extra"];

/// sbatch options pipe sets itself; `extra` may not give them.
pub const RESERVED: &[&str] = &["--job-name", "-J", "--output", "-o", "--error", "-e", "--parsable", "--wrap", "--chdir", "-D"];

impl Resources {
    /// `self` with every key it does not set taken from `defaults` (`extra` as a whole).
    pub fn over(mut self, defaults: &Resources) -> Resources {
        self.partition = self.partition.or_else(|| defaults.partition.clone());
        self.account = self.account.or_else(|| defaults.account.clone());
        self.time = self.time.or_else(|| defaults.time.clone());
        self.cpus = self.cpus.or(defaults.cpus);
        self.mem = self.mem.or_else(|| defaults.mem.clone());
        self.gpus = self.gpus.or(defaults.gpus);
        if self.extra.is_empty() {
            self.extra = defaults.extra.clone();
        }
        self
    }

    /// The sbatch options for these resources and `gpus` GPUs.
    pub fn sbatch_args(&self, gpus: u32) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(p) = &self.partition {
            out.push(format!("--partition={p}"));
        }
        if let Some(a) = &self.account {
            out.push(format!("--account={a}"));
        }
        if let Some(t) = &self.time {
            out.push(format!("--time={t}"));
        }
        if let Some(c) = self.cpus {
            out.push(format!("--cpus-per-task={c}"));
        }
        if let Some(m) = &self.mem {
            out.push(format!("--mem={m}"));
        }
        if gpus > 0 {
            out.push(format!("--gpus={gpus}"));
        }
        out.extend(self.extra.iter().cloned());
        out
    }
}

/// Checks a `time` value as Slurm reads it; returns it normalised (a YAML number is minutes).
pub fn check_time(text: &str) -> Result<String, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("infinite") || t.eq_ignore_ascii_case("unlimited") {
        return Ok(t.to_ascii_uppercase());
    }
    let bad = || format!("`{t}` is not a Slurm time limit");
    let num = |s: &str| -> Result<u64, String> {
        if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<u64>().map_err(|_| bad())
    };
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (Some(num(d)?), r),
        None => (None, t),
    };
    let parts: Vec<u64> = rest.split(':').map(num).collect::<Result<_, _>>()?;
    let seconds = match (days, parts.as_slice()) {
        (None, [m]) => m * 60,
        (None, [m, s]) => m * 60 + s,
        (None, [h, m, s]) => h * 3600 + m * 60 + s,
        (Some(d), [h]) => d * 86400 + h * 3600,
        (Some(d), [h, m]) => d * 86400 + h * 3600 + m * 60,
        (Some(d), [h, m, s]) => d * 86400 + h * 3600 + m * 60 + s,
        _ => return Err(bad()),
    };
    if seconds == 0 {
        return Err("a time limit of zero; the smallest is one minute (`time: 1`)".into());
    }
    Ok(t.to_string())
}

/// Checks a `mem` value: a positive number of megabytes, optionally with a K, M, G or T suffix.
pub fn check_mem(text: &str) -> Result<String, String> {
    let t = text.trim();
    let digits = t.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    let suffix = &t[digits.len()..];
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) || suffix.len() > 1 {
        return Err(format!("`{t}` is not a Slurm memory size"));
    }
    if digits.parse::<u64>().map_or(true, |n| n == 0) {
        return Err("a memory size of zero".into());
    }
    Ok(t.to_ascii_uppercase())
}

/// Checks one `extra` argument.
pub fn check_extra(arg: &str) -> Result<(), String> {
    if !arg.starts_with('-') {
        return Err(format!("`{arg}` is not an sbatch option (options start with `-`)"));
    }
    let name = arg.split('=').next().unwrap_or(arg);
    if RESERVED.contains(&name) {
        return Err(format!("`{name}` is set by pipe itself"));
    }
    Ok(())
}

/// A Slurm command failed or said something pipe cannot read.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// The command could not be started (Slurm is not installed, not on PATH).
    #[error("running `{command}`: {source} (is Slurm installed and on PATH?)")]
    Spawn { command: String, source: std::io::Error },
    /// The command exited with an error.
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    /// sbatch printed no job id.
    #[error("sbatch printed no job id: {stdout}")]
    NoJobId { stdout: String },
    /// The job script could not be written.
    #[error("writing the job script {}: {source}", path.display())]
    Script { path: PathBuf, source: std::io::Error },
}

fn run(cmd: &str, args: &[String]) -> Result<String, SlurmError> {
    let command = format!("{cmd} {}", args.join(" "));
    let out = Command::new(cmd).args(args).output().map_err(|source| SlurmError::Spawn { command: command.clone(), source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(SlurmError::Failed { command, stderr });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Quotes a string for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A job to submit: a script running `argv` in `chdir`, with these sbatch options.
pub struct JobSpec<'a> {
    /// The job name (`pipe-<node>`).
    pub name: String,
    /// Where to write the script.
    pub script: &'a Path,
    /// The job's stdout and stderr (`%j` is the job id).
    pub output: &'a Path,
    /// The working folder of the job.
    pub chdir: &'a Path,
    /// The command the job runs.
    pub argv: Vec<String>,
    /// Resource options (see [`Resources::sbatch_args`]).
    pub options: Vec<String>,
}

/// Writes the job script and submits it; returns the job id.
pub fn submit(job: &JobSpec) -> Result<String, SlurmError> {
    let mut script = String::from("#!/bin/sh\n# Written by pipe: runs one pipeline node (pipe exec-node) as a Slurm job.\n");
    script.push_str("exec");
    for a in &job.argv {
        script.push(' ');
        script.push_str(&shell_quote(a));
    }
    script.push('\n');
    if let Some(dir) = job.script.parent() {
        std::fs::create_dir_all(dir).map_err(|source| SlurmError::Script { path: dir.to_path_buf(), source })?;
    }
    std::fs::write(job.script, script).map_err(|source| SlurmError::Script { path: job.script.to_path_buf(), source })?;
    let mut args = vec![
        "--parsable".to_string(),
        format!("--job-name={}", job.name),
        format!("--output={}", job.output.display()),
        format!("--chdir={}", job.chdir.display()),
    ];
    args.extend(job.options.iter().cloned());
    args.push(job.script.display().to_string());
    let stdout = run("sbatch", &args)?;
    // `--parsable` prints `ID` or `ID;CLUSTER`.
    let id = stdout.trim().split(';').next().unwrap_or("").trim().to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return Err(SlurmError::NoJobId { stdout });
    }
    Ok(id)
}

/// Cancels jobs (errors ignored: a job that ended already is fine).
pub fn cancel(ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    let _ = Command::new("scancel").args(ids).output();
}

/// A job's state as Slurm reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    /// `JobState` (PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, CANCELLED, OUT_OF_MEMORY, ...).
    pub state: String,
    /// `Reason` (`None` when Slurm gives none).
    pub reason: Option<String>,
    /// `ExitCode` as `CODE:SIGNAL`.
    pub exit_code: Option<String>,
    /// The node the job runs or ran on.
    pub node: Option<String>,
    /// Where the answer came from: `scontrol`, `sacct` or the job-completion log.
    pub source: &'static str,
}

impl JobInfo {
    /// True once the job will not run again (requeued jobs are not ended).
    pub fn ended(&self) -> bool {
        matches!(
            self.state.as_str(),
            "COMPLETED"
                | "FAILED"
                | "CANCELLED"
                | "TIMEOUT"
                | "OUT_OF_MEMORY"
                | "NODE_FAIL"
                | "BOOT_FAIL"
                | "DEADLINE"
                | "PREEMPTED"
                | "SPECIAL_EXIT"
                | "REVOKED"
        )
    }

    /// True while the job waits for resources.
    pub fn pending(&self) -> bool {
        matches!(self.state.as_str(), "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "CONFIGURING")
    }

    /// One sentence: `TIMEOUT (reason TimeLimit, exit code 0:15)`.
    pub fn describe(&self) -> String {
        let mut extra = Vec::new();
        if let Some(r) = &self.reason {
            extra.push(format!("reason {r}"));
        }
        if let Some(e) = &self.exit_code {
            extra.push(format!("exit code {e}"));
        }
        if extra.is_empty() {
            self.state.clone()
        } else {
            format!("{} ({})", self.state, extra.join(", "))
        }
    }
}

/// `KEY=VALUE` fields of a one-line `scontrol -o` or job-completion record.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|f| f.strip_prefix(key)?.strip_prefix('=')).filter(|v| !v.is_empty() && *v != "(null)")
}

/// Parses `scontrol show job -o ID` (or a jobcomp/filetxt line).
pub fn parse_job_line(line: &str, source: &'static str) -> Option<JobInfo> {
    let state = field(line, "JobState")?.to_string();
    // A state may carry flags: `CANCELLED+` or `CANCELLED by 0`.
    let state = state.trim_end_matches('+').to_string();
    Some(JobInfo {
        state,
        reason: field(line, "Reason").filter(|r| *r != "None").map(String::from),
        exit_code: field(line, "ExitCode").map(String::from),
        node: field(line, "NodeList").or_else(|| field(line, "BatchHost")).map(String::from),
        source,
    })
}

/// The state of job `id`: from `scontrol show job` while the controller remembers it, else from
/// `sacct` where the cluster keeps accounting, else from the job-completion log
/// (`jobcomp/filetxt`). `None` when no source knows the job.
pub fn query(id: &str) -> Option<JobInfo> {
    if let Ok(out) = run("scontrol", &["show".into(), "job".into(), "-o".into(), id.into()]) {
        if let Some(info) = out.lines().find_map(|l| parse_job_line(l, "scontrol")) {
            return Some(info);
        }
    }
    if let Ok(out) = run(
        "sacct",
        &["-j".into(), id.into(), "-X".into(), "-n".into(), "-P".into(), "-o".into(), "State,Reason,ExitCode,NodeList".into()],
    ) {
        if let Some(line) = out.lines().find(|l| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split('|').collect();
            if f.len() >= 3 && !f[0].is_empty() {
                return Some(JobInfo {
                    state: f[0].split_whitespace().next().unwrap_or(f[0]).trim_end_matches('+').to_string(),
                    reason: Some(f[1].to_string()).filter(|r| !r.is_empty() && r != "None"),
                    exit_code: Some(f[2].to_string()).filter(|e| !e.is_empty()),
                    node: f.get(3).map(|s| s.to_string()).filter(|s| !s.is_empty()),
                    source: "sacct",
                });
            }
        }
    }
    let log = jobcomp_log()?;
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().filter(|l| field(l, "JobId") == Some(id)).find_map(|l| parse_job_line(l, "the job-completion log"))
}

/// The job-completion log of a `jobcomp/filetxt` cluster (`JobCompLoc`), if that is the plugin.
fn jobcomp_log() -> Option<PathBuf> {
    let out = run("scontrol", &["show".into(), "config".into()]).ok()?;
    let value = |key: &str| {
        out.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    (value("JobCompType")?.as_str() == "jobcomp/filetxt").then(|| value("JobCompLoc").map(PathBuf::from))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_time_limits_are_checked_as_slurm_reads_them() {
        for ok in ["1", "90", "10:30", "1:00:00", "2-0", "1-12:00", "0-0:5:0", "UNLIMITED"] {
            assert!(check_time(ok).is_ok(), "{ok}");
        }
        for bad in ["0", "", "1h", "1:2:3:4", "-5", "a-1", "0:0"] {
            assert!(check_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_sizes_are_numbers_with_an_optional_unit() {
        assert_eq!(check_mem("4g").unwrap(), "4G");
        assert_eq!(check_mem("500").unwrap(), "500");
        for bad in ["0", "4GB", "G", "1.5G", "-1"] {
            assert!(check_mem(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn extra_arguments_are_options_pipe_does_not_set_itself() {
        assert!(check_extra("--qos=high").is_ok());
        assert!(check_extra("--output=x").is_err());
        assert!(check_extra("qos").is_err());
    }

    #[test]
    fn a_node_resource_overrides_the_default_and_sbatch_gets_them_all() {
        let d = Resources {
            partition: Some("gpu".into()),
            time: Some("60".into()),
            extra: vec!["--qos=x".into()],
            ..Default::default()
        };
        let n = Resources { time: Some("5".into()), cpus: Some(4), ..Default::default() }.over(&d);
        assert_eq!(n.sbatch_args(2), ["--partition=gpu", "--time=5", "--cpus-per-task=4", "--gpus=2", "--qos=x"]);
    }

    #[test]
    fn job_states_are_read_from_scontrol_and_the_completion_log() {
        let s = "JobId=7 JobName=pipe-x JobState=TIMEOUT Reason=TimeLimit Dependency=(null) ExitCode=0:15 NodeList=n1";
        let info = parse_job_line(s, "scontrol").unwrap();
        assert_eq!(info.state, "TIMEOUT");
        assert!(info.ended());
        assert_eq!(info.describe(), "TIMEOUT (reason TimeLimit, exit code 0:15)");
        let c = "JobId=8 UserId=root(0) GroupId=root(0) Name=pipe-y JobState=CANCELLED Partition=debug ExitCode=0:15";
        let info = parse_job_line(c, "the job-completion log").unwrap();
        assert_eq!((info.state.as_str(), info.reason), ("CANCELLED", None));
        let p = parse_job_line("JobId=9 JobState=PENDING Reason=Resources", "scontrol").unwrap();
        assert!(p.pending() && !p.ended());
    }
}
