//! One file per subcommand. Each returns an [`ExitStatus`]; errors that reach `main` are
//! invalid invocations or internal errors (exit 2).

pub mod exec_node;
pub mod fsck;
pub mod gc;
pub mod graph;
pub mod kinds;
pub mod push;
pub mod run;
pub mod serve;
pub mod show;
pub mod status;
pub mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::cli::GlobalArgs;
use crate::remote::{self, Remote, RemoteConfig};
use crate::spec::{self, validate::SpecError, Override, Pipeline};

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Everything succeeded (including "all fresh").
    Success,
    /// A node failed, or verify found a mismatch.
    Failure,
    /// Invalid invocation or pipeline, or an internal error.
    Error,
}

impl From<ExitStatus> for ExitCode {
    fn from(s: ExitStatus) -> ExitCode {
        match s {
            ExitStatus::Success => ExitCode::SUCCESS,
            ExitStatus::Failure => ExitCode::from(1),
            ExitStatus::Error => ExitCode::from(2),
        }
    }
}

/// Parses `--set` arguments and loads the pipeline.
pub fn load_pipeline(file: &Path, sets: &[String]) -> Result<Pipeline, SpecError> {
    let overrides = sets.iter().map(|s| Override::parse(s)).collect::<Result<Vec<_>, _>>()?;
    spec::load(file, &overrides)
}

/// The cache of [`cache_dir`] when it exists, for commands that only look after one (`gc`,
/// `fsck`); `None` after saying there is none.
pub fn existing_cache(
    global: &GlobalArgs,
    pipeline_file: Option<&Path>,
) -> Result<Option<crate::cache::Store>, crate::cache::CacheError> {
    let dir = cache_dir(global, pipeline_file);
    if !dir.exists() {
        println!("no cache at {}", dir.display());
        return Ok(None);
    }
    crate::cache::Store::open(&dir).map(Some)
}

/// The cache folder: `--cache`/`PIPE_CACHE`, else `cache/` in the project root of the pipeline
/// file (the nearest folder above it holding `.git` or `cache/`, else the file's own folder).
pub fn cache_dir(global: &GlobalArgs, pipeline_file: Option<&Path>) -> PathBuf {
    if let Some(c) = &global.cache {
        return c.clone();
    }
    let start = pipeline_file
        .and_then(|f| f.canonicalize().ok())
        .and_then(|f| f.parent().map(Path::to_path_buf))
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("."));
    for dir in start.ancestors() {
        if dir.join(".git").exists() || dir.join("cache").is_dir() {
            return dir.join("cache");
        }
    }
    start.join("cache")
}

/// The remote cache setting for a command on the cache folder `cache`: `--remote`/`PIPE_REMOTE`,
/// else `remote` in `pipe.toml` beside the cache folder; none when unset or `--remote-mode off`.
pub fn remote_config(global: &GlobalArgs, cache: &Path) -> anyhow::Result<Option<RemoteConfig>> {
    let project = cache.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let config = remote::config::project_config(&project)?;
    Ok(remote::config::resolve(
        global.remote.as_deref(),
        global.remote_mode.as_deref(),
        &config,
        &project.join(remote::config::FILE),
    )?)
}

/// The remote cache of [`remote_config`], connected.
pub fn open_remote(global: &GlobalArgs, cache: &Path) -> anyhow::Result<Option<Remote>> {
    Ok(match remote_config(global, cache)? {
        Some(cfg) => Some(Remote::open(&cfg)?),
        None => None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_remote_mode_flag_offers_exactly_the_remote_modes() {
        assert_eq!(crate::cli::REMOTE_MODES, crate::remote::Mode::NAMES);
        for m in crate::cli::REMOTE_MODES {
            assert_eq!(m.parse::<crate::remote::Mode>().unwrap().to_string(), m);
        }
    }

    #[test]
    fn the_executor_flag_offers_exactly_the_executors() {
        assert_eq!(&crate::cli::EXECUTORS[..], crate::slurm::Executor::NAMES);
        for e in crate::cli::EXECUTORS {
            assert_eq!(crate::slurm::Executor::parse(e).map(|x| x.to_string()).as_deref(), Some(e));
        }
    }
}
