//! Integration tests of the `pipe` binary: each module is one concept, each test a sentence.
//! Everything runs the real binary in a temp folder with its own cache (see `common`). No network:
//! the tokenizer is the tiny fixture in `tests/data/tiny-tokenizer` (scripts/make_test_tokenizer.py).

/// The harness: `TestContext` (temp project + cache), `Run` (exit code, stderr, `--json` events).
mod common;

/// Reruns, `--set` and YAML edits, touched and changed inputs, early cutoff: what runs again.
mod caching;

/// Conversation datasets (`schema: messages | sharegpt`, CSV input) against transformers'
/// assistant masks; `train_on`, truncation counts, located errors.
mod chat;

/// Concurrent runs on one cache, and a run killed with SIGKILL mid-node.
mod concurrency;

/// Invalid pipelines and invocations: located errors (insta snapshots), exit 2, nothing runs;
/// `device:` checks.
mod diagnostics;

/// `pipelines/fortune.yaml` end to end on the default model with a small step budget, shared
/// through a remote cache with an empty checkout and served over the Ollama and OpenAI APIs; its
/// export through the gate in three types, beside that. (Named to sort early: libtest starts
/// tests in name order, and these, the longest, should start first.)
mod end_to_end;

/// The cache on a full filesystem (ENOSPC) and on a read-only one: clear errors, nothing
/// half-published, the rerun after freeing space completes.
mod faults;

/// `fix-json` on the malformed corpus in `tests/data/malformed`, and `on_error: fail`.
mod fix_json;

/// `pipe gc` and `gc --dry-run`.
mod gc;

/// Damaged cache entries caught on use and recomputed; `pipe fsck [--repair]`.
mod integrity;

/// `pipe graph`, `pipe kinds` (and the README's node reference, its output), `pipe show`.
mod introspection;

/// Parameter precedence: kind default < `defaults:` < `params:` < `--set`.
mod params;

/// `--target`, `--keep-going`, `--force`, how failures are reported.
mod scheduling;

/// `tokenize` against the Python reference, chat-template masks, `on_empty`.
mod tokenize;

/// `pipe verify`: re-execution against cached digests, tampering.
mod verify;

/// lora-train, merge and eval on tiny random models: loss goes down, peft's adapter format,
/// SIGKILL mid-training resumes bit-identically.
mod training;

/// lora-train's `base_quant` (QLoRA): NF4, Q8_0, Q4_K bases train; merge onto the dequantized base.
mod qlora;

/// export-gguf on tiny random models: every file type through the gate, gguf-py reads it back,
/// the Modelfile, clear errors.
mod export;

/// The remote cache: push, pull only what is needed, kills, corruption, a dead remote,
/// signed records; over a shared folder and a real S3 server.
mod remote;

/// Nodes as Slurm jobs on a real one-node cluster (scripts/slurm-cluster.sh): `--executor slurm`,
/// a cancelled training job resumes, time limits and failures with Slurm's reason, two
/// orchestrators at once; bad `resources:`.
mod slurm;

/// `pipe serve` with a real llama-server: the Ollama and OpenAI APIs (and their official Python
/// clients) agree on one greedy answer, 16 streams at once, bad requests, and the lifecycle (busy
/// port, no llama.cpp, a failed export, a dead child, SIGTERM, SIGKILL leaves no orphan).
mod serve;
