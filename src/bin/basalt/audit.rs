//! `basalt audit write|check`: the acknowledged-write audit (`docs/audit.md`).
//!
//! `write` sends random block-aligned writes over one NBD connection with several in flight
//! (never two overlapping), logging an intent before each is sent and an acknowledgement once
//! the server answered it, and reconnects when the server drops the connection. `check`
//! replays the log and reads back every block it wrote. The log format, payloads and the
//! judgement live in `basalt::audit`; the NBD codec in `basalt::nbd::client`. This module is
//! the I/O shell: sockets, the log file, the clock.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use basalt::audit::{
    AUDIT_BLOCK_BYTES, BlockExpectation, DecodedLog, Expectations, Record, RecordKind, SplitMix64,
    Verdict, decode_log, encode_header, payload,
};
use basalt::nbd::{ClientHandshake, ClientReply, ClientTransmission};
use basalt::size::Size;
use bytes::BytesMut;
use clap::{Args, Subcommand};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on opening a TCP connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on the NBD handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with requests in flight and no reply for this long is treated as dead (the
/// gateway gives up on a request after 30 s and answers with an error).
const REPLY_TIMEOUT: Duration = Duration::from_secs(90);
/// Pause between reconnection attempts.
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);
/// Longest a writer keeps acknowledgements unsynced when it sends nothing new.
const ACK_SYNC_INTERVAL: Duration = Duration::from_millis(200);
/// Attempts to pick a range that overlaps no write in flight before sending what is picked.
const PICK_ATTEMPTS_MAX: u32 = 32;
/// Blocks the checker reads per request (1 MiB).
const CHECK_READ_BLOCKS_MAX: u64 = 256;
/// Reads the checker keeps in flight.
const CHECK_DEPTH: usize = 8;
/// Connections the checker may lose before giving up.
const CHECK_RECONNECTS_MAX: u32 = 10;
/// Mismatches printed in detail.
const MISMATCHES_SHOWN: usize = 10;
/// Default run length when neither `--seconds` nor `--ops` is given.
const DEFAULT_SECONDS: u64 = 10;

/// `basalt audit` subcommands.
#[derive(Subcommand)]
pub enum AuditCmd {
    /// Random verified writes through one NBD connection, each logged once acknowledged.
    Write(WriteArgs),
    /// Reads back every block the log wrote; fails on any acknowledged write not found.
    Check(Target),
}

/// Where the audit writes or checks, and its log.
#[derive(Args)]
pub struct Target {
    /// The NBD server, `HOST:PORT`.
    #[arg(long)]
    nbd: String,
    /// The export (volume) name.
    #[arg(long)]
    export: String,
    /// The audit log (created by `write`, appended to when it exists).
    #[arg(long)]
    log: PathBuf,
    /// How long to keep trying to reconnect after the server dropped the connection.
    #[arg(long, default_value_t = 120)]
    reconnect_secs: u64,
}

/// Options of `basalt audit write`.
#[derive(Args)]
pub struct WriteArgs {
    #[command(flatten)]
    target: Target,
    /// Stop issuing writes after this many seconds (10 unless `--ops` is given).
    #[arg(long)]
    seconds: Option<u64>,
    /// Stop after this many writes.
    #[arg(long)]
    ops: Option<u64>,
    /// Writes in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    depth: u16,
    /// Seed of payloads and offsets (random when absent; an existing log keeps its own).
    #[arg(long)]
    seed: Option<u64>,
    /// Largest write, 4K..1M; lengths are random multiples of 4 KiB up to it.
    #[arg(long, default_value = "64K", value_parser = crate::parse_size_arg)]
    block_size: Size,
    /// Write only within the first SPAN bytes of the export (the whole export when absent).
    #[arg(long, value_parser = crate::parse_size_arg)]
    span: Option<Size>,
}

