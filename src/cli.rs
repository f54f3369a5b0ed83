//! Command-line interface (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  pipe run pipelines/fortune.yaml                      run everything that is not fresh
  pipe run pipelines/fortune.yaml --target tokenize    only tokenize and what it needs
  pipe run pipelines/fortune.yaml --set tokenize.max_length=256
  pipe status pipelines/fortune.yaml --why             what would run, and why
  pipe graph pipelines/fortune.yaml --format mermaid
  pipe show pipelines/fortune.yaml fix                 artifact paths and metadata
  pipe verify pipelines/fortune.yaml tokenize          re-execute and compare digests
  pipe push pipelines/fortune.yaml --remote s3://team-bucket/pipe
                                                       share results through a remote cache
  pipe serve pipelines/fortune.yaml                    chat with the exported model (Ollama and
                                                       OpenAI APIs on http://127.0.0.1:11434)
  pipe gc --dry-run                                    what gc would delete

Exit codes: 0 success (also when everything was fresh), 1 a node failed or verify found a
mismatch, 2 invalid invocation or pipeline file, 130 interrupted.";

/// Reproducible, cached YAML pipelines for fine-tuning and shipping language models.
#[derive(Debug, Parser)]
#[command(name = "pipe", version, about, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub global: GlobalArgs,
}

/// Flags every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Cache folder [default: `cache/` in the pipeline file's project root]
    #[arg(long, global = true, env = "PIPE_CACHE", value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Print less (only errors); repeat for nothing
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
    /// Log more (-v debug, -vv trace); PIPE_LOG or RUST_LOG override
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Never draw progress bars (plain lines instead)
    #[arg(long, global = true, env = "PIPE_NO_PROGRESS")]
    pub no_progress: bool,
    /// Colour in diagnostics
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto, env = "PIPE_COLOR")]
    pub color: Color,
    /// Remote cache: s3://BUCKET/PREFIX or file:///PATH [default: `remote` in pipe.toml]
    #[arg(long, global = true, env = "PIPE_REMOTE", value_name = "URL")]
    pub remote: Option<String>,
    /// What to do with the remote cache: pull only, pull and push, or fail when it fails
    #[arg(long, global = true, env = "PIPE_REMOTE_MODE", value_name = "MODE",
          value_parser = clap::builder::PossibleValuesParser::new(REMOTE_MODES))]
    pub remote_mode: Option<String>,
}

/// `--remote-mode` values (the remote module's `Mode` names; a unit test in `commands` keeps
/// them equal).
pub const REMOTE_MODES: [&str; 4] = ["off", "read", "write", "require"];

/// `--executor` values (the slurm module's `Executor` names; a unit test in `commands` keeps them
/// equal).
pub const EXECUTORS: [&str; 2] = ["local", "slurm"];

/// When to use colour.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Color {
    Auto,
    Always,
    Never,
}

/// Graph output formats.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum GraphFormat {
    Dot,
    Mermaid,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline: every selected node that is not fresh in the cache
    Run(RunArgs),
    /// Show which nodes are fresh and which would run (a dry run)
    Status(StatusArgs),
    /// Print the pipeline's DAG
    Graph(GraphArgs),
    /// Show a node's key, artifacts and metadata
    Show(ShowArgs),
    /// Re-execute cached nodes, ignoring the cache, and compare output digests
    Verify(VerifyArgs),
    /// Upload cached nodes to the remote cache (those it lacks)
    Push(PushArgs),
    /// Serve export-gguf models over the Ollama and OpenAI APIs (brings them up to date first)
    Serve(ServeArgs),
    /// Delete cache entries that no pipeline's latest run references
    Gc(GcArgs),
    /// Rehash every cached object and check every record; `--repair` moves damaged ones aside
    Fsck(FsckArgs),
    /// List node kinds with their inputs, parameters and outputs
    Kinds(KindsArgs),
    /// Run one node by its key against the cache (what a Slurm job runs; internal)
    #[command(hide = true)]
    ExecNode(ExecNodeArgs),
    /// Print shell completions
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
}

/// `pipe run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline file
    pub file: PathBuf,
    /// Run only these nodes and what they need (repeatable)
    #[arg(long, value_name = "NODE")]
    pub target: Vec<String>,
    /// Rerun these nodes even if they are fresh (repeatable)
    #[arg(long, value_name = "NODE")]
    pub force: Vec<String>,
    /// Override a parameter: NODE.PARAM=VALUE (repeatable, type-checked)
    #[arg(long = "set", value_name = "NODE.PARAM=VALUE")]
    pub set: Vec<String>,
    /// After a failure, keep running nodes that do not depend on it
    #[arg(long)]
    pub keep_going: bool,
    /// Print one JSON event per line on stdout
    #[arg(long)]
    pub json: bool,
    /// CPU nodes to run at once [default: number of CPUs]
    #[arg(short, long)]
    pub jobs: Option<usize>,
    /// CUDA devices GPU nodes may use, e.g. 0,1 [default: all visible ones]
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    pub gpus: Option<Vec<usize>>,
    /// Where nodes that set no `executor:` run: here, or as Slurm jobs (sbatch)
    #[arg(long, value_name = "EXECUTOR", env = "PIPE_EXECUTOR",
          value_parser = clap::builder::PossibleValuesParser::new(EXECUTORS))]
    pub executor: Option<String>,
}

