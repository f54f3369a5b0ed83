//! Parameter values: precedence (kind default < `defaults:` < node `params:` < `--set`) as seen
//! by `pipe show --json`, and which of them reach the key.

use crate::common::{names, TestContext, FORTUNE};

fn params_of(t: &TestContext, node: &str, extra: &[&str]) -> serde_json::Value {
    t.show("p.yaml", node, extra)["params"].clone()
}

#[test]
fn defaults_then_node_params_then_set_override_each_other_in_that_order() {
    let t = TestContext::with_fixtures();
    let yaml = FORTUNE.replace("nodes:\n", "defaults:\n  max_length: 100\n  seed: 7\nnodes:\n");
    t.write("p.yaml", &yaml);
    // the node's own `max_length: 64` beats `defaults:`; `seed` comes from `defaults:`
    assert_eq!(params_of(&t, "tokenize", &[])["max_length"], 64);
    assert_eq!(params_of(&t, "fix", &[])["seed"], 7);
    // the kind's default where nobody says anything
    assert_eq!(params_of(&t, "fix", &[])["dedupe"], true);
    assert_eq!(params_of(&t, "tokenize", &[])["format"], "seed");
    // `--set` beats everything
    assert_eq!(params_of(&t, "tokenize", &["--set", "tokenize.max_length=90"])["max_length"], 90);
    assert_eq!(params_of(&t, "fix", &["--set", "fix.seed=9"])["seed"], 9);
    // without the node's own value, `defaults:` applies
    t.write("p.yaml", yaml.replace("    params:\n      max_length: 64\n", ""));
    assert_eq!(params_of(&t, "tokenize", &[])["max_length"], 100);
}

#[test]
fn a_value_from_defaults_is_the_same_key_as_the_same_value_in_params() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE);
    t.run("p.yaml", &[]).success();
    let moved =
        FORTUNE.replace("    params:\n      max_length: 64\n", "").replace("nodes:\n", "defaults:\n  max_length: 64\nnodes:\n");
    t.write("p.yaml", moved);
    let r = t.run("p.yaml", &[]).success();
    assert_eq!(r.count("node_started"), 0, "{r:?}");
    assert_eq!(r.cached_nodes(), names(&["fix", "tokenize"]));
}

#[test]
fn an_unknown_key_in_defaults_is_an_error_with_did_you_mean() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE.replace("nodes:\n", "defaults:\n  max_lenght: 100\nnodes:\n"));
    let r = t.run("p.yaml", &[]).code(2);
    assert!(r.stderr.contains("unknown key `max_lenght` in defaults"), "{r:?}");
    assert!(r.stderr.contains("did you mean `max_length`?"), "{r:?}");
}

#[test]
fn a_set_value_is_type_checked_like_yaml_and_quoted_strings_stay_strings() {
    let t = TestContext::with_fixtures();
    t.write("p.yaml", FORTUNE);
    assert_eq!(params_of(&t, "tokenize", &["--set", "tokenize.max_length=1_000"])["max_length"], 1000);
    assert_eq!(params_of(&t, "fix", &["--set", "fix.dedupe=false"])["dedupe"], false);
    assert_eq!(params_of(&t, "tokenize", &["--set", "tokenize.system=\"42\""])["system"], "42");
    let r = t.pipe(["show", "p.yaml", "fix", "--json", "--set", "fix.dedupe=\"false\""]).code(2);
    assert!(r.stderr.contains("--set fix.dedupe=\"false\""), "{r:?}");
    let r = t.pipe(["show", "p.yaml", "fix", "--json", "--set", "fix.on_error=ignore"]).code(2);
    assert!(r.stderr.contains("`on_error` must be one of skip, fail, found `ignore`"), "{r:?}");
}