/// Runs an audit subcommand; prints its summary (JSON with `json`).
pub fn run(command: AuditCmd, json: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("basalt: cannot start the I/O runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match command {
        AuditCmd::Write(args) => runtime.block_on(write(&args)).map(|summary| {
            print_summary(&summary, json, &summary.to_string());
            true
        }),
        AuditCmd::Check(target) => runtime.block_on(check(&target)).map(|summary| {
            print_summary(&summary, json, &summary.to_string());
            summary.passed()
        }),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("basalt: audit: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_summary(value: &impl Serialize, json: bool, human: &str) {
    if json {
        match serde_json::to_string_pretty(value) {
            Ok(text) => println!("{text}"),
            Err(error) => eprintln!("basalt: cannot print JSON: {error}"),
        }
    } else {
        println!("{human}");
    }
}

// ---- NBD connection shell ---------------------------------------------------------------------

/// One NBD connection in transmission: the socket, the codec, and bytes not yet sent or parsed.
struct Conn {
    stream: TcpStream,
    codec: ClientTransmission,
    input: BytesMut,
    output: Vec<u8>,
}

impl Conn {
    async fn open(address: &str, export: &str) -> anyhow::Result<Conn> {
        let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
            .await
            .with_context(|| format!("connecting to {address}: timed out"))?
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true)?;
        let mut handshake = ClientHandshake::new(export)?;
        let mut input = BytesMut::with_capacity(1 << 16);
        let negotiated = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            loop {
                let done = handshake.handle_input(&mut input)?;
                let mut out = Vec::new();
                handshake.poll_transmit(&mut out);
                stream.write_all(&out).await?;
                if let Some(done) = done {
                    return anyhow::Ok(done);
                }
                if stream.read_buf(&mut input).await? == 0 {
                    bail!("the server closed the connection during the handshake");
                }
            }
        })
        .await
        .with_context(|| format!("NBD handshake with {address}: timed out"))?
        .with_context(|| format!("NBD handshake with {address}"))?;
        Ok(Conn {
            stream,
            codec: ClientTransmission::new(negotiated),
            input,
            output: Vec::new(),
        })
    }

    /// Opens a connection, retrying for up to `patience`.
    async fn open_retrying(
        address: &str,
        export: &str,
        patience: Duration,
    ) -> anyhow::Result<Conn> {
        let deadline = Instant::now() + patience;
        loop {
            match Conn::open(address, export).await {
                Ok(conn) => return Ok(conn),
                Err(_) if Instant::now() < deadline => tokio::time::sleep(RECONNECT_PAUSE).await,
                Err(error) => {
                    return Err(error.context(format!("gave up reconnecting after {patience:?}")));
                }
            }
        }
    }

    /// Sends queued requests and returns the replies that arrive (possibly none); fails when
    /// the connection broke or nothing happened for `idle`.
    async fn step(&mut self, idle: Duration) -> anyhow::Result<Vec<ClientReply>> {
        self.codec.poll_transmit(&mut self.output);
        let mut replies = self.decode()?;
        if !replies.is_empty() {
            return Ok(replies);
        }
        let Conn {
            stream,
            input,
            output,
            ..
        } = self;
        let (mut reader, mut writer) = stream.split();
        tokio::select! {
            sent = writer.write(output), if !output.is_empty() => {
                let sent = sent.context("sending to the server")?;
                output.drain(..sent);
            }
            received = reader.read_buf(input) => {
                if received.context("receiving from the server")? == 0 {
                    bail!("the server closed the connection");
                }
            }
            () = tokio::time::sleep(idle) => bail!("no reply from the server for {idle:?}"),
        }
        replies.extend(self.decode()?);
        Ok(replies)
    }

    fn decode(&mut self) -> anyhow::Result<Vec<ClientReply>> {
        let mut replies = Vec::new();
        while let Some(reply) = self.codec.handle_input(&mut self.input)? {
            replies.push(reply);
        }
        Ok(replies)
    }

    /// Flushes the volume and disconnects politely; failures only matter to the caller's log.
    async fn close(mut self) -> anyhow::Result<()> {
        let flush = self.codec.flush()?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        'wait: while Instant::now() < deadline {
            for reply in self.step(REPLY_TIMEOUT).await? {
                if reply.cookie == flush {
                    if let Err(code) = reply.result {
                        bail!("flush failed: {code:?}");
                    }
                    break 'wait;
                }
            }
        }
        self.codec.disconnect();
        self.codec.poll_transmit(&mut self.output);
        self.stream.write_all(&self.output).await?;
        self.stream.shutdown().await?;
        Ok(())
    }
}

