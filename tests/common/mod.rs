//! Multi-process test clusters: real `blockd` processes on loopback addresses, configured from
//! generated TOML files, killed and restarted like real nodes.
//!
//! Each test picks its own `net` (the third octet of 127.0.<net>.<node>) so tests running in
//! parallel never share an address; every node uses the default ports on its own address.
//! Everything a cluster writes lives in a temporary directory removed at the end.

#![allow(dead_code)] // Each test file uses a different part of the harness.

pub mod netns;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use basalt::config::{NodeConfig, TokenConfig};
use basalt::meta::{NodeRole, TokenRole};

/// The admin token every test cluster accepts.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// The read-only token every test cluster accepts.
pub const READ_ONLY_TOKEN: &str = "test-read-only-token-0123456789";

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
        // Cargo gives the test the variables it gives a crate's build (CARGO_MANIFEST_DIR,
        // CARGO_PKG_NAME, ...). Build scripts that watch them (ring's) would see them change
        // and rebuild in this build and again in the next `cargo test`.
        for (key, _) in std::env::vars_os() {
            let Some(key) = key.to_str() else { continue };
            let crate_var = ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_BIN_"]
                .iter()
                .any(|prefix| key.starts_with(prefix))
                || matches!(
                    key,
                    "CARGO_CRATE_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "CARGO_RUSTC_CURRENT_DIR"
                        | "OUT_DIR"
                );
            if crate_var {
                cmd.env_remove(key);
            }
        }
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
    /// The network namespace the node runs in (`None`: the test's own).
    netns: Option<String>,
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
    /// Held while the cluster owns its net (see [`lock_net`]).
    _net_lock: std::fs::File,
}

/// Takes the net's lock file, so two test clusters (say, two test runs started at once) never
/// share addresses: their nodes would answer each other's peer traffic. Panics if another
/// cluster holds it.
fn lock_net(net: u8) -> std::fs::File {
    let path = std::env::temp_dir().join(format!("basalt-test-net-{net}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    if let Err(e) = file.try_lock() {
        panic!(
            "net {net} is in use by another test cluster ({}: {e}); run one test run at a \
             time or pick another net (BASALT_SOAK_NET for soaks)",
            path.display()
        );
    }
    file
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
    /// Per-node addresses (index `n - 1`); a node without one uses 127.0.`net`.`n`.
    pub addresses: Vec<IpAddr>,
    /// Per-node network namespaces to run in (index `n - 1`); a node without one runs in the
    /// test's own namespace.
    pub netns: Vec<String>,
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
            addresses: Vec::new(),
            netns: Vec::new(),
        }
    }
}

impl ClusterSpec {
    /// Node `n`'s address: its entry in `addresses`, else 127.0.`net`.`n`.
    pub fn address(&self, n: u8) -> IpAddr {
        self.addresses
            .get(usize::from(n) - 1)
            .copied()
            .unwrap_or_else(|| ip(self.net, n))
    }
}

impl TestCluster {
    /// Writes configs and starts every node; node 1 bootstraps, the others join through it.
    pub fn start(spec: &ClusterSpec) -> TestCluster {
        let mut cluster = TestCluster::configure(spec);
        for n in 1..=cluster.len() {
            cluster.start_node(n);
        }
        cluster
    }