/// `pipe exec-node` (hidden): what a Slurm job runs.
#[derive(Debug, Args)]
pub struct ExecNodeArgs {
    /// The pipeline file
    pub file: PathBuf,
    /// The node to run
    pub node: String,
    /// The key the orchestrator computed; the node does not run under another
    #[arg(long)]
    pub key: String,
    /// The token of the lock lease the orchestrator holds on the key (adopted, not taken)
    #[arg(long)]
    pub lease: Option<String>,
    /// An upstream node's key: NODE=KEY (repeatable)
    #[arg(long = "upstream", value_name = "NODE=KEY")]
    pub upstream: Vec<String>,
    /// Override a parameter as `run` did
    #[arg(long = "set", value_name = "NODE.PARAM=VALUE")]
    pub set: Vec<String>,
    /// Run it even when the cache has it (the run's `--force`)
    #[arg(long)]
    pub force: bool,
    /// The run's `--executor`
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(EXECUTORS))]
    pub executor: Option<String>,
    /// Print one JSON event per line on stdout
    #[arg(long)]
    pub json: bool,
}

/// `pipe status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The pipeline file
    pub file: PathBuf,
    /// Explain every node that would run: which input, parameter or version changed
    #[arg(long)]
    pub why: bool,
    /// Only these nodes and what they need
    #[arg(long, value_name = "NODE")]
    pub target: Vec<String>,
    /// Override a parameter as `run` would
    #[arg(long = "set", value_name = "NODE.PARAM=VALUE")]
    pub set: Vec<String>,
    /// Print JSON on stdout
    #[arg(long)]
    pub json: bool,
    /// The executor `run` would use for nodes that set none (it decides what `device: auto` is)
    #[arg(long, value_name = "EXECUTOR", env = "PIPE_EXECUTOR", value_parser = clap::builder::PossibleValuesParser::new(EXECUTORS))]
    pub executor: Option<String>,
}

/// `pipe graph`.
#[derive(Debug, Args)]
pub struct GraphArgs {
    /// The pipeline file
    pub file: PathBuf,
    /// Output format
    #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
    pub format: GraphFormat,
}

/// `pipe show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The pipeline file
    pub file: PathBuf,
    /// The node
    pub node: String,
    /// Override a parameter as `run` would
    #[arg(long = "set", value_name = "NODE.PARAM=VALUE")]
    pub set: Vec<String>,
    /// Print JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// `pipe verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The pipeline file
    pub file: PathBuf,
    /// Nodes to verify [default: all]
    pub nodes: Vec<String>,
    /// Override a parameter as `run` would
    #[arg(long = "set", value_name = "NODE.PARAM=VALUE")]
    pub set: Vec<String>,
}

/// `pipe push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The pipeline file
    pub file: PathBuf,
    /// Nodes to push [default: every node that is fresh in the local cache]
    pub nodes: Vec<String>,
    /// Override a parameter as `run` would
    #[arg(long = "set", value_name = "NODE.PARAM=VALUE")]
    pub set: Vec<String>,
}

/// `pipe serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The pipeline file
    pub file: PathBuf,
    /// export-gguf nodes to serve [default: every export-gguf node of the file]
    pub nodes: Vec<String>,
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (Ollama's, so Ollama clients find it unconfigured); 0 picks a free one
    #[arg(long, default_value_t = 11434)]
    pub port: u16,
    /// Override a parameter as `run` would
    #[arg(long = "set", value_name = "NODE.PARAM=VALUE")]
    pub set: Vec<String>,
    /// Context size in tokens per model, shared by its parallel requests [default: the model's]
    #[arg(long, value_name = "TOKENS")]
    pub ctx_size: Option<u32>,
    /// Requests each model decodes at once; more wait in its queue
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub parallel: u32,
    /// CPU threads per model [default: llama-server's choice]
    #[arg(long)]
    pub threads: Option<u32>,
    /// Print one JSON event per line on stdout (the run's, then `serving` with the URL)
    #[arg(long)]
    pub json: bool,
}

/// `pipe gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// List what would be deleted, delete nothing
    #[arg(long)]
    pub dry_run: bool,
    /// A pipeline file whose project's cache to clean [default: ./cache]
    pub file: Option<PathBuf>,
}

/// `pipe fsck`.
#[derive(Debug, Args)]
pub struct FsckArgs {
    /// Move damaged objects and records aside (into the cache's tmp/) so the next run recomputes them
    #[arg(long)]
    pub repair: bool,
    /// A pipeline file whose project's cache to check [default: ./cache]
    pub file: Option<PathBuf>,
}

/// `pipe kinds`.
#[derive(Debug, Args)]
pub struct KindsArgs {
    /// One kind [default: all]
    pub kind: Option<String>,
    /// Markdown (as in the README)
    #[arg(long)]
    pub markdown: bool,
}