// ---- the log file -----------------------------------------------------------------------------

/// The audit log opened for appending; records are buffered until [`AuditLog::sync`].
struct AuditLog {
    file: File,
    buffer: Vec<u8>,
    last_sync: Instant,
}

impl AuditLog {
    /// Opens `path`, creating it with `seed` (or a random seed) when absent or empty. An
    /// existing log keeps its seed and sequence; a torn last record is cut off.
    fn open(path: &Path, seed: Option<u64>) -> anyhow::Result<(AuditLog, DecodedLog)> {
        let existing = match std::fs::read(path) {
            Ok(bytes) if !bytes.is_empty() => Some(bytes),
            Ok(_) => None,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
        };
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let decoded = if let Some(bytes) = existing {
            let decoded =
                decode_log(&bytes).with_context(|| format!("reading {}", path.display()))?;
            if let Some(seed) = seed.filter(|seed| *seed != decoded.seed) {
                bail!(
                    "{} was written with seed {:#x}, not {seed:#x}",
                    path.display(),
                    decoded.seed
                );
            }
            if let Some(tail) = decoded.torn_tail {
                eprintln!(
                    "basalt: audit: cutting a torn last record ({} bytes at byte {}) off {}",
                    tail.bytes,
                    tail.byte,
                    path.display()
                );
            }
            file.set_len(decoded.valid_bytes())?;
            decoded
        } else {
            let seed = seed.unwrap_or_else(random_seed);
            file.set_len(0)?;
            file.write_all(&encode_header(seed))?;
            file.sync_all()?;
            if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
            DecodedLog {
                seed,
                records: Vec::new(),
                torn_tail: None,
            }
        };
        let end = decoded.valid_bytes();
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(end))?;
        Ok((
            AuditLog {
                file,
                buffer: Vec::new(),
                last_sync: Instant::now(),
            },
            decoded,
        ))
    }

    fn append(&mut self, record: &Record) {
        self.buffer.extend_from_slice(&record.encode());
    }

    /// Writes buffered records and makes them durable.
    fn sync(&mut self) -> anyhow::Result<()> {
        if !self.buffer.is_empty() {
            self.file.write_all(&self.buffer)?;
            self.file.sync_data()?;
            self.buffer.clear();
        }
        self.last_sync = Instant::now();
        Ok(())
    }
}

fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    SplitMix64::new(nanos ^ u64::from(std::process::id()).rotate_left(32)).next_u64()
}

// ---- write ------------------------------------------------------------------------------------

/// What a `write` run did.
#[derive(Debug, Default, Serialize)]
struct WriteSummary {
    log: PathBuf,
    seed: u64,
    first_seq: u64,
    last_seq: u64,
    writes_sent: u64,
    writes_acknowledged: u64,
    /// In flight when a connection dropped: may or may not have landed.
    writes_lost: u64,
    /// Answered with an error by the server.
    writes_failed: u64,
    bytes_acknowledged: u64,
    reconnects: u64,
    seconds: f64,
}

impl std::fmt::Display for WriteSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "audit write: {} writes sent, {} acknowledged ({} bytes), {} lost with a connection, \
             {} failed, {} reconnects in {:.1} s; sequences {}..={}, seed {:#x}, log {}",
            self.writes_sent,
            self.writes_acknowledged,
            self.bytes_acknowledged,
            self.writes_lost,
            self.writes_failed,
            self.reconnects,
            self.seconds,
            self.first_seq,
            self.last_seq,
            self.seed,
            self.log.display()
        )
    }
}

