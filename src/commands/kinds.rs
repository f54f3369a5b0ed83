//! `pipe kinds [KIND] [--markdown]`: the node reference, generated from the kinds' schemas. The
//! README's reference is this command's markdown output; an integration test
//! (`introspection::the_readme_node_reference_is_what_pipe_kinds_markdown_prints`) fails when
//! the two drift apart.

use anyhow::Result;

use super::ExitStatus;
use crate::cli::KindsArgs;
use crate::nodes::{self, NodeKind};
use crate::params::{Default, Params};

fn default_text(d: &Default) -> String {
    match d {
        Default::Required => "required".into(),
        Default::Null => "none".into(),
        other => other.value().map(|v| v.to_string()).unwrap_or_default(),
    }
}

/// The reference of one kind.
pub fn describe(k: &dyn NodeKind, markdown: bool) -> String {
    let defaults = Params(k.params().iter().filter_map(|p| p.default.value().map(|v| (p.name.to_string(), v))).collect());
    let mut s = String::new();
    if markdown {
        s += &format!("### `{}` (version {})\n\n{}\n\n", k.name(), k.version(), k.summary());
        s += "| input | required | |\n|---|---|---|\n";
        for i in k.inputs() {
            s += &format!("| `{}` | {} | {} |\n", i.name, if i.required { "yes" } else { "no" }, i.doc);
        }
        s += "\n| param | type | default | |\n|---|---|---|---|\n";
        for p in k.params() {
            s += &format!(
                "| `{}` | {} | `{}` | {} |\n",
                p.name,
                p.ty.describe().replace(" | ", ", "),
                default_text(&p.default),
                p.doc
            );
        }
        s += "\n| output | |\n|---|---|\n";
        for o in k.outputs(&defaults) {
            s += &format!("| `{}` | {} |\n", o.name, o.doc);
        }
    } else {
        s += &format!("{} (v{})\n  {}\n  inputs:\n", k.name(), k.version(), k.summary());
        for i in k.inputs() {
            s += &format!("    {:<18} {}{}\n", i.name, i.doc, if i.required { "" } else { " (optional)" });
        }
        s += "  params:\n";
        for p in k.params() {
            s += &format!("    {:<18} {} = {}: {}\n", p.name, p.ty.describe(), default_text(&p.default), p.doc);
        }
        s += "  outputs:\n";
        for o in k.outputs(&defaults) {
            s += &format!("    {:<18} {}\n", o.name, o.doc);
        }
    }
    s
}

/// Runs the command.
pub fn run(args: &KindsArgs) -> Result<ExitStatus> {
    let kinds: Vec<&dyn NodeKind> = match &args.kind {
        Some(name) => {
            vec![nodes::find(name).ok_or_else(|| anyhow::anyhow!("unknown node kind `{name}`"))?]
        }
        None => nodes::registry().to_vec(),
    };
    for k in kinds {
        println!("{}", describe(k, args.markdown));
    }
    Ok(ExitStatus::Success)
}
