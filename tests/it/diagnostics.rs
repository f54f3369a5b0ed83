//! Invalid pipelines and invocations: located errors (insta snapshots of stderr), exit code 2,
//! and nothing runs.

use crate::common::{names, regex_escape, unwrap_diagnostics, TestContext, FORTUNE};

/// Runs `pipe run p.yaml EXTRA` on `yaml`, asserts exit 2 and that nothing ran, and returns
/// stderr with temp paths replaced by `[TMP]` and wrapped message lines joined.
fn invalid(yaml: &str, extra: &[&str]) -> (TestContext, String) {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", yaml);
    let r = t.run("p.yaml", extra).code(2);
    assert_eq!(r.count("node_started"), 0, "{r:?}");
    assert!(t.node_records().is_empty(), "an invalid pipeline left node records: {:?}", t.node_records());
    let stderr = unwrap_diagnostics(&r.stderr);
    (t, stderr)
}

/// Snapshots `stderr` with the test's temp folder filtered out.
fn snapshot(name: &str, t: &TestContext, stderr: &str) {
    let raw = t.dir().display().to_string();
    let canon = t.dir().canonicalize().unwrap().display().to_string();
    let filters = [(regex_escape(&canon), "[TMP]"), (regex_escape(&raw), "[TMP]")];
    let filters: Vec<(&str, &str)> = filters.iter().map(|(a, b)| (a.as_str(), *b)).collect();
    insta::with_settings!({ filters => filters, omit_expression => true }, {
        insta::assert_snapshot!(name, stderr);
    });
}

#[test]
fn an_unknown_top_level_key_is_located_with_did_you_mean() {
    let (t, err) = invalid(&FORTUNE.replace("nodes:", "nodse:"), &[]);
    assert!(err.contains("unknown key `nodse`") && err.contains("did you mean `nodes`?"), "{err}");
    assert!(err.contains("p.yaml:2:1"), "{err}");
    snapshot("unknown_top_level_key", &t, &err);
}

#[test]
fn an_unknown_node_kind_is_located_with_did_you_mean() {
    let yaml = "name: t\nnodes:\n  fix:\n    kind: fix-jsn\n    inputs: { records: data/fortune.jsonl }\n";
    let (t, err) = invalid(yaml, &[]);
    assert!(err.contains("unknown node kind `fix-jsn`") && err.contains("did you mean `fix-json`?"), "{err}");
    assert!(err.contains("p.yaml:4:11"), "{err}");
    snapshot("unknown_node_kind", &t, &err);
}

/// A node whose kind is unknown still counts when references are checked, so `fix.records`
/// downstream is not reported a second time as "file not found: <dir>/fix.records" (which would
/// send the user looking for a file that was never meant to exist).
#[test]
fn a_reference_to_a_node_with_an_unknown_kind_is_not_reported_as_a_missing_file() {
    let (_t, err) = invalid(&FORTUNE.replace("kind: fix-json", "kind: fix-jsn"), &[]);
    assert!(err.contains("unknown node kind `fix-jsn`"), "{err}");
    assert!(!err.contains("file not found"), "a secondary, misleading error:\n{err}");
}

#[test]
fn an_unknown_param_is_located_with_did_you_mean() {
    let (t, err) = invalid(&FORTUNE.replace("max_length: 64", "max_lenght: 64"), &[]);
    assert!(err.contains("unknown key `max_lenght`") && err.contains("did you mean `max_length`?"), "{err}");
    assert!(err.contains("p.yaml:15:7"), "{err}");
    snapshot("unknown_param", &t, &err);
}

#[test]
fn a_param_of_the_wrong_type_is_located() {
    let (t, err) = invalid(&FORTUNE.replace("max_length: 64", "max_length: lots"), &[]);
    assert!(err.contains("`max_length` must be integer"), "{err}");
    assert!(err.contains("p.yaml:15:19"), "{err}");
    snapshot("param_wrong_type", &t, &err);
}

#[test]
fn a_reference_to_a_missing_node_suggests_the_existing_one() {
    let (t, err) = invalid(&FORTUNE.replace("fix.records", "fixx.records"), &[]);
    assert!(err.contains("no node named `fixx`") && err.contains("did you mean `fix.records`?"), "{err}");
    assert!(err.contains("p.yaml:12:16"), "{err}");
    snapshot("reference_to_missing_node", &t, &err);
}

#[test]
fn a_reference_to_a_missing_output_lists_the_outputs() {
    let (t, err) = invalid(&FORTUNE.replace("fix.records", "fix.recs"), &[]);
    assert!(err.contains("node `fix` has no output `recs`"), "{err}");
    assert!(err.contains("records") && err.contains("report"), "{err}");
    snapshot("reference_to_missing_output", &t, &err);
}