/// Picks a block-aligned range of 1..=`max_blocks` blocks within `span_blocks` that overlaps
/// none of `busy`; `None` after [`PICK_ATTEMPTS_MAX`] tries.
fn pick_range(
    rng: &mut SplitMix64,
    span_blocks: u64,
    max_blocks: u64,
    busy: &[(u64, u64)],
) -> Option<(u64, u64)> {
    let max_blocks = max_blocks.clamp(1, span_blocks);
    for _ in 0..PICK_ATTEMPTS_MAX {
        let blocks = 1 + rng.below(max_blocks);
        let first = rng.below(span_blocks - blocks + 1);
        let (start, end) = (first, first + blocks);
        if busy.iter().all(|&(s, e)| end <= s || e <= start) {
            return Some((start, end));
        }
    }
    None
}

/// The writer's state across connections.
struct Writer {
    log: AuditLog,
    seed: u64,
    next_seq: u64,
    rng: SplitMix64,
    span_blocks: u64,
    max_blocks: u64,
    depth: usize,
    ops: Option<u64>,
    /// Cookie and intent of each write in flight on the current connection.
    in_flight: Vec<(u64, Record)>,
    summary: WriteSummary,
}

impl Writer {
    /// Tops the connection up to `depth` writes in flight, in batches so that one log sync
    /// covers several intents; the intents are durable before their writes leave.
    fn refill(&mut self, codec: &mut ClientTransmission) -> anyhow::Result<()> {
        if self.in_flight.len() > self.depth / 2 {
            return Ok(());
        }
        let mut batch: Vec<(Record, Vec<u8>)> = Vec::new();
        while self.in_flight.len() + batch.len() < self.depth
            && self
                .ops
                .is_none_or(|ops| self.summary.writes_sent + (batch.len() as u64) < ops)
        {
            let busy: Vec<(u64, u64)> = self
                .in_flight
                .iter()
                .map(|(_, record)| record)
                .chain(batch.iter().map(|(record, _)| record))
                .map(|record| (record.blocks().start, record.blocks().end))
                .collect();
            let Some((first, end)) =
                pick_range(&mut self.rng, self.span_blocks, self.max_blocks, &busy)
            else {
                break;
            };
            let offset = first * AUDIT_BLOCK_BYTES;
            let length =
                u32::try_from((end - first) * AUDIT_BLOCK_BYTES).context("write length")?;
            let data = payload(self.seed, self.next_seq, offset, length);
            let record = Record {
                kind: RecordKind::Intent,
                seq: self.next_seq,
                offset,
                length,
                payload_crc: crc32c::crc32c(&data),
            };
            self.next_seq += 1;
            self.log.append(&record);
            batch.push((record, data));
        }
        self.log.sync()?;
        for (record, data) in batch {
            let cookie = codec.write(record.offset, &data, false)?;
            self.summary.writes_sent += 1;
            self.in_flight.push((cookie, record));
        }
        Ok(())
    }

    /// Logs the acknowledged writes among `replies` and counts the failed ones.
    fn on_replies(&mut self, replies: Vec<ClientReply>) {
        for reply in replies {
            let Some(index) = self.in_flight.iter().position(|(c, _)| *c == reply.cookie) else {
                continue;
            };
            let (_, record) = self.in_flight.swap_remove(index);
            match reply.result {
                Ok(_) => {
                    self.log.append(&Record {
                        kind: RecordKind::Ack,
                        ..record
                    });
                    self.summary.writes_acknowledged += 1;
                    self.summary.bytes_acknowledged += u64::from(record.length);
                }
                Err(code) => {
                    self.summary.writes_failed += 1;
                    eprintln!(
                        "basalt: audit: write {} at {} failed: {code:?}",
                        record.seq, record.offset
                    );
                }
            }
        }
    }

    /// The connection broke: its writes in flight stay unacknowledged intents.
    fn on_lost(&mut self, error: &anyhow::Error) {
        eprintln!(
            "basalt: audit: connection lost with {} writes in flight: {error:#}",
            self.in_flight.len()
        );
        self.summary.writes_lost += self.in_flight.len() as u64;
        self.in_flight.clear();
    }
}

