//! `basalt up`: the quick start. Starts a 3-node loopback cluster (three `blockd` processes on
//! 127.0.0.1–3 with file-backed drives under a data directory), creates the volume `demo` if
//! it is absent, prints how to use it, and stops the nodes cleanly on Ctrl-C.
//!
//! The data directory keeps the generated configs, a cluster secret and an admin token, so a
//! second `basalt up` restarts the same cluster with its data.

/// Prints a line to stdout, ignoring a closed stdout (whoever started `basalt up` may stop
/// reading once it has the NBD URI; that must not make the shutdown fail).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use basalt::api::VolumeCreateRequest;
use basalt::api::client::{Client, ClientError};
use basalt::config::{NodeConfig, TokenConfig};
use basalt::meta::TokenRole;
use basalt::size::Size;

/// Nodes in the quick-start cluster.
const NODES: u8 = 3;
/// Size of the `demo` volume.
const DEMO_SIZE_BYTES: u64 = 1 << 30;
/// How long to wait for the cluster to form.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);
/// How long each node gets to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of `basalt up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where the nodes keep their configs, drives and metadata.
    #[arg(long, default_value = "basalt-data/up")]
    data_dir: PathBuf,
    /// Name of the volume to create (if absent) and export.
    #[arg(long, default_value = "demo")]
    volume: String,
    /// Size of each node's file-backed drive, created (preallocated) on first start; thin
    /// volumes only use what is written.
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    drive_size: u64,
}

fn parse_size(text: &str) -> Result<u64, String> {
    basalt::size::parse_size(text).map_err(|e| e.to_string())
}

/// Runs the quick-start cluster until Ctrl-C.
pub fn run(args: &UpArgs, blockd: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args
        .data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", args.data_dir.display()))?;
    let secret = persistent_secret(&data_dir.join("cluster-secret"))?;
    let token = persistent_secret(&data_dir.join("admin-token"))?;
    let mut configs = Vec::new();
    for n in 1..=NODES {
        let path = write_config(&data_dir, n, &secret, &token, args.drive_size)?;
        configs.push(path);
    }

    let mut nodes = Nodes(Vec::new());
    for (i, config) in configs.iter().enumerate() {
        let log = data_dir.join(format!("node{}.log", i + 1));
        nodes.0.push(spawn(blockd, config, &log)?);
    }
    say!(
        "basalt: started {NODES} nodes (logs in {})",
        data_dir.display()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("I/O runtime")?;
    let api = "http://127.0.0.1:9640";
    let client = Client::new(api, Some(token.clone()), Duration::from_secs(10))?;
    runtime.block_on(async {
        wait_formed(&client, &mut nodes).await?;
        ensure_volume(&client, &args.volume).await
    })?;

    print_usage(&args.volume, api, &token, &data_dir);
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })?;
    say!("\nbasalt: stopping the nodes");
    nodes.stop_all();
    Ok(())
}

/// Reads a secret kept in `path`, creating a random one on first use.
fn persistent_secret(path: &Path) -> anyhow::Result<String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let text = text.trim().to_owned();
        if !text.is_empty() {
            return Ok(text);
        }
    }
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    std::fs::write(path, format!("{secret}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(secret)
}

fn write_config(
    data_dir: &Path,
    n: u8,
    secret: &str,
    token: &str,
    drive_size: u64,
) -> anyhow::Result<PathBuf> {
    let mut config = NodeConfig::local_cluster(n, data_dir, secret);
    if let Some(drive) = config.drives.first_mut() {
        drive.size = Some(Size(drive_size));
    }
    config.security.tokens = vec![TokenConfig {
        name: "admin".into(),
        role: TokenRole::Admin,
        token: Some(token.to_owned()),
        token_file: None,
    }];
    let path = data_dir.join(format!("node{n}.toml"));
    let text = config.to_toml().context("node config")?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The node processes; killed if `basalt up` exits without stopping them.
struct Nodes(Vec<Child>);

impl Nodes {
    fn stop_all(&mut self) {
        for child in &self.0 {
            // SIGTERM: blockd finishes in-flight I/O, checkpoints its drives and exits.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for child in &mut self.0 {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        self.0.clear();
    }

    fn exited(&mut self) -> Option<usize> {
        self.0
            .iter_mut()
            .position(|child| matches!(child.try_wait(), Ok(Some(_))))
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            self.stop_all();
        }
    }
}

fn spawn(blockd: &Path, config: &Path, log: &Path) -> anyhow::Result<Child> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    Command::new(blockd)
        .arg("--config")
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", blockd.display()))
}

async fn wait_formed(client: &Client, nodes: &mut Nodes) -> anyhow::Result<()> {
    let deadline = Instant::now() + FORM_TIMEOUT;
    loop {
        if let Some(i) = nodes.exited() {
            bail!(
                "node {} exited during start-up; see node{}.log",
                i + 1,
                i + 1
            );
        }
        let last = match client.cluster_status().await {
            Ok(status) if status.leader.is_some() && status.nodes.up == u32::from(NODES) => {
                say!(
                    "basalt: cluster formed: {} nodes up, leader node {}, map epoch {}",
                    status.nodes.up,
                    status.leader.unwrap_or_default(),
                    status.epoch
                );
                return Ok(());
            }
            Ok(status) => format!("{} of {NODES} nodes up", status.nodes.up),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            bail!("the cluster did not form within {FORM_TIMEOUT:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn ensure_volume(client: &Client, name: &str) -> anyhow::Result<()> {
    match client.volume(name).await {
        Ok(volume) => {
            say!("basalt: volume {name} exists ({} bytes)", volume.size_bytes);
            return Ok(());
        }
        Err(ClientError::Problem(problem)) if problem.status == 404 => {}
        Err(e) => return Err(e).context("looking up the volume"),
    }
    let request = VolumeCreateRequest {
        name: name.to_owned(),
        size: Size(DEMO_SIZE_BYTES),
        replicas: Some(3),
    };
    let key = uuid::Uuid::new_v4().to_string();
    client
        .create_volume(&request, Some(&key))
        .await
        .context("creating the volume")?;
    say!("basalt: created volume {name} (1 GiB, 3 replicas)");
    Ok(())
}

fn print_usage(volume: &str, api: &str, token: &str, data_dir: &Path) {
    let uri = format!("nbd://127.0.0.1:10809/{volume}");
    say!();
    say!("  NBD export:  {uri}");
    say!(
        "  (every node exports it: nbd://127.0.0.2:10809/{volume}, nbd://127.0.0.3:10809/{volume})"
    );
    say!();
    say!("  Try it:");
    say!("    nbdinfo {uri}");
    say!("    qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' {uri}");
    say!(
        "    fio --name=t --ioengine=nbd --uri={uri} --rw=randwrite --bs=4k --iodepth=32 --size=64m --verify=crc32c"
    );
    say!();
    say!("  Manage it:");
    say!("    export BASALT_API={api} BASALT_TOKEN={token}");
    say!("    basalt cluster status; basalt volume list");
    say!();
    say!(
        "  Data: {}. Press Ctrl-C to stop the cluster.",
        data_dir.display()
    );
}
