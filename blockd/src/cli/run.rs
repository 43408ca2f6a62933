//! `blockd run --config FILE`: load the configuration, start the node, run until SIGINT or
//! SIGTERM, then shut down cleanly.

use std::path::{Path, PathBuf};

use anyhow::Context;
use basalt::config::NodeConfig;

use crate::node::Node;

/// Arguments of `blockd run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The node's configuration file (see docs/configuration.md).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// Reads and validates a node configuration file.
pub fn load_config(path: &Path) -> anyhow::Result<NodeConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let dir = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    NodeConfig::parse(&text, &dir).with_context(|| format!("{}", path.display()))
}

/// Runs a node until it is told to stop.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async move {
        let node = Node::start(config).await?;
        wait_for_stop_signal().await?;
        tracing::info!("stopping");
        node.shutdown().await
    })
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("SIGINT handler"),
        _ = term.recv() => Ok(()),
    }
}
