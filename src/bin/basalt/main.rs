//! `basalt`: the operator's command-line tool, a client of the HTTP provisioning API.
//!
//! `basalt [--api URL] [--token T] [--json] cluster|node|pg|volume ...` prints human tables by
//! default and the API's JSON with `--json`. Exit codes: 0 ok, 1 the server refused (a problem
//! document), 2 usage, 3 the API was unreachable. `basalt demo` runs the quick-start demo by
//! delegating to the `blockd` daemon binary. `basalt audit write|check` is the
//! acknowledged-write audit workload (`docs/audit.md`).

mod audit;
mod up;
mod watch;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, bail};
use basalt::api::client::{Client, ClientError, DEFAULT_API_URL};
use basalt::api::{
    ClusterInitRequest, ClusterStatus, NodeView, PgList, PgStatus, VolumeCreateRequest,
    VolumeResizeRequest, VolumeView,
};
use basalt::size::{Size, format_size};
use clap::{Parser, Subcommand};
use comfy_table::{Table, presets};
use serde::Serialize;

/// Exit code of a call the server refused.
const EXIT_REFUSED: u8 = 1;
/// Exit code of a usage error (clap uses it too).
const EXIT_USAGE: u8 = 2;
/// Exit code when the API could not be reached.
const EXIT_UNREACHABLE: u8 = 3;

/// How long one API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before the one retry of a create whose connection failed.
const CREATE_RETRY_DELAY: Duration = Duration::from_millis(500);

#[derive(Parser)]
#[command(name = "basalt", version, about = "Basalt block storage: operator CLI")]
struct Cli {
    /// The API of any node of the cluster.
    #[arg(long, global = true, env = "BASALT_API", default_value = DEFAULT_API_URL)]
    api: String,
    /// Bearer token (admin, or read-only for reads).
    #[arg(long, global = true, env = "BASALT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The cluster: create it, show its health.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Storage nodes.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Placement groups: their members, states and recovery.
    #[command(subcommand)]
    Pg(PgCmd),
    /// Volumes.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Quick start: start a local 3-node cluster on 127.0.0.1-3 with a volume `demo` exported
    /// over NBD; Ctrl-C stops it.
    Up(up::UpArgs),
    /// Acknowledged-write audit: logged random writes over NBD, and the check that every
    /// acknowledged one reads back (docs/audit.md).
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Single-drive demo: format a file-backed drive under ./basalt-demo, run a verified
    /// write/read workload on it, reopen it and verify again (runs `blockd demo`).
    Demo {
        /// Extra arguments for `blockd demo` (see `blockd demo --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Creates the cluster (once; repeating it with the same id changes nothing).
    Init {
        /// The cluster's id (a UUID); random when absent.
        #[arg(long)]
        cluster_id: Option<uuid::Uuid>,
        /// PGs per pool, a power of two (default 1024).
        #[arg(long)]
        pg_count: Option<u32>,
        /// Default replica count, 1..=5 (default 3).
        #[arg(long)]
        replicas: Option<u8>,
        /// Fewest replicas a PG writes with (default 2).
        #[arg(long)]
        min_size: Option<u8>,
        /// Chunk size, a power of two in 4K..=64M (default 4M).
        #[arg(long, value_parser = parse_size_arg)]
        chunk_size: Option<Size>,
    },
    /// Health, leader, map epoch, node and PG counts, recovery left.
    Status {
        /// Keep watching: redraw every interval with a recovery progress bar (one line per
        /// interval when stdout is not a terminal) until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// How often `--watch` polls (`1s`, `500ms`).
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration,
            requires = "watch")]
        interval: Duration,
    },
}

