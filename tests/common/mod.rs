//! Multi-process test clusters: real `blockd` processes on loopback addresses, configured from
//! generated TOML files, killed and restarted like real nodes.
//!
//! Each test picks its own `net` (the third octet of 127.0.<net>.<node>) so tests running in
//! parallel never share an address; every node uses the default ports on its own address.
//! Everything a cluster writes lives in a temporary directory removed at the end.

#![allow(dead_code)] // Each test file uses a different part of the harness.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use basalt::config::{NodeConfig, TokenConfig};
use basalt::meta::{NodeRole, TokenRole};

/// The admin token every test cluster accepts.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// The read-only token every test cluster accepts.
pub const READ_ONLY_TOKEN: &str = "test-read-only-token-0123456789";
/// The cluster secret of every test cluster.
pub const SECRET: &str = "test-cluster-secret-0123456789abcdef";

/// Path of a workspace binary, built (debug) on first use if `cargo test` has not built it.
pub fn workspace_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let path = profile_dir.join(name);
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build", "--quiet", "-p", "blockd", "--bin", "blockd", "-p", "basalt",
        ])
        .args(["--bin", "basalt"]);
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
    });
    assert!(path.exists(), "{} missing after build", path.display());
    path
}

/// One node process and its configuration.
pub struct NodeProc {
    /// Node number (1-based): address 127.0.<net>.<n>.
    pub n: u8,
    /// The node's configuration file.
    pub config_path: PathBuf,
    /// The node's configuration.
    pub config: NodeConfig,
    child: Option<Child>,
    log_path: PathBuf,
}

impl NodeProc {
    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A cluster of `blockd` processes.
pub struct TestCluster {
    /// Third octet of every node's address.
    pub net: u8,
    dir: tempfile::TempDir,
    /// The nodes, index `n - 1`.
    pub nodes: Vec<NodeProc>,
}

/// How a test wants its cluster shaped.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Third octet of 127.0.x.y; unique per test.
    pub net: u8,
    /// Number of voters (first nodes).
    pub voters: u8,
    /// Number of non-voting followers after them.
    pub followers: u8,
    /// Failure detection: time to mark a node down.
    pub down_after: Duration,
    /// Heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Drive size per node.
    pub drive_size_bytes: u64,
}

impl ClusterSpec {
    /// `voters` voters on 127.0.`net`.x with fast failure detection and small drives.
    pub fn new(net: u8, voters: u8) -> Self {
        ClusterSpec {
            net,
            voters,
            followers: 0,
            down_after: Duration::from_secs(3),
            heartbeat_interval: Duration::from_millis(500),
            drive_size_bytes: 256 << 20,
        }
    }
}

impl TestCluster {
    /// Writes configs and starts every node; node 1 bootstraps, the others join through it.
    pub fn start(spec: &ClusterSpec) -> TestCluster {
        let dir = tempfile::Builder::new()
            .prefix("basalt-cluster-")
            .tempdir_in(std::env::var_os("BASALT_TEST_DIR").unwrap_or_else(|| "/var/tmp".into()))
            .expect("temp dir");
        let total = spec.voters + spec.followers;
        let first_peer = SocketAddr::new(ip(spec.net, 1), 9641);
        let mut nodes = Vec::new();
        for n in 1..=total {
            let mut config = NodeConfig::local_cluster(n, dir.path(), SECRET);
            let addr = ip(spec.net, n);
            config.nbd.listen = SocketAddr::new(addr, 10809);
            config.api.listen = SocketAddr::new(addr, 9640);
            config.peer.listen = SocketAddr::new(addr, 9641);
            config.meta.join = if n == 1 {
                Vec::new()
            } else {
                vec![first_peer.to_string()]
            };
            config.meta.role = if n <= spec.voters {
                NodeRole::Voter
            } else {
                NodeRole::Follower
            };
            config.meta.down_after = spec.down_after;
            config.meta.heartbeat_interval = spec.heartbeat_interval;
            if let Some(drive) = config.drives.first_mut() {
                drive.size = Some(basalt::size::Size(spec.drive_size_bytes));
            }
            config.security.tokens = vec![
                TokenConfig {
                    name: "admin".into(),
                    role: TokenRole::Admin,
                    token: Some(ADMIN_TOKEN.into()),
                    token_file: None,
                },
                TokenConfig {
                    name: "viewer".into(),
                    role: TokenRole::ReadOnly,
                    token: Some(READ_ONLY_TOKEN.into()),
                    token_file: None,
                },
            ];
            let config_path = dir.path().join(format!("node{n}.toml"));
            let text = config.to_toml().expect("config to TOML");
            std::fs::write(&config_path, text).expect("write config");
            nodes.push(NodeProc {
                n,
                config_path,
                config,
                child: None,
                log_path: dir.path().join(format!("node{n}.log")),
            });
        }
        let mut cluster = TestCluster {
            net: spec.net,
            dir,
            nodes,
        };
        for n in 1..=total {
            cluster.start_node(n);
        }
        cluster
    }

    /// The cluster's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts node `n` (again).
    pub fn start_node(&mut self, n: u8) {
        let node = &mut self.nodes[usize::from(n) - 1];
        assert!(node.child.is_none(), "node {n} already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .expect("node log");
        let child = Command::new(workspace_bin("blockd"))
            .arg("--config")
            .arg(&node.config_path)
            .env(
                "RUST_LOG",
                std::env::var("BASALT_NODE_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn blockd");
        node.child = Some(child);
    }

    /// SIGKILLs node `n` (no shutdown, like a crash).
    pub fn kill(&mut self, n: u8) {
        let node = &mut self.nodes[usize::from(n) - 1];
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops node `n` cleanly (SIGTERM, bounded wait, then SIGKILL).
    pub fn stop(&mut self, n: u8) {
        let node = &mut self.nodes[usize::from(n) - 1];
        if let Some(mut child) = node.child.take() {
            let pid = child.id();
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The API base URL of node `n`.
    pub fn api_url(&self, n: u8) -> String {
        format!("http://{}:9640", ip(self.net, n))
    }

    /// The NBD address of node `n`.
    pub fn nbd_addr(&self, n: u8) -> SocketAddr {
        SocketAddr::new(ip(self.net, n), 10809)
    }

    /// The last lines of node `n`'s log (for assertion messages).
    pub fn log_tail(&self, n: u8, lines: usize) -> String {
        let text =
            std::fs::read_to_string(&self.nodes[usize::from(n) - 1].log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Logs of every node, for a failing test's message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("--- node {} ---\n{}", node.n, self.log_tail(node.n, 40)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// 127.0.`net`.`n`.
pub fn ip(net: u8, n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, net, n))
}

/// Polls `check` every 100 ms until it returns `Some` or `bound` passes.
pub fn wait_for<T>(bound: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
