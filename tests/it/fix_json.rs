//! `fix-json` on a corpus of damaged files (`tests/data/malformed/`), checked through its
//! `report` and `records` outputs, and `on_error: fail`.

use std::path::Path;

use crate::common::{fixture, names, TestContext, FORTUNE};

/// What the report of one malformed file must say.
struct Expect {
    /// File name under `tests/data/malformed/`.
    file: &'static str,
    /// `instruction` of every record written, in order.
    records: &'static [&'static str],
    /// (line, reason substring) of every bad record, in order. Lines are 1-based physical lines
    /// of the line where the bad record is (where it starts).
    bad: &'static [(usize, &'static str)],
    /// (line, first_line) of every dropped duplicate.
    duplicates: &'static [(usize, usize)],
    /// (bom, crlf, bracketed).
    flags: (bool, bool, bool),
}

const GOOD_123: &[&str] = &["good 1", "good 2", "good 3"];
const NONE: (bool, bool, bool) = (false, false, false);

fn check(e: Expect) {
    let t = TestContext::new();
    t.copy(&fixture(&format!("malformed/{}", e.file)), &format!("data/{}", e.file));
    let yaml = format!("name: m\nnodes:\n  fix:\n    kind: fix-json\n    inputs: {{ records: data/{} }}\n", e.file);
    t.write("p.yaml", yaml);
    let r = t.run("p.yaml", &[]).success();
    assert_eq!(r.count("node_finished"), 1, "{r:?}");

    let report = t.output_json("p.yaml", "fix", "report", &[]);
    let ctx = format!("{}: report:\n{report:#}", e.file);
    let bad = report["bad_records"].as_array().expect("bad_records");
    let got: Vec<(u64, String)> =
        bad.iter().map(|b| (b["line"].as_u64().unwrap(), b["reason"].as_str().unwrap().to_string())).collect();
    assert_eq!(got.len(), e.bad.len(), "{ctx}");
    for ((line, reason), (want_line, want_reason)) in got.iter().zip(e.bad) {
        assert_eq!(*line, *want_line as u64, "bad record line ({reason}) in {ctx}");
        assert!(reason.contains(want_reason), "reason `{reason}` lacks `{want_reason}` in {ctx}");
    }
    for b in bad {
        assert!(b["col"].as_u64().unwrap() >= 1, "columns are 1-based: {b} in {ctx}");
        assert!(!b["excerpt"].as_str().unwrap().is_empty(), "{ctx}");
    }
    let dups: Vec<(u64, u64)> = report["duplicates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["line"].as_u64().unwrap(), d["first_line"].as_u64().unwrap()))
        .collect();
    let want_dups: Vec<(u64, u64)> = e.duplicates.iter().map(|&(a, b)| (a as u64, b as u64)).collect();
    assert_eq!(dups, want_dups, "{ctx}");
    let flags = (report["bom"].as_bool(), report["crlf"].as_bool(), report["bracketed"].as_bool());
    assert_eq!(flags, (Some(e.flags.0), Some(e.flags.1), Some(e.flags.2)), "(bom, crlf, bracketed) in {ctx}");
    assert_eq!(report["records_written"].as_u64(), Some(e.records.len() as u64), "{ctx}");
    assert_eq!(report["input"], e.file, "{ctx}");

    let records = t.output_json("p.yaml", "fix", "records", &[]);
    let got: Vec<&str> =
        records.as_array().expect("records is a JSON array").iter().map(|r| r["instruction"].as_str().unwrap()).collect();
    assert_eq!(got, e.records, "records of {}", e.file);
}

#[test]
fn a_json_array_is_accepted() {
    check(Expect { file: "array.jsonl", records: GOOD_123, bad: &[], duplicates: &[], flags: (false, false, true) });
}

#[test]
fn json_lines_are_accepted() {
    check(Expect { file: "json_lines.jsonl", records: GOOD_123, bad: &[], duplicates: &[], flags: NONE });
}

#[test]
fn objects_run_together_are_split() {
    let records = &["good 1", "good 2", "good 3", "good 4"];
    check(Expect { file: "run_together.jsonl", records, bad: &[], duplicates: &[], flags: NONE });
}

#[test]
fn trailing_commas_between_objects_are_dropped() {
    check(Expect { file: "trailing_comma.jsonl", records: GOOD_123, bad: &[], duplicates: &[], flags: NONE });
}

#[test]
fn a_byte_order_mark_is_stripped_and_reported() {
    check(Expect { file: "bom.jsonl", records: &["good 1", "good 2"], bad: &[], duplicates: &[], flags: (true, false, false) });
}

#[test]
fn crlf_line_ends_are_accepted_and_reported() {
    check(Expect { file: "crlf.jsonl", records: GOOD_123, bad: &[], duplicates: &[], flags: (false, true, false) });
}

/// A string cut by a newline is reported at its own line (serde_json's position after the newline
/// would be the next line, column 0).
#[test]
fn truncated_records_are_reported_at_their_line_and_their_neighbours_survive() {
    check(Expect {
        file: "truncated.jsonl",
        records: &["good 1", "good 3"],
        bad: &[(2, "control character"), (4, "EOF while parsing")],
        duplicates: &[],
        flags: NONE,
    });
}

/// As in `truncated_records_...`: the raw newline is on line 2, and the record is reported there
/// (not at 3:0).
#[test]
fn a_raw_newline_inside_a_string_is_a_bad_record_at_its_line() {
    check(Expect {
        file: "raw_newline.jsonl",
        records: &["good 1", "good 4"],
        bad: &[(2, "control character")],
        duplicates: &[],
        flags: NONE,
    });
}

/// As with the raw newline: the record is reported at its own line (not at 3:0).
#[test]
fn a_missing_closing_quote_costs_only_that_record() {
    check(Expect {
        file: "missing_quote.jsonl",
        records: &["good 1", "good 3"],
        bad: &[(2, "control character")],
        duplicates: &[],
        flags: NONE,
    });
}

#[test]
fn a_missing_required_field_is_reported() {
    check(Expect {
        file: "missing_field.jsonl",
        records: &["good 1", "good 3"],
        bad: &[(2, "missing field `output`")],
        duplicates: &[],
        flags: NONE,
    });
}

#[test]
fn a_field_of_the_wrong_type_is_reported_with_its_type() {
    check(Expect {
        file: "wrong_type.jsonl",
        records: &["good 1", "good 4"],
        bad: &[(2, "field `output` must be a string, found a number"), (3, "field `instruction` must be a string, found null")],
        duplicates: &[],
        flags: NONE,
    });
}

#[test]
fn a_junk_line_is_reported_and_skipped() {
    check(Expect {
        file: "junk_line.jsonl",
        records: &["good 1", "good 3"],
        bad: &[(2, "expected `{` to start a record")],
        duplicates: &[],
        flags: NONE,
    });
}

#[test]
fn a_syntax_error_inside_a_record_is_reported() {
    check(Expect {
        file: "syntax_error.jsonl",
        records: &["good 1", "good 3"],
        bad: &[(2, "expected `,` or `}`")],
        duplicates: &[],
        flags: NONE,
    });
}

#[test]
fn exact_duplicates_are_dropped_whatever_their_key_order() {
    check(Expect {
        file: "duplicates.jsonl",
        records: &["good 1", "good 2", "good 5"],
        bad: &[],
        duplicates: &[(3, 1), (4, 2)],
        flags: NONE,
    });
}

#[test]
fn every_kind_of_damage_at_once_is_repaired_and_reported() {
    check(Expect {
        file: "mixed.jsonl",
        records: &["good 1", "good 2", "good 3", "good 4", "good 5", "good 6"],
        bad: &[
            (3, "control character"),
            (5, "control character"),
            (7, "expected `{` to start a record"),
            (8, "missing field `output`"),
            (10, "field `output` must be a string"),
        ],
        duplicates: &[(9, 2)],
        flags: (true, true, false),
    });
}

/// The first bad record of fortune.jsonl is on line 41 (README of the data), and the error names
/// that line, not the next one with column 0.
#[test]
fn on_error_fail_exits_1_naming_file_line_and_column_of_the_first_bad_record_and_the_log() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE.replace("on_error: skip", "on_error: fail"));
    let r = t.run("p.yaml", &[]).code(1);
    assert_eq!(r.failed_nodes(), vec!["fix".to_string()]);
    assert_eq!(r.skipped_nodes(), vec!["tokenize".to_string()]);
    let log = r.events_of("node_failed")[0]["log"].as_str().unwrap().to_string();
    assert!(r.stderr.contains(&format!("log: {log}")), "the log path is printed: {r:?}");
    assert!(Path::new(&log).exists(), "{log}");
    assert!(std::fs::read_to_string(&log).unwrap().contains("error:"), "the log has the error");
    assert!(r.stderr.contains("4 bad records in all"), "{r:?}");
    assert!(t.node_records().is_empty(), "a failed node publishes nothing");

    let at = r.stderr.find("fortune.jsonl:").expect("file:line:col on stderr");
    let loc: Vec<&str> = r.stderr[at + "fortune.jsonl:".len()..].splitn(3, ':').take(2).collect();
    let (line, col): (usize, usize) = (loc[0].parse().unwrap(), loc[1].parse().unwrap());
    assert_eq!(line, 41, "the first bad record is on line 41: {r:?}");
    assert!(col >= 1, "columns are 1-based: {r:?}");
}

