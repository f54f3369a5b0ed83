//! The cache on a filesystem that fills up (ENOSPC) and on one that is read-only: the node fails
//! with an error that says so and names the cache, nothing half-written is published, and the
//! rerun after freeing space completes. Each test mounts a small tmpfs of its own (root, as in
//! CI); where mounting is not allowed it is skipped with a message, unless
//! `PIPE_REQUIRE_MOUNT=1` (scripts/test.sh).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{names, TestContext};

const PIPELINE: &str = r#"name: full
nodes:
  fix: { kind: fix-json, inputs: { records: data/fortune.jsonl } }
  base:
    kind: random-model
    inputs: { tokenizer: tok/tokenizer.json }
    params: { shape: tiny, layers: 2, vocab: 1024, seed: 5 }
"#;

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, kib: u64, test: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"]).arg(at).output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(at.to_path_buf())),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                if std::env::var("PIPE_REQUIRE_MOUNT").as_deref() == Ok("1") {
                    panic!("PIPE_REQUIRE_MOUNT=1 but a tmpfs cannot be mounted: {why}");
                }
                eprintln!("SKIPPED {test}: cannot mount a tmpfs here ({why})");
                None
            }
        }
    }

    fn remount(&self, opts: &str) {
        let out = Command::new("mount").args(["-o", &format!("remount,{opts}")]).arg(&self.0).output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// Bytes under `dir`.
fn du(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

#[test]
fn a_full_cache_filesystem_fails_the_node_clearly_publishes_nothing_and_the_rerun_after_freeing_space_completes() {
    // Sizes from a run on the ordinary disk: what fix leaves in a cache, and the model's size.
    let sizing = TestContext::with_fixtures();
    sizing.write("p.yaml", PIPELINE);
    sizing.run("p.yaml", &["--target", "fix"]).success();
    let after_fix = du(&sizing.cache);
    sizing.run("p.yaml", &[]).success();
    let model = du(&sizing.output_path("p.yaml", "base", "model", &[]));
    assert!(model > 200_000, "the model must be big enough to overflow the filesystem: {model}");

    let mut t = TestContext::with_fixtures();
    t.write("p.yaml", PIPELINE);
    // Room for fix's entry and half the model.
    let kib = (after_fix + model / 2) / 1024 + 64;
    let Some(fs) = Tmpfs::mount(&t.path("small"), kib, "a_full_cache_filesystem_...") else { return };
    t.cache = fs.0.join("cache");
    let r = t.run("p.yaml", &["--keep-going"]).code(1);
    assert_eq!(r.ran_nodes(), names(&["base", "fix"]), "{r:?}");
    let failed = r.events_of("node_failed");
    assert_eq!(failed.len(), 1, "{r:?}");
    let error = failed[0]["error"].as_str().unwrap();
    assert!(error.contains("the cache's filesystem is full") && error.contains(&t.cache.display().to_string()), "{error}");
    // Nothing of base is published, and its staging is gone.
    assert_eq!(t.node_records().len(), 1, "only fix's record");
    let leftovers: Vec<_> = std::fs::read_dir(t.cache.join("tmp")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // More space: the rerun completes, fix is fresh, and the cache is intact.
    fs.remount(&format!("size={}k", (after_fix + model) / 1024 * 4));
    let again = t.run("p.yaml", &[]).success();
    assert_eq!((again.ran_nodes(), again.cached_nodes()), (names(&["base"]), names(&["fix"])), "{again:?}");
    assert!(t.pipe(["fsck"]).success().stdout.contains("all intact"));
}

#[test]
fn a_read_only_cache_is_a_clear_error() {
    let mut t = TestContext::with_fixtures();
    t.write("p.yaml", PIPELINE);
    let Some(fs) = Tmpfs::mount(&t.path("ro"), 64 * 1024, "a_read_only_cache_is_a_clear_error") else { return };
    t.cache = fs.0.join("cache");
    t.run("p.yaml", &["--target", "fix"]).success();
    fs.remount("ro");
    let r = t.run("p.yaml", &[]);
    assert_ne!(r.code, Some(0), "{r:?}");
    let failed = r.events_of("node_failed");
    assert!(!failed.is_empty(), "{r:?}");
    for f in failed {
        let error = f["error"].as_str().unwrap();
        assert!(error.contains("Read-only file system") && error.contains(&t.cache.display().to_string()), "{error}");
    }
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    fs.remount("rw");
    let ok = t.run("p.yaml", &[]).success();
    assert_eq!(ok.ran_nodes(), names(&["base"]), "{ok:?}");
}
