//! Damaged cache entries: a truncated object and an edited record are caught on use (sizes and
//! the record's own key), reported, moved aside and computed again to the same bytes; a flipped
//! byte that keeps the size is what `pipe fsck` finds.

use std::path::PathBuf;

use crate::common::{names, TestContext};

const PIPELINE: &str = r#"name: rot
nodes:
  fix: { kind: fix-json, inputs: { records: data/fortune.jsonl }, params: { eval_fraction: 0.1 } }
  tok: { kind: tokenize, inputs: { records: fix.train, tokenizer: tok/tokenizer.json }, params: { max_length: 64 } }
"#;

fn project() -> TestContext {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", PIPELINE);
    t.run("p.yaml", &[]).success();
    t
}

fn digest(t: &TestContext, node: &str, output: &str) -> String {
    t.show("p.yaml", node, &[])["outputs"][output]["digest"].as_str().unwrap().to_string()
}

/// The object of `node`'s `output`, made writable (objects are read-only).
fn writable_object(t: &TestContext, node: &str, output: &str) -> PathBuf {
    let path = t.output_path("p.yaml", node, output, &[]);
    let mut perm = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&path, perm).unwrap();
    path
}

#[test]
fn a_truncated_object_is_reported_moved_aside_and_computed_again_to_the_same_bytes() {
    let t = project();
    let want = digest(&t, "tok", "dataset");
    let obj = writable_object(&t, "tok", "dataset");
    std::fs::OpenOptions::new().write(true).open(&obj).unwrap().set_len(100).unwrap();
    let status = t.pipe(["status", "p.yaml", "--why"]).success();
    assert!(status.stdout.contains("its cache entry was damaged") && status.stdout.contains("is 100 bytes"), "{}", status.stdout);
    let r = t.run("p.yaml", &[]).success();
    assert_eq!(r.ran_nodes(), names(&["tok"]), "{r:?}");
    assert!(r.stderr.contains("the cache entry of `tok` is damaged") && r.stderr.contains("computing it again"), "{}", r.stderr);
    let started = &r.events_of("node_started")[0];
    assert!(started["reasons"][0].as_str().unwrap().starts_with("its cache entry was damaged"), "{started}");
    assert_eq!(digest(&t, "tok", "dataset"), want);
    assert_eq!(
        std::fs::metadata(&obj).unwrap().len(),
        std::fs::metadata(t.output_path("p.yaml", "tok", "dataset", &[])).unwrap().len()
    );
    t.pipe(["verify", "p.yaml"]).success();
    let fsck = t.pipe(["fsck"]).success();
    assert!(fsck.stdout.contains("all intact"), "{}", fsck.stdout);
}

#[test]
fn an_edited_record_is_not_trusted() {
    let t = project();
    let rec = t.node_records().into_iter().find(|p| std::fs::read_to_string(p).unwrap().contains("\"tokenize\"")).unwrap();
    let text = std::fs::read_to_string(&rec).unwrap().replace("\"max_length\": 64", "\"max_length\": 65");
    assert!(text.contains("65"));
    std::fs::write(&rec, text).unwrap();
    let r = t.run("p.yaml", &[]).success();
    assert_eq!(r.ran_nodes(), names(&["tok"]), "{r:?}");
    assert!(r.stderr.contains("was edited"), "{}", r.stderr);
}

#[test]
fn a_flipped_byte_keeps_the_size_and_pipe_fsck_finds_it_and_repair_makes_the_next_run_recompute() {
    let t = project();
    let want = digest(&t, "fix", "train");
    let obj = writable_object(&t, "fix", "train");
    let mut bytes = std::fs::read(&obj).unwrap();
    bytes[10] ^= 0x20;
    std::fs::write(&obj, &bytes).unwrap();
    let found = t.pipe(["fsck"]).code(1);
    assert!(found.stdout.contains(&format!("damaged  object {want}: its bytes hash to")), "{}", found.stdout);
    assert!(found.stdout.contains("damaged  record") && found.stdout.contains("(node fix)"), "{}", found.stdout);
    assert!(found.stdout.contains("2 damaged; `pipe fsck --repair`"), "{}", found.stdout);
    let repaired = t.pipe(["fsck", "--repair"]).success();
    assert!(repaired.stdout.contains("moved aside"), "{}", repaired.stdout);
    let r = t.run("p.yaml", &[]).success();
    assert_eq!(r.ran_nodes(), names(&["fix"]), "fix again; tok's key is unchanged: {r:?}");
    assert_eq!(digest(&t, "fix", "train"), want);
    assert!(t.pipe(["fsck"]).success().stdout.contains("all intact"));
}

/// A symbolic link in an input folder that leads out of it is refused before any node reads it,
/// with the link and its target named; a link inside the folder is followed.
#[test]
fn an_input_folders_symlink_out_of_it_is_refused() {
    use std::os::unix::fs::symlink;
    let t = TestContext::with_fixtures();
    t.write("secret.txt", "a private file");
    t.write("p.yaml", PIPELINE.replace("tokenizer: tok/tokenizer.json", "tokenizer: tok"));
    symlink("tokenizer.json", t.path("tok/alias.json")).unwrap();
    t.run("p.yaml", &[]).success();
    symlink("../secret.txt", t.path("tok/notes.txt")).unwrap();
    let r = t.run("p.yaml", &[]).code(1);
    assert!(r.stderr.contains("notes.txt is a symbolic link to") && r.stderr.contains("outside the input folder"), "{r:?}");
    assert!(!r.stderr.contains("panicked"), "{r:?}");
}