#[test]
fn on_error_fail_points_at_the_column_of_a_syntax_error() {
    let t = TestContext::new();
    t.copy(&fixture("malformed/syntax_error.jsonl"), "data/s.jsonl");
    t.write(
        "p.yaml",
        "name: m\nnodes:\n  fix:\n    kind: fix-json\n    inputs: { records: data/s.jsonl }\n    params: { on_error: fail }\n",
    );
    let r = t.run("p.yaml", &[]).code(1);
    assert!(r.stderr.contains("data/s.jsonl:2:21: expected `,` or `}`"), "{r:?}");
    assert!(r.stderr.contains("log: "), "{r:?}");
}

#[test]
fn the_tutorial_data_repairs_to_334_records_with_4_bad() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE);
    t.run("p.yaml", &["--target", "fix"]).success();
    let report = t.output_json("p.yaml", "fix", "report", &[]);
    assert_eq!(report["records_written"], 334, "{report:#}");
    assert_eq!(report["bad_records"].as_array().unwrap().len(), 4, "{report:#}");
    assert_eq!(report["duplicates"].as_array().unwrap().len(), 3, "{report:#}");
    let lines: Vec<u64> = report["bad_records"].as_array().unwrap().iter().map(|b| b["line"].as_u64().unwrap()).collect();
    // Not 42 and 117 (with column 0): serde_json's position after a newline.
    assert_eq!(lines, vec![41, 116, 204, 291], "{report:#}");
}