impl Writer {
    /// Opens (or continues) the log and the first connection.
    async fn start(args: &WriteArgs) -> anyhow::Result<(Writer, Conn)> {
        let target = &args.target;
        let block_size = args.block_size.0;
        if !(AUDIT_BLOCK_BYTES..=1 << 20).contains(&block_size)
            || !block_size.is_multiple_of(AUDIT_BLOCK_BYTES)
        {
            bail!("--block-size must be a multiple of 4K in 4K..=1M");
        }
        let (log, decoded) = AuditLog::open(&target.log, args.seed)?;
        let (seed, next_seq) = (decoded.seed, decoded.next_seq());
        drop(decoded);
        let conn = Conn::open(&target.nbd, &target.export).await?;
        let export_bytes = conn.codec.negotiated().size_bytes;
        let span = args
            .span
            .map_or(export_bytes, |span| span.0.min(export_bytes));
        let span_blocks = span / AUDIT_BLOCK_BYTES;
        if span_blocks == 0 {
            bail!("the export ({export_bytes} bytes) has no room for a 4 KiB write");
        }
        let writer = Writer {
            log,
            seed,
            next_seq,
            rng: SplitMix64::new(seed ^ next_seq.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            span_blocks,
            max_blocks: block_size / AUDIT_BLOCK_BYTES,
            depth: usize::from(args.depth),
            ops: args.ops,
            in_flight: Vec::new(),
            summary: WriteSummary {
                log: target.log.clone(),
                seed,
                first_seq: next_seq,
                ..WriteSummary::default()
            },
        };
        Ok((writer, conn))
    }
}

async fn write(args: &WriteArgs) -> anyhow::Result<WriteSummary> {
    let target = &args.target;
    let patience = Duration::from_secs(target.reconnect_secs);
    let (mut writer, conn) = Writer::start(args).await?;
    let mut conn = Some(conn);
    let started = Instant::now();
    let default_seconds = args.ops.is_none().then_some(DEFAULT_SECONDS);
    let seconds = args.seconds.or(default_seconds).map(Duration::from_secs);
    loop {
        let stop = seconds.is_some_and(|limit| started.elapsed() >= limit)
            || args
                .ops
                .is_some_and(|ops| writer.summary.writes_sent >= ops);
        if stop && writer.in_flight.is_empty() {
            break;
        }
        let Some(current) = conn.as_mut() else {
            writer.summary.reconnects += 1;
            eprintln!("basalt: audit: reconnecting to {}", target.nbd);
            match Conn::open_retrying(&target.nbd, &target.export, patience).await {
                Ok(fresh) => conn = Some(fresh),
                Err(error) => {
                    writer.log.sync()?;
                    return Err(error);
                }
            }
            continue;
        };
        if !stop {
            writer.refill(&mut current.codec)?;
        }
        if writer.in_flight.is_empty() {
            continue;
        }
        match current.step(REPLY_TIMEOUT).await {
            Ok(replies) => writer.on_replies(replies),
            Err(error) => {
                writer.on_lost(&error);
                conn = None;
            }
        }
        if writer.log.last_sync.elapsed() >= ACK_SYNC_INTERVAL {
            writer.log.sync()?;
        }
    }
    writer.log.sync()?;
    if let Some(conn) = conn
        && let Err(error) = conn.close().await
    {
        eprintln!("basalt: audit: closing the connection: {error:#}");
    }
    let mut summary = writer.summary;
    summary.last_seq = writer.next_seq.saturating_sub(1);
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

// ---- check ------------------------------------------------------------------------------------

/// One block that does not hold what the log says it must.
#[derive(Debug, Serialize)]
struct Mismatch {
    offset: u64,
    expected: String,
    found: String,
}

/// What a `check` run found.
#[derive(Debug, Default, Serialize)]
struct CheckSummary {
    log: PathBuf,
    records: u64,
    writes: u64,
    writes_acknowledged: u64,
    writes_unacknowledged: u64,
    /// Bytes of a torn last record that were ignored.
    torn_tail_bytes: u64,
    blocks_checked: u64,
    /// Blocks whose latest write was never acknowledged (old or new content accepted).
    blocks_either: u64,
    mismatches: u64,
    read_errors: u64,
    /// The first mismatches (and read errors), in offset order.
    first_mismatches: Vec<Mismatch>,
}

impl CheckSummary {
    fn passed(&self) -> bool {
        self.mismatches == 0 && self.read_errors == 0
    }

    /// Keeps `mismatch` if it is among the [`MISMATCHES_SHOWN`] lowest offsets so far
    /// (replies come in any order, so the list is trimmed rather than closed early).
    fn note(&mut self, mismatch: Mismatch) {
        self.first_mismatches.push(mismatch);
        if self.first_mismatches.len() >= 4 * MISMATCHES_SHOWN {
            self.first_mismatches.sort_by_key(|failure| failure.offset);
            self.first_mismatches.truncate(MISMATCHES_SHOWN);
        }
    }

    /// Judges the read of `count` blocks from block `first`.
    fn judge_read(
        &mut self,
        expectations: &Expectations,
        first: u64,
        count: u64,
        result: Result<bytes::Bytes, Result<basalt::nbd::ErrorCode, u32>>,
    ) {
        let data = match result {
            Ok(data) => data,
            Err(code) => {
                self.read_errors += count;
                self.note(Mismatch {
                    offset: first * AUDIT_BLOCK_BYTES,
                    expected: format!("{count} readable blocks"),
                    found: format!("read error {code:?}"),
                });
                return;
            }
        };
        for (i, block_data) in data.chunks(AUDIT_BLOCK_BYTES as usize).enumerate() {
            let block = first + i as u64;
            self.blocks_checked += 1;
            if let Verdict::Mismatch { expected, found } =
                expectations.verify_block(block, block_data)
            {
                self.mismatches += 1;
                self.note(Mismatch {
                    offset: block * AUDIT_BLOCK_BYTES,
                    expected: describe(&expected),
                    found: found.to_string(),
                });
            }
        }
    }
}

impl std::fmt::Display for CheckSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "audit check: {} records ({} writes, {} acknowledged, {} unacknowledged), {} blocks \
             checked ({} either old or new), {} mismatches, {} read errors",
            self.records,
            self.writes,
            self.writes_acknowledged,
            self.writes_unacknowledged,
            self.blocks_checked,
            self.blocks_either,
            self.mismatches,
            self.read_errors
        )?;
        if self.torn_tail_bytes > 0 {
            write!(
                f,
                "\nignored a torn last record ({} bytes)",
                self.torn_tail_bytes
            )?;
        }
        for mismatch in &self.first_mismatches {
            write!(
                f,
                "\nmismatch at offset {}: expected {}, found {}",
                mismatch.offset, mismatch.expected, mismatch.found
            )?;
        }
        if self.mismatches + self.read_errors > self.first_mismatches.len() as u64 {
            write!(f, "\n...")?;
        }
        Ok(())
    }
}

