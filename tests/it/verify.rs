//! `pipe verify`: re-executes cached nodes and compares output digests.

use crate::common::{TestContext, FORTUNE};

#[test]
fn verify_passes_on_deterministic_nodes() {
    let t = TestContext::with_fixtures();
    // (No train/eval split here: see `fix_json::a_split_is_byte_for_byte_reproducible`.)
    t.write("p.yaml", FORTUNE);
    t.run("p.yaml", &[]).success();
    let r = t.pipe(["verify", "p.yaml"]).success();
    assert!(r.stdout.contains("ok        fix (fix-json): 2 output(s) identical"), "{r:?}");
    assert!(r.stdout.contains("ok        tokenize (tokenize): 2 output(s) identical"), "{r:?}");
    let r = t.pipe(["verify", "p.yaml", "tokenize"]).success();
    assert!(!r.stdout.contains("ok        fix"), "only the named node is re-executed: {r:?}");
}

/// `Session::verify_node` hashes the cached object itself, not only the re-executed output against
/// the record's digest: a tampered object is a mismatch (comparing digests alone would pass it,
/// and `pipe run` would keep serving it).
#[test]
fn verify_finds_a_tampered_output_and_exits_1() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE);
    t.run("p.yaml", &[]).success();
    let stats = t.output_path("p.yaml", "tokenize", "stats", &[]);
    let mut perm = std::fs::metadata(&stats).unwrap().permissions();
    assert!(perm.readonly(), "published objects are read-only");
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&stats, perm).unwrap();
    std::fs::write(&stats, "{}").unwrap();
    let r = t.pipe(["verify", "p.yaml"]).code(1);
    assert!(r.stdout.contains("MISMATCH  tokenize (tokenize): output `stats`"), "{r:?}");
    assert!(r.stdout.contains("ok        fix"), "{r:?}");
}

#[test]
fn verify_before_any_run_says_to_run_first() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE);
    let r = t.pipe(["verify", "p.yaml"]).code(1);
    assert!(r.stdout.contains("not in the cache; run the pipeline first"), "{r:?}");
}
