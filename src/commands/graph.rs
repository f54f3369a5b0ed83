//! `pipe graph`: the DAG as Graphviz dot or Mermaid.

use anyhow::Result;

use super::{load_pipeline, ExitStatus};
use crate::cli::{GraphArgs, GraphFormat};
use crate::spec::InputRef;

/// Runs the command.
pub fn run(args: &GraphArgs) -> Result<ExitStatus> {
    let p = load_pipeline(&args.file, &[])?;
    let g = p.graph().map_err(|_| anyhow::anyhow!("cycle"))?;
    let label = |i: usize| format!("{}\\n({})", p.nodes[i].name, p.nodes[i].kind.name());
    let id = |s: &str| s.replace('-', "_");
    match args.format {
        GraphFormat::Dot => {
            println!("digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box];", p.name);
            for &i in g.order() {
                println!("  {} [label=\"{}\"];", id(&p.nodes[i].name), label(i));
            }
            for &i in g.order() {
                for (slot, input) in &p.nodes[i].inputs {
                    match input {
                        InputRef::Node { node, output } => {
                            println!("  {} -> {} [label=\"{output} → {slot}\"];", id(node), id(&p.nodes[i].name))
                        }
                        other => {
                            println!("  \"{other}\" [shape=note];\n  \"{other}\" -> {} [label=\"{slot}\"];", id(&p.nodes[i].name))
                        }
                    }
                }
            }
            println!("}}");
        }
        GraphFormat::Mermaid => {
            println!("flowchart LR");
            for &i in g.order() {
                println!("  {}[\"{}<br/>({})\"]", id(&p.nodes[i].name), p.nodes[i].name, p.nodes[i].kind.name());
            }
            for &i in g.order() {
                for (slot, input) in &p.nodes[i].inputs {
                    match input {
                        InputRef::Node { node, output } => {
                            println!("  {} -- \"{output} → {slot}\" --> {}", id(node), id(&p.nodes[i].name))
                        }
                        other => println!(
                            "  f_{}_{}[/\"{other}\"/] -- {slot} --> {}",
                            id(&p.nodes[i].name),
                            slot,
                            id(&p.nodes[i].name)
                        ),
                    }
                }
            }
        }
    }
    Ok(ExitStatus::Success)
}
