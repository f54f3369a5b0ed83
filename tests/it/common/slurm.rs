//! A real one-node Slurm cluster (`scripts/slurm-cluster.sh`: Debian's slurm-wlm and munge),
//! started once per test binary on first use and stopped at its exit; shared by the Slurm tests
//! and the fortune pipeline's end-to-end run.

use std::path::PathBuf;
use std::sync::OnceLock;

use super::repo;

/// A running cluster: `SLURM_CONF` for every command.
pub struct Cluster {
    dir: PathBuf,
    pub conf: String,
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();

extern "C" fn stop_cluster() {
    if let Some(Some(c)) = CLUSTER.get() {
        let _ = std::process::Command::new(repo().join("scripts/slurm-cluster.sh")).arg("stop").arg(&c.dir).output();
        let _ = std::fs::remove_dir_all(&c.dir);
    }
}

/// The test binary's cluster, started on first use; `None` (after a SKIPPED line naming `test`)
/// where Slurm cannot run here, a panic instead with `PIPE_REQUIRE_SLURM=1` (scripts/test.sh).
pub fn cluster(test: &str) -> Option<&'static Cluster> {
    let c = CLUSTER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pipe-slurm-{}", std::process::id()));
        let out = std::process::Command::new(repo().join("scripts/slurm-cluster.sh")).arg("start").arg(&dir).output();
        let started = match out {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout).to_string();
                text.lines().find_map(|l| l.strip_prefix("export SLURM_CONF=")).map(|c| c.trim().to_string()).ok_or(text)
            }
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).to_string()),
            Err(e) => Err(e.to_string()),
        };
        match started {
            Ok(conf) => {
                // SAFETY: registering a plain extern "C" function.
                unsafe { libc::atexit(stop_cluster) };
                Some(Cluster { dir, conf })
            }
            Err(why) => {
                if std::env::var("PIPE_REQUIRE_SLURM").is_ok_and(|v| v == "1") {
                    panic!("PIPE_REQUIRE_SLURM=1 but scripts/slurm-cluster.sh could not start a cluster: {why}");
                }
                eprintln!("SKIPPED slurm tests: scripts/slurm-cluster.sh could not start a cluster ({}); set PIPE_REQUIRE_SLURM=1 to make this a failure", why.trim());
                None
            }
        }
    });
    if c.is_none() {
        eprintln!("SKIPPED {test}: no Slurm cluster");
    }
    c.as_ref()
}
