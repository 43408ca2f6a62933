//! `blockd`: the Basalt storage node daemon.
//!
//! `blockd --config node.toml` (or `blockd run --config node.toml`) runs a storage node;
//! `format`, `inspect` and `demo` work on single drives.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use blockd::cli::{demo, drive};

#[derive(Parser)]
#[command(name = "blockd", version, about = "Basalt storage node daemon")]
struct Cli {
    /// Run a node with this configuration file (same as `blockd run --config FILE`).
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a storage node.
    Run(blockd::cli::run::RunArgs),
    /// Initialise a drive (block device or file) for Basalt.
    Format(drive::FormatArgs),
    /// Open a drive, recover it, and print its identity, geometry and usage.
    Inspect(drive::InspectArgs),
    /// Format a file-backed drive, run a verified write/read workload on it, reopen it and
    /// verify again.
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    blockd::cli::init_logging();
    let cli = Cli::parse();
    let result = match (cli.command, cli.config) {
        (Some(Command::Run(args)), None) => blockd::cli::run::run(&args.config),
        (None, Some(config)) => blockd::cli::run::run(&config),
        (None, None) => Err(anyhow::anyhow!(
            "nothing to do: give --config FILE to run a node, or a subcommand (see --help)"
        )),
        (Some(_), Some(_)) => Err(anyhow::anyhow!(
            "--config runs a node; it cannot be combined with a subcommand"
        )),
        (Some(command), None) => run_command(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blockd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => blockd::cli::run::run(&args.config),
        Command::Format(args) => drive::format(&args),
        Command::Inspect(args) => drive::inspect(&args),
        Command::Demo(args) => demo::run(&args),
    }
}
