//! `basalt`: the operator's command-line tool.
//!
//! Today it runs the quick-start demo by delegating to the `blockd` daemon binary; the
//! provisioning commands (volumes, nodes, cluster) arrive with the HTTP API.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "basalt", version, about = "Basalt block storage: operator CLI")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Quick start: format a file-backed drive under ./basalt-demo, run a verified
    /// write/read workload on it, reopen it and verify again (runs `blockd demo`).
    Demo {
        /// Extra arguments for `blockd demo` (see `blockd demo --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Demo { args } => run_blockd("demo", &args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("basalt: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `blockd <subcommand> <args>` and passes its exit status on.
fn run_blockd(subcommand: &str, args: &[String]) -> anyhow::Result<ExitCode> {
    let blockd = find_blockd()?;
    let status = Command::new(&blockd)
        .arg(subcommand)
        .args(args)
        .status()
        .with_context(|| format!("running {}", blockd.display()))?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `blockd` lives next to `basalt` (same install directory or cargo target directory). Under
/// `cargo run` it is (re)built first, so `cargo run --release -- demo` works on a fresh clone.
fn find_blockd() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the basalt executable")?;
    let dir = exe.parent().context("basalt executable has no directory")?;
    let blockd = dir.join("blockd");
    if let Some(cargo) = std::env::var_os("CARGO") {
        build_blockd(Path::new(&cargo), dir)?;
    }
    if !blockd.is_file() {
        bail!(
            "{} not found; build it with `cargo build --release` or install the blockd package",
            blockd.display()
        );
    }
    Ok(blockd)
}

fn build_blockd(cargo: &Path, target_dir: &Path) -> anyhow::Result<()> {
    let mut build = Command::new(cargo);
    build.args(["build", "-p", "blockd", "--bin", "blockd"]);
    if target_dir.file_name().is_some_and(|name| name == "release") {
        build.arg("--release");
    }
    let status = build.status().context("building blockd with cargo")?;
    if !status.success() {
        bail!("building blockd failed");
    }
    Ok(())
}
