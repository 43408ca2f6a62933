//! The NBD server against real clients: `nbdinfo`, `qemu-io`, `nbdcopy`, fio's nbd engine and
//! `nbdsh` (Debian packages `libnbd-bin`, `qemu-utils`, `fio`, `python3-libnbd`, installed by
//! `scripts/test`), plus raw sockets for the protocol-violation and lifecycle cases.
//!
//! Method: each test starts its own server in-process on 127.0.0.1 (ephemeral port) and on a
//! unix socket in a scratch directory, exporting [`LocalVolume`]s over a fresh store on a
//! sparse 1 GiB file, and runs the clients as child processes with a time limit. Data is
//! checked end to end: what one client (or connection, or socket kind) wrote, another reads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use basalt::ids::{ClusterId, NodeId, VolumeId};
use basalt::nbd::consts::{
    CMD_READ, CMD_WRITE, FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, IHAVEOPT, NBD_MAGIC, OPT_GO,
    OPTION_REPLY_MAGIC, REP_ACK, REP_FLAG_ERROR, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC,
};
use blockd::frontends::local::LocalVolume;
use blockd::frontends::nbd::{NbdConfig, NbdServer};
use blockd::frontends::{
    Exports, StaticExports, VolumeBackend, VolumeError, VolumeExtent, ZeroFlags,
};
use blockd::store::geometry::GeometryOptions;
use blockd::store::handle::format;
use blockd::store::{FormatOptions, OpenOptions, Store};
use bytes::Bytes;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

const MIB: u64 = 1 << 20;
const DRIVE_BYTES: u64 = 1 << 30;
/// The main export: large enough to span many 4 MiB chunks.
const VOL_BYTES: u64 = 256 * MIB;
/// The nbdcopy export, exactly the size of the file copied through it.
const COPY_BYTES: u64 = 128 * MIB;
/// Generous limit for one client run on a loaded 2-core machine (not a speed assertion).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);
/// Limit for socket steps that should be immediate.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);

struct Harness {
    dir: TempDir,
    server: NbdServer<StaticExports<LocalVolume>>,
    exports: Arc<StaticExports<LocalVolume>>,
    addr: SocketAddr,
    socket: PathBuf,
}

impl Harness {
    async fn start() -> Self {
        Self::with_config(NbdConfig::default()).await
    }

    async fn with_config(config: NbdConfig) -> Self {
        let dir = scratch();
        let store = new_store(&dir).await;
        let vol = LocalVolume::open(Arc::clone(&store), VolumeId(1), VOL_BYTES)
            .await
            .expect("open vol");
        let copy = LocalVolume::open(Arc::clone(&store), VolumeId(2), COPY_BYTES)
            .await
            .expect("open copy");
        let mut exports = StaticExports::new();
        exports.insert("vol", "test volume", Arc::new(vol));
        exports.insert("copy", "nbdcopy target", Arc::new(copy));
        let exports = Arc::new(exports);
        let (server, addr, socket) = start_server(&dir, Arc::clone(&exports), config).await;
        Self {
            dir,
            server,
            exports,
            addr,
            socket,
        }
    }

    fn tcp_uri(&self, export: &str) -> String {
        format!("nbd://{}/{export}", self.addr)
    }

    fn unix_uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn volume(&self, name: &str) -> Arc<LocalVolume> {
        self.exports.get(name).expect("export exists")
    }
}

fn scratch() -> TempDir {
    // Server logs go to the test's output (shown on failure); RUST_LOG selects the level.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    tempfile::Builder::new()
        .prefix("nbd_clients")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("scratch directory")
}

/// A fresh store on a sparse `DRIVE_BYTES` file in `dir` (not tmpfs: the store uses O_DIRECT).
async fn new_store(dir: &TempDir) -> Arc<Store> {
    let drive = dir.path().join("drive.img");
    std::fs::File::create(&drive)
        .and_then(|file| file.set_len(DRIVE_BYTES))
        .expect("create sparse drive file");
    let options = FormatOptions {
        cluster_id: ClusterId(uuid::Uuid::from_u128(0x4e42_4400_0000_0001)),
        node_id: NodeId(1),
        drive_id: None,
        geometry: GeometryOptions::default(),
        force: false,
    };
    format(&drive, &options, None).expect("format drive");
    let store = Store::open(&drive, OpenOptions::default())
        .await
        .expect("open store");
    Arc::new(store)
}