#[test]
fn a_seeded_split_partitions_the_records_and_depends_only_on_the_seed() {
    let t = TestContext::new();
    t.write_records("data/r.jsonl", 50);
    let yaml = "name: s\nnodes:\n  fix:\n    kind: fix-json\n    inputs: { records: data/r.jsonl }\n    params: { eval_fraction: 0.2 }\n";
    t.write("p.yaml", yaml);
    t.run("p.yaml", &[]).success();
    let instructions = |v: serde_json::Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|r| r["instruction"].as_str().unwrap().to_string()).collect()
    };
    let all = instructions(t.output_json("p.yaml", "fix", "records", &[]));
    let train = instructions(t.output_json("p.yaml", "fix", "train", &[]));
    let eval = instructions(t.output_json("p.yaml", "fix", "eval", &[]));
    assert_eq!((all.len(), train.len(), eval.len()), (50, 40, 10));
    let mut union: Vec<String> = train.iter().chain(&eval).cloned().collect();
    union.sort();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(union, sorted, "train and eval partition the records");
    let report = t.output_json("p.yaml", "fix", "report", &[]);
    assert_eq!((report["split"]["train"].as_u64(), report["split"]["eval"].as_u64()), (Some(40), Some(10)));

    // Another seed, another split; the same seed in a fresh cache, the same bytes.
    t.run("p.yaml", &["--set", "fix.seed=1"]).success();
    assert_ne!(instructions(t.output_json("p.yaml", "fix", "eval", &["--set", "fix.seed=1"])), eval);
    let u = TestContext::new();
    u.write_records("data/r.jsonl", 50);
    u.write("p.yaml", yaml);
    u.run("p.yaml", &[]).success();
    assert_eq!(instructions(u.output_json("p.yaml", "fix", "eval", &[])), eval);
}

#[test]
fn train_and_eval_outputs_exist_only_with_a_split() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE.replace("fix.records", "fix.train"));
    let r = t.run("p.yaml", &[]).code(2);
    assert!(r.stderr.contains("node `fix` has no output `train`"), "{r:?}");
    t.write(
        "p.yaml",
        FORTUNE.replace("fix.records", "fix.train").replace("on_error: skip", "on_error: skip\n      eval_fraction: 0.1"),
    );
    let r = t.run("p.yaml", &[]).success();
    assert_eq!(r.ran_nodes(), names(&["fix", "tokenize"]));
    let stats = t.output_json("p.yaml", "tokenize", "stats", &[]);
    assert_eq!(stats["records"], 301, "334 records minus a 10% eval split of 33: {stats:#}");
}

/// With `eval_fraction > 0` the report's `split` must serialise in a fixed order (a `HashMap`
/// would write `{"train":..,"eval":..}` or the reverse from run to run), so fix-json is
/// reproducible and `pipe verify` passes on pipelines/fortune.yaml.
#[test]
fn a_split_is_byte_for_byte_reproducible() {
    let t = TestContext::new();
    t.write_records("data/r.jsonl", 20);
    t.write("p.yaml", "name: s\nnodes:\n  fix:\n    kind: fix-json\n    inputs: { records: data/r.jsonl }\n    params: { eval_fraction: 0.2 }\n");
    let mut digests = std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
    for _ in 0..10 {
        let r = t.run("p.yaml", &["--force", "fix"]).success();
        let fin = &r.events_of("node_finished")[0];
        for (name, path) in fin["outputs"].as_object().unwrap() {
            digests.entry(name.clone()).or_default().insert(path.as_str().unwrap().to_string());
        }
    }
    for (name, seen) in &digests {
        assert_eq!(seen.len(), 1, "output `{name}` differs between identical runs: {seen:?}");
    }
}
