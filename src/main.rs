//! The `pipe` binary: parse the command line, set up logging, run the command, map the result
//! to an exit code (0 ok, 1 pipeline failed, 2 invalid invocation or pipeline).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use pipe::cli::{Cli, Color, Command};
use pipe::commands::{self, ExitStatus};
use pipe::spec::validate::SpecError;

// Tokenizing and JSON handling allocate many small strings; mimalloc makes the tokenize node
// faster than the system allocator does (BENCHMARKS.md, "Performance problems found", 2).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "off",
        1 => "pipe=debug",
        _ => "pipe=trace",
    };
    let filter = std::env::var("PIPE_LOG").or_else(|_| std::env::var("RUST_LOG")).unwrap_or_else(|_| default.to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

fn render(err: &SpecError, color: Color) {
    let colored = match color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let theme = if colored { miette::GraphicalTheme::unicode() } else { miette::GraphicalTheme::unicode_nocolor() };
    let handler = miette::GraphicalReportHandler::new_themed(theme).with_width(100);
    let mut out = String::new();
    let _ = handler.render_report(&mut out, err);
    eprintln!("{out}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.global.verbose);
    let g = &cli.global;
    let result = match &cli.command {
        Command::Run(a) => commands::run::run(a, g),
        Command::Status(a) => commands::status::run(a, g),
        Command::Graph(a) => commands::graph::run(a),
        Command::Show(a) => commands::show::run(a, g),
        Command::Verify(a) => commands::verify::run(a, g),
        Command::Push(a) => commands::push::run(a, g),
        Command::Serve(a) => commands::serve::run(a, g),
        Command::Gc(a) => commands::gc::run(a, g),
        Command::Fsck(a) => commands::fsck::run(a, g),
        Command::Kinds(a) => commands::kinds::run(a),
        Command::ExecNode(a) => commands::exec_node::run(a, g),
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "pipe", &mut std::io::stdout());
            Ok(ExitStatus::Success)
        }
    };
    match result {
        Ok(status) => status.into(),
        Err(e) => {
            match e.downcast_ref::<SpecError>() {
                Some(spec) => render(spec, g.color),
                None => eprintln!("error: {e:#}"),
            }
            ExitStatus::Error.into()
        }
    }
}