    /// Writes every node's configuration without starting any node.
    pub fn configure(spec: &ClusterSpec) -> TestCluster {
        let dir = tempfile::Builder::new()
            .prefix("basalt-cluster-")
            .tempdir_in(std::env::var_os("BASALT_TEST_DIR").unwrap_or_else(|| "/var/tmp".into()))
            .expect("temp dir");
        let net_lock = lock_net(spec.net);
        // A secret of its own per cluster: a node of another cluster fails the handshake.
        let secret = format!(
            "test-cluster-secret-0123456789-{}",
            dir.path()
                .file_name()
                .map_or_else(String::new, |name| name.to_string_lossy().into_owned())
        );
        let total = spec.voters + spec.followers;
        let first_peer = SocketAddr::new(spec.address(1), 9641);
        let mut nodes = Vec::new();
        for n in 1..=total {
            let mut config = NodeConfig::local_cluster(n, dir.path(), &secret);
            let addr = spec.address(n);
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
            // Sweep often, so every cluster test also checks that dropping copies no PG needs
            // never drops one that is needed.
            config.recovery.sweep_interval = Duration::from_secs(2);
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
                netns: spec.netns.get(usize::from(n) - 1).cloned(),
            });
        }
        TestCluster {
            net: spec.net,
            dir,
            nodes,
            _net_lock: net_lock,
        }
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
        let blockd = workspace_bin("blockd");
        let mut command = match &node.netns {
            // `ip netns exec` execs blockd in place: the child's pid is the node's.
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(blockd);
                command
            }
            None => Command::new(blockd),
        };
        let child = command
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

    /// Stops node `n` cleanly (SIGTERM, bounded wait, then SIGKILL). Returns the exit status
    /// if the node exited by itself (None if it was not running or had to be killed).
    pub fn stop(&mut self, n: u8) -> Option<ExitStatus> {
        let node = &mut self.nodes[usize::from(n) - 1];
        let mut child = node.child.take()?;
        let pid = child.id();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The API base URL of node `n`.
    pub fn api_url(&self, n: u8) -> String {
        format!(
            "http://{}",
            self.nodes[usize::from(n) - 1].config.api.listen
        )
    }

    /// The NBD address of node `n`.
    pub fn nbd_addr(&self, n: u8) -> SocketAddr {
        self.nodes[usize::from(n) - 1].config.nbd.listen
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
        // A failed test's node logs survive its temporary directory when asked to.
        if std::thread::panicking()
            && let Some(keep) = std::env::var_os("BASALT_KEEP_LOGS")
        {
            let keep = PathBuf::from(keep);
            let _ = std::fs::create_dir_all(&keep);
            for node in &self.nodes {
                let name = format!("net{}-node{}.log", self.net, node.n);
                let _ = std::fs::copy(&node.log_path, keep.join(name));
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

/// A reply from a node's HTTP API: status, headers and the body (as JSON when it parses).
#[derive(Debug)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body parsed as JSON (`Value::Null` when it is not JSON).
    pub json: serde_json::Value,
    /// The raw body.
    pub text: String,
}

impl Reply {
    /// The problem document's `type` (empty when the body is not a problem).
    pub fn problem_type(&self) -> &str {
        self.json["type"].as_str().unwrap_or("")
    }
}

/// A blocking HTTP client (reqwest on its own single-threaded runtime) for synchronous tests.
/// Connections are not pooled, so a request never reuses a connection to a killed node.
pub struct Http {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    /// A client whose calls time out after 15 s.
    pub fn new() -> Http {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let client = runtime.block_on(async {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .connect_timeout(Duration::from_secs(2))
                .pool_max_idle_per_host(0)
                .build()
                .expect("HTTP client")
        });
        Http { runtime, client }
    }

    /// Sends a request; `Err` when the node could not be reached or the call timed out.
    pub fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Reply, String> {
        let mut request = self.client.request(method, url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        self.runtime.block_on(async move {
            let response = request.send().await.map_err(|e| format!("{url}: {e}"))?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let text = response.text().await.map_err(|e| format!("{url}: {e}"))?;
            let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
            Ok(Reply {
                status,
                headers,
                json,
                text,
            })
        })
    }

    /// `GET url` with `token`.
    pub fn get(&self, url: &str, token: Option<&str>) -> Result<Reply, String> {
        self.send(reqwest::Method::GET, url, token, &[], None)
    }

    /// `POST url` with a JSON body, `token` and extra headers.
    pub fn post_json(
        &self,
        url: &str,
        token: Option<&str>,
        body: &serde_json::Value,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.send(
            reqwest::Method::POST,
            url,
            token,
            &all,
            Some(body.to_string().into_bytes()),
        )
    }
}

impl TestCluster {
    /// Number of nodes (voters and followers).
    pub fn len(&self) -> u8 {
        u8::try_from(self.nodes.len()).expect("at most 254 nodes")
    }

    /// Whether the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node numbers of the running nodes.
    pub fn running(&self) -> Vec<u8> {
        self.nodes
            .iter()
            .filter(|node| node.is_running())
            .map(|node| node.n)
            .collect()
    }

    /// `GET path` on node `n` with the admin token.
    pub fn get(&self, http: &Http, n: u8, path: &str) -> Result<Reply, String> {
        http.get(&format!("{}{path}", self.api_url(n)), Some(ADMIN_TOKEN))
    }

    /// `POST path` with a JSON body on node `n` with the admin token.
    pub fn post(
        &self,
        http: &Http,
        n: u8,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Reply, String> {
        http.post_json(
            &format!("{}{path}", self.api_url(n)),
            Some(ADMIN_TOKEN),
            body,
            &[],
        )
    }

    /// Node `n`'s `GET /v1/cluster` body, if it answers 200.
    pub fn status(&self, http: &Http, n: u8) -> Option<serde_json::Value> {
        let reply = self.get(http, n, "/v1/cluster").ok()?;
        (reply.status == 200).then_some(reply.json)
    }

    /// Node `n`'s view of node `id`'s state (`up`, `down`, `out`), if it answers.
    pub fn node_state(&self, http: &Http, n: u8, id: u8) -> Option<String> {
        let reply = self.get(http, n, &format!("/v1/nodes/{id}")).ok()?;
        (reply.status == 200)
            .then(|| reply.json["state"].as_str().map(str::to_owned))
            .flatten()
    }

    /// Names of the volumes node `n` lists.
    pub fn volume_names(&self, http: &Http, n: u8) -> Option<Vec<String>> {
        let reply = self.get(http, n, "/v1/volumes").ok()?;
        if reply.status != 200 {
            return None;
        }
        reply.json["volumes"].as_array().map(|volumes| {
            volumes
                .iter()
                .filter_map(|v| v["name"].as_str().map(str::to_owned))
                .collect()
        })
    }

    /// The Raft leader's node number: a running node whose own Raft role is `leader` and
    /// whom every other running node names as leader.
    pub fn leader(&self, http: &Http) -> Option<u8> {
        let running = self.running();
        let statuses: Vec<(u8, serde_json::Value)> = running
            .iter()
            .filter_map(|&n| self.status(http, n).map(|s| (n, s)))
            .collect();
        if statuses.len() != running.len() {
            return None;
        }
        let (leader, _) = statuses
            .iter()
            .find(|(_, s)| s["raft"]["role"] == "leader")?;
        let agreed = statuses
            .iter()
            .all(|(_, s)| s["leader"].as_u64() == Some(u64::from(*leader)));
        agreed.then_some(*leader)
    }

    /// Waits until every running node answers, agrees on one leader, the cluster is
    /// initialised and `up` nodes are up with none down; returns the leader.
    pub fn wait_formed(&self, http: &Http, up: u32, bound: Duration) -> Option<u8> {
        wait_for(bound, || {
            let leader = self.leader(http)?;
            let ok = self.running().iter().all(|&n| {
                self.status(http, n).is_some_and(|s| {
                    // Health ok: every PG has peered once (a fresh cluster's PGs all peer).
                    s["cluster_id"].is_string()
                        && s["nodes"]["up"].as_u64() == Some(u64::from(up))
                        && s["nodes"]["down"].as_u64() == Some(0)
                        && s["health"] == "ok"
                })
            });
            ok.then_some(leader)
        })
    }
}

/// Seconds of a fault test's soak mode (`BASALT_SOAK_SECS`), 0 for the bounded CI run.
pub fn soak_secs() -> u64 {
    std::env::var("BASALT_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The soak duration of a soak-only test, or `None` (after saying so) in the bounded run.
pub fn soak_only() -> Option<u64> {
    let secs = soak_secs();
    if secs == 0 {
        eprintln!("soak mode only (BASALT_SOAK_SECS)");
    }
    (secs > 0).then_some(secs)
}

/// Random numbers for a fault schedule (`next(bound)` in `0..bound`): xorshift seeded from the
/// clock, the seed printed under `what` so a failed soak can be replayed in kind.
pub fn seeded_schedule(what: &str) -> impl FnMut(u64) -> u64 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    eprintln!("{what} seed {seed}");
    let mut rng = seed | 1;
    move |bound: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % bound
    }
}
