//! `basalt-initiator` against the kernel's real NBD driver, in a QEMU guest (issue 7's tests).
//!
//! The host has no `nbd` module, so the kernel side runs in a TCG guest built by
//! `tests/guest/build-guest.sh` (Debian cloud kernel, busybox initramfs, a statically linked
//! initiator). A 3-node cluster runs on the host's 127.0.81.1-3. The guest reaches it without
//! any non-loopback host address: its virtio-net tap lives in a network namespace this test
//! creates, where the test relays TCP from 10.81.0.1:<port> to the nodes' loopback addresses;
//! inside the guest, socat maps 127.0.81.N:{9640,10809} onto those ports, so the API's
//! endpoint addresses work unchanged. The guest runs `tests/guest/scenarios.sh` and reports on
//! its serial console; on "FAILOVER READY" the test kills the node whose NBD relay carries the
//! device's connection.
//!
//! Needs root (network namespace, tap) and the packages `scripts/test` installs;
//! `BASALT_SKIP_GUEST=1` skips it on a workstation.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, ClusterSpec, Http, TestCluster, wait_for};

/// Third octet of the cluster's addresses.
const NET: u8 = 81;
/// Bound on the whole guest run (boot, three scenarios, failover) under TCG.
const GUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound on the cluster forming and the volumes appearing.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The netns side of the tap.
const HOST_TAP_IP: &str = "10.81.0.1";

fn run_checked(command: &mut Command, what: &str) {
    let status = command.status().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(status.success(), "{what} failed: {status}");
}

/// The target directory of this test build (target/<profile>/deps/<test> → target).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

/// Builds basalt-initiator statically linked (glibc, `crt-static`) for the guest, in its own
/// target-triple directory so the host build is not disturbed.
fn static_initiator() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let triple = "x86_64-unknown-linux-gnu";
    let mut command = Command::new(cargo);
    command
        .args(["build", "--quiet", "-p", "basalt-initiator", "--bin"])
        .args(["basalt-initiator", "--target", triple])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR" {
            command.env_remove(key);
        }
    }
    run_checked(&mut command, "static build of basalt-initiator");
    let path = target_dir().join(triple).join("debug/basalt-initiator");
    assert!(path.exists(), "{} missing", path.display());
    path
}