#[derive(Subcommand)]
enum PgCmd {
    /// Every PG (or those in one state) with its acting set, state and recovery left.
    List {
        /// Only PGs in this state: active, degraded, peering, recovering, backfilling or
        /// inactive.
        #[arg(long)]
        state: Option<PgStatus>,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Every node.
    List,
    /// One node.
    Show {
        /// Node id.
        id: u64,
    },
    /// Drains a node (also `drain`): its replicas are rebuilt on other nodes while it keeps
    /// serving them, and it leaves each PG once the new members are in sync. A node that is
    /// down is marked out at once.
    #[command(alias = "drain")]
    Out {
        /// Node id.
        id: u64,
    },
    /// Marks a down or drained node up again.
    Up {
        /// Node id.
        id: u64,
    },
    /// Removes a node for good: it must be out (drained and stopped, or marked out after a
    /// failure) and every PG rebuilt without it. Its id is retired.
    Remove {
        /// Node id.
        id: u64,
    },
}

#[derive(Subcommand)]
enum VolumeCmd {
    /// Creates a volume (safe to retry: the request carries an idempotency key).
    Create {
        /// Name, `[a-z0-9][a-z0-9._-]{0,62}` (also the NBD export name).
        name: String,
        /// Size: `10G`, `512M`, `1TiB` (K/M/G/T/P are powers of 1024) or bytes.
        #[arg(long, value_parser = parse_size_arg)]
        size: Size,
        /// Replica count (the cluster default when absent).
        #[arg(long)]
        replicas: Option<u8>,
    },
    /// Every volume.
    List,
    /// One volume.
    Show {
        /// Volume name.
        name: String,
    },
    /// Grows a volume.
    Resize {
        /// Volume name.
        name: String,
        /// New size (not smaller than the current one).
        #[arg(long, value_parser = parse_size_arg)]
        size: Size,
    },
    /// Deletes a volume.
    Delete {
        /// Volume name.
        name: String,
    },
}

fn parse_size_arg(text: &str) -> Result<Size, String> {
    text.parse::<Size>().map_err(|error| error.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Cli {
        api,
        token,
        json,
        command,
    } = cli;
    let output = Output { json };
    let result = match command {
        Cmd::Up(args) => {
            return match find_blockd().and_then(|blockd| up::run(&args, &blockd)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("basalt: error: {error:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Cmd::Audit(command) => return audit::run(command, json),
        Cmd::Demo { args } => {
            return match run_blockd("demo", &args) {
                Ok(code) => code,
                Err(error) => {
                    eprintln!("basalt: error: {error:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Cmd::Cluster(command) => with_client(&api, token, |client| {
            Box::pin(cluster(client, command, output))
        }),
        Cmd::Node(command) => with_client(&api, token, |client| {
            Box::pin(node(client, command, output))
        }),
        Cmd::Pg(command) => {
            with_client(&api, token, |client| Box::pin(pg(client, command, output)))
        }
        Cmd::Volume(command) => with_client(&api, token, |client| {
            Box::pin(volume(client, command, output))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => ExitCode::from(report(&error, output)),
    }
}

type CallFuture<'a> = std::pin::Pin<Box<dyn Future<Output = Result<(), ClientError>> + 'a>>;

/// Runs `call` with a client of `api` on a single-threaded runtime.
fn with_client(
    api: &str,
    token: Option<String>,
    call: impl for<'a> FnOnce(&'a Client) -> CallFuture<'a>,
) -> Result<(), ClientError> {
    let client = Client::new(api, token, CALL_TIMEOUT)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| ClientError::Unreachable {
            url: api.to_owned(),
            reason: format!("cannot start the I/O runtime: {error}"),
        })?;
    runtime.block_on(call(&client))
}

/// Prints `error` and returns the exit code for it.
fn report(error: &ClientError, output: Output) -> u8 {
    match error {
        ClientError::Problem(problem) => {
            if output.json {
                output.json_value(problem);
            }
            let detail = problem.detail.as_deref().unwrap_or(&problem.title);
            eprintln!(
                "basalt: {} ({}, HTTP {}): {detail}",
                problem.title, problem.problem_type, problem.status
            );
            EXIT_REFUSED
        }
        ClientError::Protocol { .. } => {
            eprintln!("basalt: {error}");
            EXIT_REFUSED
        }
        ClientError::InvalidUrl { .. } => {
            eprintln!("basalt: {error}");
            EXIT_USAGE
        }
        ClientError::Unreachable { .. } => {
            eprintln!("basalt: {error}");
            EXIT_UNREACHABLE
        }
    }
}

#[derive(Clone, Copy)]
struct Output {
    json: bool,
}

impl Output {
    fn json_value(self, value: &impl Serialize) {
        match serde_json::to_string_pretty(value) {
            Ok(text) => println!("{text}"),
            Err(error) => eprintln!("basalt: cannot print JSON: {error}"),
        }
    }

    /// Prints `value` as JSON, or as the table `human` builds.
    fn show<T: Serialize>(self, value: &T, human: impl FnOnce(&T) -> Table) {
        if self.json {
            self.json_value(value);
        } else {
            println!("{}", human(value));
        }
    }
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_style(presets::UTF8_FULL_CONDENSED);
    if !header.is_empty() {
        table.set_header(header.to_vec());
    }
    table
}

/// A two-column table of fields.
fn fields(rows: &[(&str, String)]) -> Table {
    let mut table = table(&[]);
    for (name, value) in rows {
        table.add_row(vec![(*name).to_owned(), value.clone()]);
    }
    table
}

async fn cluster(client: &Client, command: ClusterCmd, output: Output) -> Result<(), ClientError> {
    let status = match command {
        ClusterCmd::Status {
            watch: true,
            interval,
        } => return watch::run(client, interval, output.json).await,
        ClusterCmd::Status { watch: false, .. } => client.cluster_status().await?,
        ClusterCmd::Init {
            cluster_id,
            pg_count,
            replicas,
            min_size,
            chunk_size,
        } => {
            let request = ClusterInitRequest {
                cluster_id,
                pg_count,
                replicas,
                min_size,
                chunk_size,
            };
            client.cluster_init(&request).await?
        }
    };
    output.show(&status, cluster_table);
    Ok(())
}

fn cluster_table(status: &ClusterStatus) -> Table {
    let option = |value: Option<u64>| value.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let mut rows = vec![
        (
            "cluster",
            status
                .cluster_id
                .map_or_else(|| "(not initialized)".to_owned(), |id| id.to_string()),
        ),
        ("health", format!("{:?}", status.health).to_lowercase()),
        ("leader", option(status.leader)),
        ("map epoch", status.epoch.to_string()),
        (
            "nodes",
            format!(
                "{} up, {} down, {} out{}",
                status.nodes.up,
                status.nodes.down,
                status.nodes.out,
                watch::draining(status)
            ),
        ),
        ("pgs", watch::pg_counts(status)),
        ("volumes", status.volumes.to_string()),
    ];
    if let Some(recovery) = &status.recovery {
        rows.push((
            "recovery",
            format!(
                "{} objects ({}) left",
                recovery.remaining_objects,
                watch::human_bytes(recovery.remaining_bytes)
            ),
        ));
        if !recovery.unreachable_nodes.is_empty() {
            rows.push((
                "unreachable",
                format!(
                    "nodes {:?} did not answer: their PGs show the map's state",
                    recovery.unreachable_nodes
                ),
            ));
        }
    }
    if let Some(raft) = &status.raft {
        rows.push((
            "raft",
            format!(
                "node {} {:?}, term {}, committed {}, applied {}",
                raft.node_id,
                raft.role,
                raft.term,
                option(raft.committed_index),
                option(raft.applied_index)
            )
            .to_lowercase(),
        ));
    }
    fields(&rows)
}

async fn node(client: &Client, command: NodeCmd, output: Output) -> Result<(), ClientError> {
    let node = match command {
        NodeCmd::List => {
            let list = client.nodes().await?;
            output.show(&list, |list| {
                let mut table = table(&[
                    "ID",
                    "STATE",
                    "ROLE",
                    "ZONE",
                    "API",
                    "NBD",
                    "DRIVES",
                    "CAPACITY",
                    "HEARTBEAT",
                ]);
                for node in &list.nodes {
                    table.add_row(vec![
                        node.id.to_string(),
                        node_state(node),
                        format!("{:?}", node.role).to_lowercase(),
                        node.zone.clone().unwrap_or_else(|| "-".into()),
                        node.addresses.api.clone(),
                        node.addresses.nbd.clone().unwrap_or_else(|| "-".into()),
                        node.drives.len().to_string(),
                        format_size(capacity(node)),
                        format!("{} ms ago", node.last_heartbeat_age_ms),
                    ]);
                }
                table
            });
            return Ok(());
        }
        NodeCmd::Show { id } => client.node(id).await?,
        NodeCmd::Out { id } => client.node_out(id).await?,
        NodeCmd::Up { id } => client.node_up(id).await?,
        NodeCmd::Remove { id } => {
            client.remove_node(id).await?;
            if !output.json {
                println!("removed node {id}");
            }
            return Ok(());
        }
    };
    output.show(&node, node_table);
    Ok(())
}

async fn pg(client: &Client, command: PgCmd, output: Output) -> Result<(), ClientError> {
    let PgCmd::List { state } = command;
    let list = client.pgs_in(state).await?;
    output.show(&list, pg_table);
    if !output.json && !list.unreachable_nodes.is_empty() {
        eprintln!(
            "basalt: nodes {:?} did not answer: the PGs they lead show the map's state",
            list.unreachable_nodes
        );
    }
    Ok(())
}

fn pg_table(list: &PgList) -> Table {
    let mut table = table(&["PG", "STATE", "ACTING", "UP", "LEFT", "SINCE"]);
    let nodes = |members: &[basalt::api::PgMemberView]| {
        let ids: Vec<String> = members.iter().map(|m| m.node.to_string()).collect();
        format!("[{}]", ids.join(","))
    };
    for pg in &list.pgs {
        let left = if pg.remaining_objects == 0 {
            "-".to_owned()
        } else {
            format!(
                "{} ({})",
                pg.remaining_objects,
                watch::human_bytes(pg.remaining_bytes)
            )
        };
        table.add_row(vec![
            format!("{}.{}", pg.pool, pg.id),
            pg.state.label().to_owned(),
            nodes(&pg.acting),
            nodes(&pg.up),
            left,
            format!("e{}", pg.since_epoch),
        ]);
    }
    table
}

fn capacity(node: &NodeView) -> u64 {
    node.drives
        .iter()
        .map(|drive| drive.capacity_bytes)
        .fold(0, u64::saturating_add)
}

fn node_state(node: &NodeView) -> String {
    let state = format!("{:?}", node.state).to_lowercase();
    if node.drained {
        format!("{state} (drained)")
    } else {
        state
    }
}

fn node_table(node: &NodeView) -> Table {
    let mut rows = vec![
        ("id", node.id.to_string()),
        ("state", node_state(node)),
        ("since", node.state_since.clone()),
        ("role", format!("{:?}", node.role).to_lowercase()),
        ("zone", node.zone.clone().unwrap_or_else(|| "-".into())),
        ("peer", node.addresses.peer.clone()),
        ("api", node.addresses.api.clone()),
        (
            "nbd",
            node.addresses.nbd.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "heartbeat",
            format!("{} ms ago", node.last_heartbeat_age_ms),
        ),
    ];
    for drive in &node.drives {
        rows.push((
            "drive",
            format!("{} ({})", drive.id, format_size(drive.capacity_bytes)),
        ));
    }
    fields(&rows)
}

async fn volume(client: &Client, command: VolumeCmd, output: Output) -> Result<(), ClientError> {
    let volume = match command {
        VolumeCmd::Create {
            name,
            size,
            replicas,
        } => {
            let request = VolumeCreateRequest {
                name,
                size,
                replicas,
            };
            let key = uuid::Uuid::new_v4().to_string();
            match client.create_volume(&request, Some(&key)).await {
                Err(error) if error.is_unreachable() => {
                    eprintln!("basalt: {error}; retrying once");
                    tokio::time::sleep(CREATE_RETRY_DELAY).await;
                    client.create_volume(&request, Some(&key)).await?
                }
                result => result?,
            }
        }
        VolumeCmd::List => {
            let list = client.volumes().await?;
            output.show(&list, |list| {
                let mut table = table(&["NAME", "ID", "SIZE", "REPLICAS", "STATE", "CREATED"]);
                for volume in &list.volumes {
                    table.add_row(vec![
                        volume.name.clone(),
                        volume.id.to_string(),
                        format_size(volume.size_bytes),
                        volume.replicas.to_string(),
                        format!("{:?}", volume.state).to_lowercase(),
                        volume.created_at.clone(),
                    ]);
                }
                table
            });
            return Ok(());
        }
        VolumeCmd::Show { name } => client.volume(&name).await?,
        VolumeCmd::Resize { name, size } => {
            client
                .resize_volume(&name, &VolumeResizeRequest { size })
                .await?
        }
        VolumeCmd::Delete { name } => {
            client.delete_volume(&name).await?;
            if !output.json {
                println!("deleted volume {name}");
            }
            return Ok(());
        }
    };
    output.show(&volume, volume_table);
    Ok(())
}

fn volume_table(volume: &VolumeView) -> Table {
    fields(&[
        ("name", volume.name.clone()),
        ("id", volume.id.to_string()),
        (
            "size",
            format!(
                "{} ({} bytes)",
                format_size(volume.size_bytes),
                volume.size_bytes
            ),
        ),
        ("replicas", volume.replicas.to_string()),
        ("state", format!("{:?}", volume.state).to_lowercase()),
        ("created", volume.created_at.clone()),
    ])
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
