//! Fault injection: a test cluster whose nodes each run in their own network namespace, so a
//! test can partition a node, drop a share of its packets, delay them, and heal it.
//!
//! Layout (everything inside namespaces this harness creates, named `basalt-fi-<pid>-<seq>-*`
//! and deleted on drop, panics included):
//!
//! - a *switch* namespace holding a bridge `br0`;
//! - one namespace per node with `eth0` = 10.77.0.`n`/24, a veth whose other end is a port of
//!   the bridge; `blockd` runs there (`ip netns exec`) with every listener on that address;
//! - a *client* namespace with `eth0` = 10.77.0.100/24 for NBD clients and API calls
//!   ([`FaultCluster::in_client`], [`FaultCluster::client_command`]).
//!
//! Faults are nftables rules in the faulty node's namespace (`table inet basalt_fault`):
//! [`NetLab::partition`] drops every packet between the node and the other *nodes*, both
//! ways (a black hole: no reset, no unreachable), [`NetLab::drop_rate`] drops a random share
//! of them. The client is never cut off, so a test can still talk to an isolated node.
//! [`NetLab::delay`] needs `sch_netem` in the kernel (it delays the node's whole link) and
//! reports an error where the kernel lacks it. The 10.77.0.0/24 subnet exists only inside
//! these namespaces: nothing is added to the test's own namespace.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables); tests skip when [`skip_reason`] says so.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use super::{ClusterSpec, TestCluster};

/// The private subnet's first three octets.
const SUBNET: [u8; 3] = [10, 77, 0];
/// The client's host number in the subnet.
const CLIENT_HOST: u8 = 100;
/// Prefix of every namespace this harness creates.
const PREFIX: &str = "basalt-fi-";
/// The nftables table holding a node's faults.
const TABLE: &str = "basalt_fault";

/// Why a test using the harness must skip: `Some` only when not root (the tools are
/// required, see [`NetLab::create`]).
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    (!root).then(|| "network namespaces need root".to_owned())
}

/// Panics with the package to install when `ip` or `nft` is missing.
fn require_tools() {
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "`{tool}` missing: install {package} (scripts/test does)"
        );
    }
}

/// Address of node `n` (or of the client) in the private subnet.
pub fn subnet_ip(host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], host))
}