fn describe(expected: &BlockExpectation) -> String {
    let acked = expected
        .acked
        .map_or_else(|| "zeroes".to_owned(), |seq| format!("write {seq}"));
    if expected.maybe.is_empty() {
        acked
    } else {
        let maybe: Vec<String> = expected.maybe.iter().map(u64::to_string).collect();
        format!("{acked} or unacknowledged write {}", maybe.join("/"))
    }
}

/// Runs of consecutive written blocks, each at most [`CHECK_READ_BLOCKS_MAX`] long.
fn read_runs(expectations: &Expectations) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (block, _) in expectations.blocks() {
        match runs.last_mut() {
            Some((first, count)) if *first + *count == block && *count < CHECK_READ_BLOCKS_MAX => {
                *count += 1;
            }
            _ => runs.push((block, 1)),
        }
    }
    runs
}

/// Reads and replays the log: what every block must hold, and a summary to fill in.
fn load(log: &Path) -> anyhow::Result<(Expectations, CheckSummary)> {
    let bytes = std::fs::read(log).with_context(|| format!("reading {}", log.display()))?;
    let decoded = decode_log(&bytes).with_context(|| format!("reading {}", log.display()))?;
    let (expectations, stats) =
        Expectations::replay(&decoded).with_context(|| format!("replaying {}", log.display()))?;
    let summary = CheckSummary {
        log: log.to_owned(),
        records: decoded.records.len() as u64,
        writes: stats.intents,
        writes_acknowledged: stats.acks,
        writes_unacknowledged: stats.unacknowledged,
        torn_tail_bytes: decoded.torn_tail.map_or(0, |tail| tail.bytes),
        blocks_either: expectations
            .blocks()
            .filter(|(_, expected)| expected.is_either())
            .count() as u64,
        ..CheckSummary::default()
    };
    Ok((expectations, summary))
}