/// A network namespace with a tap device, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create() -> Netns {
        let name = format!("basalt-it{NET}-{}", std::process::id());
        let ip = |args: &[&str]| {
            run_checked(
                Command::new("ip").args(args),
                &format!("ip {}", args.join(" ")),
            );
        };
        ip(&["netns", "add", &name]);
        let netns = Netns { name };
        let name = netns.name.as_str();
        ip(&["-n", name, "link", "set", "lo", "up"]);
        ip(&["-n", name, "tuntap", "add", "dev", "tap0", "mode", "tap"]);
        ip(&["-n", name, "addr", "add", "10.81.0.1/24", "dev", "tap0"]);
        ip(&["-n", name, "link", "set", "tap0", "up"]);
        netns
    }

    /// Binds listeners inside the namespace (a thread enters it; sockets keep their namespace
    /// after the thread ends).
    fn listen(&self, ports: Vec<u16>) -> Vec<TcpListener> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).expect("open netns");
            // SAFETY: setns on a valid namespace fd moves only this short-lived thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            ports
                .into_iter()
                .map(|port| TcpListener::bind((HOST_TAP_IP, port)).expect("bind in netns"))
                .collect()
        })
        .join()
        .expect("netns thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Relays every connection accepted on `listener` (in the namespace) to `upstream` (host
/// loopback); `active` counts relayed connections that are open.
fn relay(listener: TcpListener, upstream: SocketAddr, active: Arc<AtomicUsize>) {
    std::thread::spawn(move || {
        for down in listener.incoming() {
            let Ok(down) = down else { continue };
            let active = Arc::clone(&active);
            std::thread::spawn(move || {
                let Ok(up) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) else {
                    let _ = down.shutdown(Shutdown::Both);
                    return;
                };
                let _ = (up.set_nodelay(true), down.set_nodelay(true));
                active.fetch_add(1, Ordering::SeqCst);
                let pipe = |mut from: TcpStream, mut to: TcpStream| {
                    std::thread::spawn(move || {
                        let mut buffer = vec![0u8; 256 * 1024];
                        loop {
                            match from.read(&mut buffer) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if to.write_all(&buffer[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        // Either side gone: close both, as a dying node's peer would see.
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                    })
                };
                let a = pipe(
                    down.try_clone().expect("clone"),
                    up.try_clone().expect("clone"),
                );
                let b = pipe(up, down);
                let _ = (a.join(), b.join());
                active.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
}

/// The guest's QEMU process, killed on drop.
struct Guest {
    child: Child,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_guest(netns: &Netns, dir: &Path, scenarios: &str) -> (Guest, mpsc::Receiver<String>) {
    let append = format!("console=ttyS0 panic=-1 quiet TOKEN={ADMIN_TOKEN} SCENARIOS={scenarios}");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &netns.name, "qemu-system-x86_64"])
        .args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "768",
        ])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(dir.join("vmlinuz"))
        .arg("-initrd")
        .arg(dir.join("initramfs.cpio"))
        .args(["-append", &append])
        .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
        .args(["-device", "virtio-net-pci,netdev=n0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start qemu-system-x86_64 (scripts/test installs qemu-system-x86)");
    let stdout = child.stdout.take().expect("qemu stdout");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    (Guest { child }, receiver)
}

fn create_volume(cluster: &TestCluster, http: &Http, name: &str) {
    let body = serde_json::json!({ "name": name, "size": "128M", "replicas": 3 });
    let mut last = String::new();
    wait_for(READY_TIMEOUT, || {
        match cluster.post(http, 1, "/v1/volumes", &body) {
            Ok(reply) if reply.status == 201 || reply.status == 200 => Some(()),
            Ok(reply) => {
                last = reply.text;
                std::thread::sleep(Duration::from_millis(300));
                None
            }
            Err(error) => {
                last = error;
                std::thread::sleep(Duration::from_millis(300));
                None
            }
        }
    })
    .unwrap_or_else(|| panic!("create {name}: {last}\n{}", cluster.logs()));
}

/// Relays for every node's API and NBD port; returns each node's count of open NBD relays.
fn start_relays(netns: &Netns, cluster: &TestCluster) -> Vec<Arc<AtomicUsize>> {
    let mut ports = Vec::new();
    for n in 1..=3u16 {
        ports.extend([20000 + n * 100, 20001 + n * 100]);
    }
    let listeners = netns.listen(ports);
    let nbd_active: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::default()).collect();
    for (i, listener) in listeners.into_iter().enumerate() {
        let n = u8::try_from(i / 2 + 1).expect("node");
        if i % 2 == 0 {
            let api = SocketAddr::new(common::ip(NET, n), 9640);
            relay(listener, api, Arc::default());
        } else {
            relay(
                listener,
                cluster.nbd_addr(n),
                Arc::clone(&nbd_active[i / 2]),
            );
        }
    }
    nbd_active
}

/// Goal: attach, I/O, filesystem, detach/re-attach; clear failures on bad input; and a device
/// that survives the death of the node serving it with no I/O error. Method: one guest boot
/// runs the three scenarios; the host watches the console and kills the serving node.
#[test]
fn initiator_attaches_fails_over_and_refuses_bad_input_in_a_guest() {
    if std::env::var_os("BASALT_SKIP_GUEST").is_some() {
        eprintln!("BASALT_SKIP_GUEST set: skipping the QEMU guest test");
        return;
    }
    let binary = static_initiator();
    let guest_dir = target_dir().join("guest");
    run_checked(
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/build-guest.sh"))
            .arg(&guest_dir)
            .arg(&binary),
        "tests/guest/build-guest.sh",
    );

    let mut cluster = TestCluster::start(&ClusterSpec::new(NET, 3));
    let http = Http::new();
    cluster
        .wait_formed(&http, 3, READY_TIMEOUT)
        .unwrap_or_else(|| panic!("cluster did not form\n{}", cluster.logs()));
    create_volume(&cluster, &http, "vol1");
    create_volume(&cluster, &http, "vol2");

    let netns = Netns::create();
    let nbd_active = start_relays(&netns, &cluster);

    let scenarios = std::env::var("BASALT_GUEST_SCENARIOS")
        .unwrap_or_else(|_| "basic badinput failover".into())
        .replace(' ', ",");
    let (guest, lines) = start_guest(&netns, &guest_dir, &scenarios);
    let deadline = Instant::now() + GUEST_TIMEOUT;
    let mut transcript = Vec::new();
    let mut killed = None;
    let mut done = false;
    while Instant::now() < deadline {
        let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        eprintln!("guest: {line}");
        transcript.push(line.clone());
        if line.contains("=== FAILOVER READY") {
            // Let the write loop run into the failure, then crash the serving node.
            std::thread::sleep(Duration::from_secs(1));
            let serving = (1..=3u8)
                .find(|&n| nbd_active[usize::from(n) - 1].load(Ordering::SeqCst) > 0)
                .expect("no node carries the guest's NBD connection");
            eprintln!("host: killing node {serving}, which serves the device");
            cluster.kill(serving);
            killed = Some(serving);
        }
        if line.contains("=== FAIL ") || line.contains("=== ALL DONE") {
            done = line.contains("=== ALL DONE");
            break;
        }
    }
    drop(guest);
    let text = transcript.join("\n");
    assert!(
        done,
        "guest did not finish its scenarios\n{text}\n{}",
        cluster.logs()
    );
    for scenario in scenarios.split(',') {
        assert!(
            text.contains(&format!("=== OK {scenario}")),
            "scenario {scenario} did not pass\n{text}"
        );
    }
    if scenarios.contains("failover") {
        assert!(
            killed.is_some(),
            "the failover scenario never asked for a kill"
        );
    }
}