/// Serves `exports` on an ephemeral 127.0.0.1 port and on `nbd.sock` in `dir`.
async fn start_server<E: Exports>(
    dir: &TempDir,
    exports: Arc<E>,
    config: NbdConfig,
) -> (NbdServer<E>, SocketAddr, PathBuf) {
    let server = NbdServer::new(exports, config);
    let addr = server
        .listen_tcp("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("listen tcp");
    let socket = dir.path().join("nbd.sock");
    server.listen_unix(&socket).expect("listen unix");
    (server, addr, socket)
}

/// Runs a client to completion (bounded), returning its output; fails the test on a non-zero
/// exit with everything it printed.
async fn run(program: &str, args: &[&str]) -> Output {
    let output = run_unchecked(program, args).await;
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

async fn run_unchecked(program: &str, args: &[&str]) -> Output {
    let mut command = Command::new(program);
    command.args(args).kill_on_drop(true);
    if program == "nbdsh" {
        // nbdsh runs `python3 -m nbd`; the system python has the module, a pyenv shim may not.
        let path = std::env::var("PATH").unwrap_or_default();
        command.env("PATH", format!("/usr/bin:{path}"));
    }
    match tokio::time::timeout(CLIENT_TIMEOUT, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => {
            panic!("cannot run {program} (is it installed? see scripts/test): {error}")
        }
        Err(_) => panic!("{program} {args:?} did not finish within {CLIENT_TIMEOUT:?}"),
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!("client printed invalid JSON ({error}):\n{}", stdout(output))
    })
}

/// nbdinfo `--map --json` extents as (offset, length, type) with type 0 = data, 3 = hole+zero.
async fn map(uri: &str) -> Vec<(u64, u64, u64)> {
    let output = run("nbdinfo", &["--map", "--json", uri]).await;
    let extents = json(&output);
    extents
        .as_array()
        .expect("map is a JSON array")
        .iter()
        .map(|e| {
            let field = |name: &str| e[name].as_u64().expect("numeric map field");
            (field("offset"), field("length"), field("type"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_reports_size_flags_and_list() {
    // Goal: the export's size and flags (multi-conn, trim, FUA, fast zero...) reach a real
    // client over TCP and unix sockets, and OPT_LIST names both exports with descriptions.
    let h = Harness::start().await;
    for uri in [h.tcp_uri("vol"), h.unix_uri("vol")] {
        let info = json(&run("nbdinfo", &["--json", &uri]).await);
        assert_eq!(info["protocol"], "newstyle-fixed");
        assert_eq!(info["structured"], true);
        let export = &info["exports"][0];
        assert_eq!(export["export-name"], "vol");
        assert_eq!(export["export-size"], VOL_BYTES);
        for flag in [
            "can_multi_conn",
            "can_trim",
            "can_fua",
            "can_flush",
            "can_zero",
            "can_fast_zero",
            "can_df",
        ] {
            assert_eq!(export[flag], true, "{flag} in {export}");
        }
        assert_eq!(export["is_read_only"], false);
        assert_eq!(export["can_cache"], false);
        let contexts = export["contexts"].as_array().expect("contexts");
        assert!(contexts.iter().any(|c| c == "base:allocation"), "{export}");
    }
    let list = json(&run("nbdinfo", &["--list", "--json", &h.tcp_uri("")]).await);
    let exports = list["exports"].as_array().expect("exports");
    let mut names: Vec<_> = exports
        .iter()
        .map(|e| {
            (
                e["export-name"].as_str().expect("name").to_owned(),
                e["description"].as_str().unwrap_or_default().to_owned(),
                e["export-size"].as_u64().expect("size"),
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ("copy".to_owned(), "nbdcopy target".to_owned(), COPY_BYTES),
            ("vol".to_owned(), "test volume".to_owned(), VOL_BYTES),
        ]
    );
    h.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_map_shows_holes_then_data() {
    // Goal: base:allocation comes from the store's thin allocation: a fresh volume is one
    // hole, a write makes exactly its blocks data (across a chunk boundary), and a trim makes
    // them a hole again.
    let h = Harness::start().await;
    let uri = h.tcp_uri("vol");
    assert_eq!(map(&uri).await, vec![(0, VOL_BYTES, 3)]);

    // 1 MiB straddling the 8 MiB chunk boundary.
    let (offset, length) = (8 * MIB - 512 * 1024, MIB);
    let write = format!("write -P 0x5c {offset} {length}");
    run("qemu-io", &["-f", "raw", "-c", &write, &uri]).await;
    let end = offset + length;
    assert_eq!(
        map(&uri).await,
        vec![
            (0, offset, 3),
            (offset, length, 0),
            (end, VOL_BYTES - end, 3)
        ]
    );

    // qemu negotiates extended headers: the same answer as 64-bit BLOCK_STATUS_EXT extents.
    let output = run("qemu-img", &["map", "-f", "raw", "--output=json", &uri]).await;
    let data: Vec<(u64, u64)> = json(&output)
        .as_array()
        .expect("qemu-img map is a JSON array")
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| {
            let field = |name: &str| e[name].as_u64().expect("numeric map field");
            (field("start"), field("length"))
        })
        .collect();
    assert_eq!(data, vec![(offset, length)], "{}", stdout(&output));

    let discard = format!("discard {offset} {length}");
    run(
        "qemu-io",
        &["-f", "raw", "-d", "unmap", "-c", &discard, &uri],
    )
    .await;
    assert_eq!(map(&uri).await, vec![(0, VOL_BYTES, 3)]);
    h.server.shutdown().await;
}

/// qemu-io commands writing patterns at 512-byte (not 4 KiB) aligned offsets, one of them
/// across the 4 MiB chunk boundary, and the reads that check them and their neighbours.
fn pattern_commands(seed: u8) -> (Vec<String>, Vec<String>) {
    let chunk = 4 * MIB;
    let writes = [
        (512, 1024),
        (chunk - 1536, 3584),
        (7 * 4096 + 2560, 512),
        (VOL_BYTES - 1024, 1024),
    ];
    let mut write = Vec::new();
    let mut read = Vec::new();
    for (i, (offset, length)) in writes.into_iter().enumerate() {
        let pattern = seed.wrapping_add(i as u8 * 16);
        write.push(format!("write -P {pattern:#x} {offset} {length}"));
        read.push(format!("read -P {pattern:#x} {offset} {length}"));
        // The sectors either side are untouched (still zero).
        read.push(format!("read -P 0 {} 512", offset - 512));
        if offset + length < VOL_BYTES {
            read.push(format!("read -P 0 {} 512", offset + length));
        }
    }
    (write, read)
}

fn qemu_io_args<'a>(commands: &'a [String], uri: &'a str) -> Vec<&'a str> {
    let mut args = vec!["-f", "raw"];
    for command in commands {
        args.extend(["-c", command.as_str()]);
    }
    args.push(uri);
    args
}

async fn qemu_io(commands: &[String], uri: &str) -> String {
    let output = run("qemu-io", &qemu_io_args(commands, uri)).await;
    let text = stdout(&output);
    assert!(
        !text.contains("failed") && !text.contains("error"),
        "qemu-io reported a failure:\n{text}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_unaligned_patterns_over_tcp_and_unix() {
    // Goal: 512-byte-aligned writes (read-modify-write inside 4 KiB blocks, split at chunk
    // boundaries) read back exactly, written over one socket kind and read over the other.
    // qemu 10 negotiates extended headers, so this also covers that reply mode.
    let h = Harness::start().await;
    let (tcp, unix) = (h.tcp_uri("vol"), h.unix_uri("vol"));

    let (write, read) = pattern_commands(0x11);
    let wrote = qemu_io(&write, &tcp).await;
    assert_eq!(wrote.matches("wrote ").count(), write.len(), "{wrote}");
    let readback = qemu_io(&read, &unix).await;
    assert_eq!(readback.matches("read ").count(), read.len(), "{readback}");

    let (write, read) = pattern_commands(0x81);
    qemu_io(&write, &unix).await;
    qemu_io(&read, &tcp).await;

    // Write zeroes (with and without the unmap hint) and discard over a patterned range.
    let zero = vec![
        "write -P 0x77 0 65536".to_owned(),
        "write -z 512 1024".to_owned(),
        "write -z -u 4096 8192".to_owned(),
        "discard 32768 4096".to_owned(),
        "read -P 0x77 0 512".to_owned(),
        "read -P 0 512 1024".to_owned(),
        "read -P 0x77 1536 2560".to_owned(),
        "read -P 0 4096 8192".to_owned(),
        "read -P 0x77 12288 20480".to_owned(),
        "read -P 0 32768 4096".to_owned(),
        "read -P 0x77 36864 28672".to_owned(),
    ];
    let mut args = vec!["-d", "unmap"];
    let rest = qemu_io_args(&zero, &unix);
    args.extend(rest);
    let output = run("qemu-io", &args).await;
    let text = stdout(&output);
    assert!(!text.contains("failed"), "{text}");
    assert_eq!(text.matches("read ").count(), 7, "{text}");
    h.server.shutdown().await;
}

fn checksum(path: &Path) -> (u64, u32) {
    let data = std::fs::read(path).expect("read file");
    (data.len() as u64, crc32c::crc32c(&data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_round_trip() {
    // Goal: a 128 MiB random file copied in (multi-connection writes) and out (block status
    // plus reads) comes back identical.
    let h = Harness::start().await;
    let input = h.path("in.img");
    let mut data = vec![0u8; COPY_BYTES as usize];
    rand::fill(&mut data[..]);
    // A zero run in the middle exercises nbdcopy's zero detection (WRITE_ZEROES).
    data[(16 * MIB) as usize..(20 * MIB) as usize].fill(0);
    std::fs::write(&input, &data).expect("write input");
    drop(data);

    let uri = h.tcp_uri("copy");
    run("nbdcopy", &[input.to_str().expect("path"), &uri]).await;
    let output = h.path("out.img");
    run(
        "nbdcopy",
        &[&h.unix_uri("copy"), output.to_str().expect("path")],
    )
    .await;
    assert_eq!(checksum(&input), checksum(&output));
    h.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fio_random_write_verifies() {
    // Goal: 32 concurrent random 4 KiB writes per connection, replies out of order, then a
    // crc32c verify pass of every block written.
    let h = Harness::start().await;
    let uri = h.tcp_uri("vol");
    let uri_arg = format!("--uri={uri}");
    let output = run(
        "fio",
        &[
            "--name=nbdverify",
            "--ioengine=nbd",
            &uri_arg,
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=32",
            "--size=48m",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--do_verify=1",
            "--output-format=json",
        ],
    )
    .await;
    let text = stdout(&output);
    // fio prints notes before the JSON document.
    let start = text.find('{').expect("fio JSON output");
    let report: Value = serde_json::from_str(&text[start..]).expect("fio JSON");
    let job = &report["jobs"][0];
    assert_eq!(job["error"], 0, "{job}");
    assert_eq!(job["write"]["io_bytes"], 48 * MIB, "{job}");
    assert_eq!(job["read"]["io_bytes"], 48 * MIB, "verify pass read: {job}");
    h.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdsh_errors_keep_the_connection_usable() {
    // Goal: an unknown export is refused in the handshake (REP_ERR_UNKNOWN); out-of-range and
    // misaligned requests get EINVAL and the same connection keeps working; FAST_ZERO that
    // must keep the range allocated is refused with ENOTSUP; FUA writes, zeroes, trims and
    // flushes behave.
    let h = Harness::start().await;
    let script = format!(
        r#"
import errno
def same_errno(got, code):
    # nbd.Error.errno is the symbolic name (ENOTSUP and EOPNOTSUPP are the same number).
    return got == code or getattr(errno, str(got), None) == code

def expect_data(got, want, what):
    if got != want:
        first = next(i for i in range(min(len(got), len(want))) if got[i] != want[i])
        raise AssertionError("%s: differs at byte %d: %r" % (what, first, got[first:first+16]))

def expect_error(code, fn, *args):
    try:
        fn(*args)
    except nbd.Error as e:
        assert same_errno(e.errno, code), (fn.__name__, e.errno, e.string)
        return
    raise AssertionError(fn.__name__ + " succeeded")

u = nbd.NBD()
try:
    u.connect_uri("{unknown}")
    raise AssertionError("connected to an unknown export")
except nbd.Error as e:
    assert same_errno(e.errno, errno.ENOENT), (e.errno, e.string)

c = nbd.NBD()
c.set_strict_mode(0)
c.connect_uri("{uri}")
size = c.get_size()
assert size == {size}, size
expect_error(errno.EINVAL, c.pread, 4096, size)
expect_error(errno.EINVAL, c.pread, 512, 100)
expect_error(errno.EINVAL, c.pread, 100, 4096)
expect_error(errno.ENOSPC, c.pwrite, b"x" * 4096, size)
c.pwrite(b"\x5a" * 8192, 8192, nbd.CMD_FLAG_FUA)
expect_data(c.pread(8192, 8192), b"\x5a" * 8192, "c.pread(8192, 8192)")
expect_error(errno.ENOTSUP, c.zero, 4096, 8192, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE)
expect_data(c.pread(8192, 8192), b"\x5a" * 8192, "c.pread(8192, 8192)")
c.zero(512, 8192, nbd.CMD_FLAG_NO_HOLE)
expect_data(c.pread(1024, 8192), b"\0" * 512 + b"\x5a" * 512, "c.pread(1024, 8192)")
c.zero(8192, 8192, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_FUA)
expect_data(c.pread(8192, 8192), b"\0" * 8192, "c.pread(8192, 8192)")
c.pwrite(b"\x33" * 4096, 65536)
c.trim(4096, 65536, nbd.CMD_FLAG_FUA)
expect_data(c.pread(4096, 65536), b"\0" * 4096, "c.pread(4096, 65536)")
c.flush()
expect_data(c.pread(4096, size - 4096), b"\0" * 4096, "c.pread(4096, size - 4096)")
c.shutdown()
print("nbdsh checks passed")
"#,
        unknown = h.tcp_uri("nope"),
        uri = h.tcp_uri("vol"),
        size = VOL_BYTES,
    );
    let output = run("nbdsh", &["-c", &script]).await;
    assert!(stdout(&output).contains("nbdsh checks passed"));
    h.server.shutdown().await;
}

/// A minimal client: fixed newstyle, `OPT_GO`, simple replies.
struct RawClient {
    stream: TcpStream,
    cookie: u64,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut greeting = [0u8; 18];
        stream.read_exact(&mut greeting).await.expect("greeting");
        assert_eq!(&greeting[..8], &NBD_MAGIC.to_be_bytes());
        assert_eq!(&greeting[8..16], &IHAVEOPT.to_be_bytes());
        stream
    }

    async fn handshake(addr: SocketAddr, export: &str) -> Self {
        let mut stream = Self::connect(addr).await;
        let flags = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;
        let mut message = flags.to_be_bytes().to_vec();
        message.extend_from_slice(&IHAVEOPT.to_be_bytes());
        message.extend_from_slice(&OPT_GO.to_be_bytes());
        message.extend_from_slice(&(4 + export.len() as u32 + 2).to_be_bytes());
        message.extend_from_slice(&(export.len() as u32).to_be_bytes());
        message.extend_from_slice(export.as_bytes());
        message.extend_from_slice(&0u16.to_be_bytes());
        stream.write_all(&message).await.expect("send OPT_GO");
        loop {
            let mut header = [0u8; 20];
            stream.read_exact(&mut header).await.expect("option reply");
            assert_eq!(&header[..8], &OPTION_REPLY_MAGIC.to_be_bytes());
            let kind = u32::from_be_bytes(header[12..16].try_into().expect("4 bytes"));
            let length = u32::from_be_bytes(header[16..20].try_into().expect("4 bytes"));
            let mut data = vec![0u8; length as usize];
            stream.read_exact(&mut data).await.expect("option data");
            assert_eq!(kind & REP_FLAG_ERROR, 0, "OPT_GO refused: {kind:#x}");
            if kind == REP_ACK {
                return Self { stream, cookie: 0 };
            }
        }
    }

    async fn send(&mut self, command: u16, offset: u64, length: u32, payload: &[u8]) -> u64 {
        self.cookie += 1;
        let mut message = REQUEST_MAGIC.to_be_bytes().to_vec();
        message.extend_from_slice(&0u16.to_be_bytes());
        message.extend_from_slice(&command.to_be_bytes());
        message.extend_from_slice(&self.cookie.to_be_bytes());
        message.extend_from_slice(&offset.to_be_bytes());
        message.extend_from_slice(&length.to_be_bytes());
        message.extend_from_slice(payload);
        self.stream.write_all(&message).await.expect("send request");
        self.cookie
    }

    /// Reads one simple reply: (cookie, error, data of `data_len` bytes if no error).
    async fn reply(&mut self, data_len: usize) -> (u64, u32, Vec<u8>) {
        let mut header = [0u8; 16];
        self.stream.read_exact(&mut header).await.expect("reply");
        assert_eq!(&header[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        let error = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes"));
        let cookie = u64::from_be_bytes(header[8..16].try_into().expect("8 bytes"));
        let mut data = vec![0u8; if error == 0 { data_len } else { 0 }];
        self.stream.read_exact(&mut data).await.expect("reply data");
        (cookie, error, data)
    }

    async fn write_read(&mut self, offset: u64, data: &[u8]) {
        let length = data.len() as u32;
        let cookie = self.send(CMD_WRITE, offset, length, data).await;
        assert_eq!(self.reply(0).await, (cookie, 0, Vec::new()));
        let cookie = self.send(CMD_READ, offset, length, &[]).await;
        assert_eq!(self.reply(data.len()).await, (cookie, 0, data.to_vec()));
    }
}

/// Waits for the peer to close: EOF or a reset, within the socket timeout.
async fn assert_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let result = tokio::time::timeout(SOCKET_TIMEOUT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(result.is_ok(), "the server did not close the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_only_that_connection() {
    // Goal: bytes that are not an NBD request after the handshake close that connection,
    // while another connection to the same export, and new clients, keep working.
    let h = Harness::start().await;
    let mut good = RawClient::handshake(h.addr, "vol").await;
    good.write_read(4096, &[0xa5; 4096]).await;

    let mut bad = RawClient::handshake(h.addr, "vol").await;
    bad.stream
        .write_all(&[0xde; 64])
        .await
        .expect("send garbage");
    assert_closed(&mut bad.stream).await;

    good.write_read(8192, &[0x3c; 1024]).await;
    let readback = "read -P 0xa5 4096 4096".to_owned();
    qemu_io(&[readback], &h.tcp_uri("vol")).await;
    h.server.shutdown().await;
    let data = h.volume("vol").read(8192, 1024).await.expect("read store");
    assert_eq!(data, Bytes::from(vec![0x3c; 1024]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_handshake_is_dropped() {
    // Goal: a socket that connects and never negotiates is closed after the handshake
    // deadline; a connection in transmission is not subject to it.
    let config = NbdConfig {
        handshake_timeout: Some(Duration::from_secs(1)),
        ..NbdConfig::default()
    };
    let h = Harness::with_config(config).await;
    let mut working = RawClient::handshake(h.addr, "vol").await;
    let mut idle = RawClient::connect(h.addr).await;
    assert_closed(&mut idle).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    working.write_read(0, &[7; 512]).await;
    h.server.shutdown().await;
}

/// A volume whose writes wait until the test releases them: a request held in flight.
struct GatedVolume {
    inner: LocalVolume,
    arrived: tokio::sync::Notify,
    release: tokio::sync::Semaphore,
}

impl VolumeBackend for GatedVolume {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, VolumeError> {
        self.inner.read(offset, len).await
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), VolumeError> {
        self.arrived.notify_one();
        let _permit = self.release.acquire().await;
        self.inner.write(offset, data, fua).await
    }

    async fn trim(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        self.inner.trim(offset, len).await
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: ZeroFlags,
    ) -> Result<(), VolumeError> {
        self.inner.write_zeroes(offset, len, flags).await
    }

    async fn flush(&self) -> Result<(), VolumeError> {
        self.inner.flush().await
    }

    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<VolumeExtent>, VolumeError> {
        self.inner.block_status(offset, len).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_and_stops_accepting() {
    // Goal: shutdown stops accepting at once (unix socket removed, TCP refused), waits for a
    // request in flight, answers it, closes the connection, and the data is in the store.
    let dir = scratch();
    let store = new_store(&dir).await;
    let inner = LocalVolume::open(Arc::clone(&store), VolumeId(7), VOL_BYTES)
        .await
        .expect("open volume");
    let gated = Arc::new(GatedVolume {
        inner,
        arrived: tokio::sync::Notify::new(),
        release: tokio::sync::Semaphore::new(0),
    });
    let mut exports = StaticExports::new();
    exports.insert("gated", "", Arc::clone(&gated));
    let (server, addr, socket) = start_server(&dir, Arc::new(exports), NbdConfig::default()).await;

    let mut client = RawClient::handshake(addr, "gated").await;
    let cookie = client.send(CMD_WRITE, 2 * MIB, 4096, &[0x43; 4096]).await;
    tokio::time::timeout(SOCKET_TIMEOUT, gated.arrived.notified())
        .await
        .expect("write reaches the volume");

    let shutdown = server.shutdown();
    tokio::pin!(shutdown);
    // Shutdown cannot finish while the write is held.
    let early = tokio::time::timeout(Duration::from_millis(300), &mut shutdown).await;
    assert!(early.is_err(), "shutdown finished with a request in flight");
    assert!(!socket.exists(), "unix socket removed at once");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener closed at once"
    );
    assert_eq!(server.connection_count(), 1);

    gated.release.add_permits(1);
    assert_eq!(client.reply(0).await, (cookie, 0, Vec::new()));
    assert_closed(&mut client.stream).await;
    tokio::time::timeout(SOCKET_TIMEOUT, shutdown)
        .await
        .expect("shutdown finishes");
    assert_eq!(server.connection_count(), 0);
    let data = gated.read(2 * MIB, 4096).await.expect("read store");
    assert_eq!(data, Bytes::from(vec![0x43; 4096]));
}
