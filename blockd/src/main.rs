//! `blockd`: the Basalt storage node daemon.
//!
//! So far it formats and inspects drives and runs a single-drive demonstration; the cluster
//! roles (metadata service, replication, NBD export) arrive as they are built.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use blockd::cli::{demo, drive};

#[derive(Parser)]
#[command(name = "blockd", version, about = "Basalt storage node daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    let result = match cli.command {
        Command::Format(args) => drive::format(&args),
        Command::Inspect(args) => drive::inspect(&args),
        Command::Demo(args) => demo::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blockd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
