//! `basalt-initiator`: attaches Basalt volumes to this host as `/dev/nbdX` through the kernel's
//! netlink NBD interface, and keeps them attached across node failures.
//!
//! Only the command surface exists so far; attach/detach/supervision arrive with the initiator
//! work (see `docs/architecture.md`).
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "basalt-initiator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach a volume as /dev/nbdX (not implemented yet).
    Attach {
        /// Volume name.
        volume: String,
    },
    /// Detach a device or volume (not implemented yet).
    Detach {
        /// Device path or volume name.
        target: String,
    },
    /// List attached devices (not implemented yet).
    List,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let what = match cli.command {
        Command::Attach { .. } => "attach",
        Command::Detach { .. } => "detach",
        Command::List => "list",
    };
    anyhow::bail!("`basalt-initiator {what}` is not implemented yet")
}