#[test]
fn duplicate_node_names_are_located_at_the_second() {
    let yaml = format!("{FORTUNE}  fix:\n    kind: fix-json\n    inputs: {{ records: data/fortune.jsonl }}\n");
    let (t, err) = invalid(&yaml, &[]);
    assert!(err.contains("duplicate key `fix` in nodes (first at line 3)"), "{err}");
    assert!(err.contains("p.yaml:16:3"), "{err}");
    snapshot("duplicate_node_names", &t, &err);
}

#[test]
fn a_cycle_is_an_error_listing_the_cycle() {
    let yaml = "\
name: t
nodes:
  a:
    kind: fix-json
    inputs: { records: c.records }
  b:
    kind: fix-json
    inputs: { records: a.records }
  c:
    kind: fix-json
    inputs: { records: b.records }
  d:
    kind: fix-json
    inputs: { records: data/fortune.jsonl }
";
    let (t, err) = invalid(yaml, &[]);
    assert!(err.contains("cycle: a -> b -> c -> a"), "{err}");
    snapshot("cycle", &t, &err);
}

#[test]
fn a_missing_required_input_is_named() {
    let (t, err) = invalid(&FORTUNE.replace("      tokenizer: tok/tokenizer.json\n", ""), &[]);
    assert!(err.contains("node `tokenize` (tokenize) needs input `tokenizer`"), "{err}");
    snapshot("missing_required_input", &t, &err);
}

#[test]
fn bad_yaml_syntax_is_located() {
    let (t, err) = invalid(&FORTUNE.replace("records: data/fortune.jsonl", "records: [data/fortune.jsonl"), &[]);
    assert!(err.contains("invalid YAML"), "{err}");
    assert!(err.contains("p.yaml:"), "{err}");
    snapshot("bad_yaml_syntax", &t, &err);
}

#[test]
fn a_missing_input_file_is_located() {
    let (t, err) = invalid(&FORTUNE.replace("data/fortune.jsonl", "data/missing.jsonl"), &[]);
    assert!(err.contains("file not found") && err.contains("/data/missing.jsonl"), "{err}");
    assert!(err.contains("p.yaml:6:16"), "{err}");
    snapshot("missing_input_file", &t, &err);
}

#[test]
fn a_set_with_a_bad_value_is_an_error_before_anything_runs() {
    let (t, err) = invalid(FORTUNE, &["--set", "tokenize.max_length=lots"]);
    assert!(err.contains("--set tokenize.max_length=lots") && err.contains("must be integer"), "{err}");
    snapshot("set_bad_value", &t, &err);
}

#[test]
fn a_set_of_an_out_of_range_value_is_an_error() {
    let (_t, err) = invalid(FORTUNE, &["--set", "tokenize.max_length=1"]);
    assert!(err.contains("--set tokenize.max_length=1") && err.contains("found 1"), "{err}");
}

#[test]
fn a_set_of_an_unknown_param_suggests_the_right_one() {
    let (t, err) = invalid(FORTUNE, &["--set", "tokenize.max_lenght=5"]);
    assert!(err.contains("has no parameter `max_lenght`") && err.contains("did you mean `max_length`?"), "{err}");
    snapshot("set_unknown_param", &t, &err);
}

#[test]
fn a_set_of_an_unknown_node_or_without_equals_is_an_error() {
    let (_t, err) = invalid(FORTUNE, &["--set", "tokenizer.max_length=5"]);
    assert!(err.contains("no node named `tokenizer`") && err.contains("did you mean `tokenize`?"), "{err}");
    let (_t, err) = invalid(FORTUNE, &["--set", "tokenize"]);
    assert!(err.contains("missing `=`"), "{err}");
}

#[test]
fn every_error_in_a_file_is_reported_at_once() {
    let yaml = FORTUNE.replace("kind: fix-json", "kind: fix-jsn").replace("max_length: 64", "max_lenght: 64");
    let (_t, err) = invalid(&yaml, &[]);
    assert!(err.contains("unknown node kind `fix-jsn`") && err.contains("unknown key `max_lenght`"), "{err}");
}

#[test]
fn an_unknown_target_is_an_error_with_did_you_mean() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE);
    let r = t.run("p.yaml", &["--target", "tokenise"]).code(2);
    assert!(r.stderr.contains("no node named `tokenise`") && r.stderr.contains("did you mean `tokenize`?"), "{r:?}");
    assert_eq!(r.count("node_started"), 0);
    assert!(t.node_records().is_empty());
}

/// True (with a note) when this build sees a CUDA device, where the `device:` tests do not apply.
fn has_gpu(test: &str) -> bool {
    let gpus = pipe::device::DevicePool::discover_gpus();
    if !gpus.is_empty() {
        eprintln!("SKIPPED {test}: this build of pipe sees CUDA devices {gpus:?}");
    }
    !gpus.is_empty()
}