async fn check(target: &Target) -> anyhow::Result<CheckSummary> {
    let (expectations, mut summary) = load(&target.log)?;
    let mut pending = read_runs(&expectations);
    pending.reverse(); // popped from the back: offset order
    let patience = Duration::from_secs(target.reconnect_secs);
    let mut conn = Conn::open(&target.nbd, &target.export).await?;
    let mut reconnects = 0;
    let mut in_flight: Vec<(u64, (u64, u64))> = Vec::new();
    while !pending.is_empty() || !in_flight.is_empty() {
        while in_flight.len() < CHECK_DEPTH
            && let Some((first, count)) = pending.pop()
        {
            let offset = first * AUDIT_BLOCK_BYTES;
            let length = u32::try_from(count * AUDIT_BLOCK_BYTES).context("read length")?;
            match conn.codec.read(offset, length) {
                Ok(cookie) => in_flight.push((cookie, (first, count))),
                Err(error) => {
                    summary.read_errors += count;
                    summary.note(Mismatch {
                        offset,
                        expected: "a readable range".into(),
                        found: error.to_string(),
                    });
                }
            }
        }
        match conn.step(REPLY_TIMEOUT).await {
            Ok(replies) => {
                for reply in replies {
                    let Some(index) = in_flight.iter().position(|(c, _)| *c == reply.cookie) else {
                        continue;
                    };
                    let (_, (first, count)) = in_flight.swap_remove(index);
                    summary.judge_read(&expectations, first, count, reply.result);
                }
            }
            Err(error) => {
                reconnects += 1;
                if reconnects > CHECK_RECONNECTS_MAX {
                    return Err(error.context("too many lost connections"));
                }
                eprintln!("basalt: audit: connection lost during the check: {error:#}");
                pending.extend(in_flight.drain(..).map(|(_, run)| run));
                pending.sort_unstable_by(|a, b| b.cmp(a));
                conn = Conn::open_retrying(&target.nbd, &target.export, patience).await?;
            }
        }
    }
    summary
        .first_mismatches
        .sort_by_key(|failure| failure.offset);
    summary.first_mismatches.truncate(MISMATCHES_SHOWN);
    if let Err(error) = conn.close().await {
        eprintln!("basalt: audit: closing the connection: {error:#}");
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picked_ranges_fit_and_avoid_busy_ones() {
        // Goal: writes stay in the span and never overlap one in flight.
        let mut rng = SplitMix64::new(1);
        let busy = [(0, 4), (10, 12)];
        for _ in 0..1000 {
            let (start, end) = pick_range(&mut rng, 16, 4, &busy).unwrap_or((4, 5));
            assert!(start < end && end <= 16 && end - start <= 4);
            assert!(busy.iter().all(|&(s, e)| end <= s || e <= start));
        }
        assert_eq!(pick_range(&mut rng, 4, 8, &[(0, 4)]), None);
        let (start, end) = pick_range(&mut rng, 1, 256, &[]).unwrap();
        assert_eq!((start, end), (0, 1));
    }
}