/// Runs a command that must succeed (setup and faults are not optional).
fn run(args: &[&str]) {
    let (program, rest) = args.split_first().expect("a program");
    let output = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")));
    assert!(
        output.status.success(),
        "{} failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One node's faults.
#[derive(Clone, Debug, Default)]
struct Faults {
    /// Nodes whose packets to and from this node are dropped.
    cut_from: BTreeSet<u8>,
    /// Percent of the node's packets to and from other nodes dropped at random.
    drop_pct: u8,
}

/// The namespaces, bridge and veths of one test, and the faults applied to them.
pub struct NetLab {
    prefix: String,
    /// Namespaces created so far (deleted on drop, in reverse).
    created: Vec<String>,
    nodes: u8,
    faults: Vec<Faults>,
}

impl NetLab {
    /// Creates the switch, `nodes` node namespaces and the client namespace.
    pub fn create(nodes: u8) -> NetLab {
        assert!((1..CLIENT_HOST).contains(&nodes), "{nodes} nodes");
        require_tools();
        sweep_stale();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let mut lab = NetLab {
            prefix: format!("{PREFIX}{}-{seq}-", std::process::id()),
            created: Vec::new(),
            nodes,
            faults: vec![Faults::default(); usize::from(nodes)],
        };
        let switch = lab.add_netns("sw");
        run(&["ip", "-n", &switch, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", &switch, "link", "set", "br0", "up"]);
        for n in 1..=nodes {
            let ns = lab.add_netns(&format!("n{n}"));
            lab.plug(&ns, &format!("p{n}"), n);
        }
        let client = lab.add_netns("cl");
        lab.plug(&client, "pcl", CLIENT_HOST);
        lab
    }

    fn add_netns(&mut self, suffix: &str) -> String {
        let name = format!("{}{suffix}", self.prefix);
        run(&["ip", "netns", "add", &name]);
        self.created.push(name.clone());
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// A veth from `ns` (`eth0`, 10.77.0.`host`/24) to the bridge (`port`).
    fn plug(&self, ns: &str, port: &str, host: u8) {
        let switch = self.switch();
        run(&[
            "ip", "-n", &switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
            "netns", ns,
        ]);
        run(&["ip", "-n", &switch, "link", "set", port, "master", "br0"]);
        run(&["ip", "-n", &switch, "link", "set", port, "up"]);
        let addr = format!("{}/24", subnet_ip(host));
        run(&["ip", "-n", ns, "addr", "add", &addr, "dev", "eth0"]);
        run(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
    }

    fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }

    /// Node `n`'s namespace.
    pub fn node_netns(&self, n: u8) -> String {
        assert!((1..=self.nodes).contains(&n), "node {n}");
        format!("{}n{n}", self.prefix)
    }

    /// The client's namespace.
    pub fn client_netns(&self) -> String {
        format!("{}cl", self.prefix)
    }

    /// Cuts node `n` off from every other node, both ways (the client still reaches it).
    pub fn partition(&mut self, n: u8) {
        let others: BTreeSet<u8> = (1..=self.nodes).filter(|&m| m != n).collect();
        self.faults[usize::from(n) - 1].cut_from = others;
        self.apply(n);
    }

    /// Cuts the link between nodes `a` and `b` only.
    pub fn cut(&mut self, a: u8, b: u8) {
        self.faults[usize::from(a) - 1].cut_from.insert(b);
        self.apply(a);
    }

    /// Removes every cut involving node `n` and its random drops.
    pub fn heal(&mut self, n: u8) {
        self.faults[usize::from(n) - 1] = Faults::default();
        self.apply(n);
        for m in (1..=self.nodes).filter(|&m| m != n) {
            if self.faults[usize::from(m) - 1].cut_from.remove(&n) {
                self.apply(m);
            }
        }
    }

    /// Drops `pct` percent of node `n`'s packets to and from other nodes, at random.
    pub fn drop_rate(&mut self, n: u8, pct: u8) {
        assert!(pct <= 100, "{pct}%");
        self.faults[usize::from(n) - 1].drop_pct = pct;
        self.apply(n);
    }

    /// Delays every packet node `n` sends and receives by `ms` (0 removes the delay).
    /// `Err` when the kernel has no `sch_netem`.
    pub fn delay(&mut self, n: u8, ms: u32) -> Result<(), String> {
        let ns = self.node_netns(n);
        let switch = self.switch();
        let port = format!("p{n}");
        for (netns, dev) in [(ns.as_str(), "eth0"), (switch.as_str(), port.as_str())] {
            let delay = format!("{ms}ms");
            let mut args = vec!["ip", "netns", "exec", netns, "tc", "qdisc"];
            if ms == 0 {
                args.extend(["del", "dev", dev, "root"]);
            } else {
                args.extend(["replace", "dev", dev, "root", "netem", "delay", &delay]);
            }
            let output = Command::new(args[0])
                .args(&args[1..])
                .output()
                .map_err(|e| format!("tc: {e}"))?;
            // Deleting a delay that is not there is not an error.
            if !output.status.success() && ms != 0 {
                return Err(format!(
                    "tc netem on {dev}: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
        }
        Ok(())
    }

    /// Rewrites node `n`'s nftables table from its faults.
    fn apply(&self, n: u8) {
        let faults = &self.faults[usize::from(n) - 1];
        let set = |nodes: &mut dyn Iterator<Item = u8>| {
            let addrs: Vec<String> = nodes.map(|m| subnet_ip(m).to_string()).collect();
            (!addrs.is_empty()).then(|| format!("{{ {} }}", addrs.join(", ")))
        };
        let cut = set(&mut faults.cut_from.iter().copied());
        let others = set(&mut (1..=self.nodes).filter(|&m| m != n));
        let rules = |dir: &str| {
            let mut lines = Vec::new();
            if let Some(cut) = &cut {
                lines.push(format!("ip {dir} {cut} drop"));
            }
            match (&others, faults.drop_pct) {
                (None, _) | (_, 0) => {}
                (Some(others), 100..) => lines.push(format!("ip {dir} {others} drop")),
                (Some(others), pct) => lines.push(format!(
                    "ip {dir} {others} numgen random mod 100 < {pct} drop"
                )),
            }
            lines.join("\n")
        };
        let (input, output) = (rules("saddr"), rules("daddr"));
        // Declaring the table first makes the delete succeed on the first call.
        let script = format!(
            "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n\
             chain input {{ type filter hook input priority 0; policy accept;\n{input}\n}}\n\
             chain output {{ type filter hook output priority 0; policy accept;\n{output}\n}}\n}}\n"
        );
        let ns = self.node_netns(n);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nft");
        child
            .stdin
            .take()
            .expect("nft stdin")
            .write_all(script.as_bytes())
            .expect("write nft script");
        let output = child.wait_with_output().expect("nft");
        assert!(
            output.status.success(),
            "nft in {ns} failed: {}\n{script}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs `f` on a thread inside the client namespace (sockets it opens and processes it
    /// spawns live there) and returns its result; a panic in `f` is re-raised.
    pub fn in_client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.in_netns(&self.client_netns(), f)
    }

    /// Runs `f` on a thread inside namespace `netns` (one of this lab's), like
    /// [`NetLab::in_client`].
    pub fn in_netns<T: Send>(&self, netns: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{netns}");
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: setns with a valid namespace fd; it moves only this scoped thread,
                // which ends when `f` returns.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A command that runs `program` in the client namespace.
    pub fn client_command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.client_netns()])
            .arg(program);
        command
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        // Deleting a namespace destroys its end of each veth, and with it the other end.
        for name in self.created.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Deletes namespaces left by a test process that no longer exists (killed before its
/// guards ran).
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// A [`TestCluster`] whose nodes run in a [`NetLab`]'s namespaces.
pub struct FaultCluster {
    /// The nodes (declared first: dropped, so killed, before their namespaces go).
    pub cluster: TestCluster,
    /// The namespaces and faults.
    pub lab: NetLab,
}

impl FaultCluster {
    /// Creates the namespaces for `spec`'s nodes and starts them there, each on 10.77.0.`n`
    /// (`spec.addresses` and `spec.netns` are filled in; `spec.net` only names logs).
    pub fn start(spec: &ClusterSpec) -> FaultCluster {
        let total = spec.voters + spec.followers;
        let lab = NetLab::create(total);
        let mut spec = spec.clone();
        spec.addresses = (1..=total).map(subnet_ip).collect();
        spec.netns = (1..=total).map(|n| lab.node_netns(n)).collect();
        let mut cluster = TestCluster::configure(&spec);
        for n in 1..=total {
            cluster.start_node(n);
        }
        FaultCluster { cluster, lab }
    }

    /// Cuts node `n` off from every other node (see [`NetLab::partition`]).
    pub fn partition(&mut self, n: u8) {
        self.lab.partition(n);
    }

    /// Removes node `n`'s faults.
    pub fn heal(&mut self, n: u8) {
        self.lab.heal(n);
    }

    /// Drops `pct` percent of node `n`'s traffic with other nodes.
    pub fn drop_rate(&mut self, n: u8, pct: u8) {
        self.lab.drop_rate(n, pct);
    }

    /// Delays node `n`'s packets by `ms` (needs `sch_netem`).
    pub fn delay(&mut self, n: u8, ms: u32) -> Result<(), String> {
        self.lab.delay(n, ms)
    }

    /// SIGKILLs node `n`.
    pub fn kill(&mut self, n: u8) {
        self.cluster.kill(n);
    }

    /// Kills node `n` if it runs and starts it again (in its namespace).
    pub fn restart(&mut self, n: u8) {
        self.cluster.kill(n);
        self.cluster.start_node(n);
    }

    /// Runs `f` inside the client namespace (see [`NetLab::in_client`]).
    pub fn in_client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.lab.in_client(f)
    }

    /// A command running `program` in the client namespace.
    pub fn client_command(&self, program: &str) -> Command {
        self.lab.client_command(program)
    }
}