#[test]
fn device_cuda_without_a_gpu_is_an_error_before_anything_runs() {
    if has_gpu("device_cuda_without_a_gpu_is_an_error_before_anything_runs") {
        return;
    }
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE.replace("    kind: tokenize\n", "    kind: tokenize\n    device: cuda\n"));
    let r = t.run("p.yaml", &[]).code(2);
    assert!(r.stderr.contains("device: auto"), "{r:?}");
    assert!(r.stderr.contains("`tokenize`"), "{r:?}");
    assert_eq!(r.count("node_started"), 0, "{r:?}");
    assert!(t.node_records().is_empty(), "the upstream node ran anyway");
}

#[test]
fn device_auto_without_a_gpu_runs_on_the_cpu_with_a_warning() {
    if has_gpu("device_auto_without_a_gpu_runs_on_the_cpu_with_a_warning") {
        return;
    }
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE.replace("    kind: tokenize\n", "    kind: tokenize\n    device: auto\n"));
    let r = t.run("p.yaml", &[]).success();
    assert!(r.stderr.contains("warning:") && r.stderr.contains("device: auto"), "{r:?}");
    let started = r.events_of("node_started");
    let tok = started.iter().find(|e| e["node"] == "tokenize").expect("tokenize ran");
    assert_eq!(tok["device"], "cpu");
    assert_eq!(r.ran_nodes(), names(&["fix", "tokenize"]));
}

/// Errors about a whole mapping point at its start. yaml-rust2's MappingStart marker is the first
/// `:`, which would put "missing input" on the `:` after `records` (12:14) and "missing key
/// `nodes`" on the `:` after `name` (1:5), in the middle of a line.
#[test]
fn errors_about_a_whole_mapping_point_at_its_start_not_at_a_colon() {
    let (_t, err) = invalid(&FORTUNE.replace("      tokenizer: tok/tokenizer.json\n", ""), &[]);
    assert!(err.contains("p.yaml:12:7]") || err.contains("p.yaml:11:5]"), "expected the `inputs` mapping or key:\n{err}");
    let (_t, err) = invalid("name: t\nnodse: {}\n", &[]);
    assert!(err.contains("missing key `nodes`"), "{err}");
    assert!(err.contains("p.yaml:1:1]"), "expected the start of the file:\n{err}");
}

/// FORTUNE plus a lora-train node with `node_extra` lines (indented 4) after its kind; the model
/// file exists so only `gpus` can be wrong.
fn with_train(node_extra: &str) -> String {
    format!(
        "{FORTUNE}  train:\n    kind: lora-train\n{node_extra}    inputs: {{ model: model.gguf, dataset: tokenize.dataset }}\n"
    )
}

fn invalid_with_model(yaml: &str) -> (TestContext, String) {
    let t = TestContext::with_fixtures();
    t.write("model.gguf", "not read: the pipeline is rejected first");
    t.write("p.yaml", yaml);
    let r = t.run("p.yaml", &[]).code(2);
    assert_eq!(r.count("node_started"), 0, "{r:?}");
    assert!(t.node_records().is_empty(), "nothing may run: {:?}", t.node_records());
    (t, unwrap_diagnostics(&r.stderr))
}

/// The default (CI) build has no CUDA: `gpus: 2` names the node, the file, line and column
/// before anything runs, and says what is missing.
#[cfg(not(feature = "cuda"))]
#[test]
fn gpus_two_in_a_build_without_cuda_is_a_located_error_before_anything_runs() {
    let (_t, err) = invalid_with_model(&with_train("    gpus: 2\n"));
    assert!(err.contains("node `train` asks for 2 GPUs (`gpus: 2`)"), "{err}");
    assert!(err.contains("no CUDA device is available"), "{err}");
    assert!(err.contains("p.yaml:18:11"), "{err}");
    assert!(err.contains("--features cuda"), "{err}");
}

#[test]
fn gpus_zero_or_not_a_number_is_located() {
    let (_t, err) = invalid_with_model(&with_train("    gpus: 0\n"));
    assert!(err.contains("`gpus` must be a number of GPUs (1 or more) or `all`, found `0`"), "{err}");
    assert!(err.contains("p.yaml:18:11"), "{err}");
    let (_t, err) = invalid_with_model(&with_train("    gpus: many\n"));
    assert!(err.contains("found `many`"), "{err}");
}

#[test]
fn gpus_on_a_kind_that_runs_on_one_device_is_located() {
    let yaml = FORTUNE.replace("    kind: tokenize\n", "    kind: tokenize\n    gpus: 2\n");
    let (_t, err) = invalid(&yaml, &[]);
    assert!(err.contains("node `tokenize` (tokenize) runs on one device; it takes no `gpus`"), "{err}");
    assert!(err.contains("`gpus` is for data-parallel kinds: lora-train"), "{err}");
    assert!(err.contains("p.yaml:11:5"), "{err}");
}

#[test]
fn gpus_with_device_cpu_is_located() {
    let (_t, err) = invalid_with_model(&with_train("    device: cpu\n    gpus: all\n"));
    assert!(err.contains("node `train` has `device: cpu` and `gpus: all`"), "{err}");
    assert!(err.contains("p.yaml:19:11"), "{err}");
}
