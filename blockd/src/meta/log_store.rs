//! The persistent Raft log: a small segment log of our own on the node's local disk.
//!
//! Layout under `<data_dir>/raft/`:
//! - `state`: vote, committed log id and last purged log id, one framed postcard record behind a
//!   magic, replaced atomically (temp file, fsync, rename, fsync directory).
//! - `log/seg-<first index, 20 digits>.log`: a magic, then one framed postcard record per entry
//!   (`u32` length, crc32c, payload). Only the newest segment is appended to; a new one starts
//!   when it passes [`SEGMENT_TARGET_BYTES`].
//! - `LOCK`: held (`flock`) by the writer thread, so two stores never share a directory.
//!
//! All entries are also kept in memory (metadata logs are small and are purged behind each
//! snapshot), so reads never touch the disk. Writes are done in order by one writer thread, which
//! groups queued appends behind a single `fdatasync` and only then reports them flushed through
//! openraft's [`IOFlushed`] callback. `save_vote`, `truncate_after` and `purge` wait for their write
//! to be durable before returning.
//!
//! Recovery on open: a defect (short header, bad length, bad crc) in the newest segment is a torn
//! tail from a crash; it is cut off (with a warning) and never decoded. A defect anywhere else, a
//! record that passes its crc but does not decode, or a gap in the indexes is corruption, and
//! opening fails.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::{Bound, RangeBounds};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, mpsc};
use std::time::Duration;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::{LogState, OptionalSend, RaftLogReader};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::TypeConfig;
use super::fsutil::{self, FRAME_HEADER_BYTES, encode_frame, invalid, scan_frames};

type Entry = EntryOf<TypeConfig>;
type LogId = LogIdOf<TypeConfig>;
type Vote = VoteOf<TypeConfig>;

/// First bytes of every segment file: kind and format version.
const SEGMENT_MAGIC: &[u8; 8] = b"BSRLOG01";
/// First bytes of the `state` file: kind and format version.
const STATE_MAGIC: &[u8; 8] = b"BSRSTA01";
/// A segment stops taking appends once it is this large.
pub const SEGMENT_TARGET_BYTES: u64 = 8 << 20;
/// Largest entry accepted on write and on recovery; a length field above it is a defect.
const MAX_ENTRY_BYTES: usize = 256 << 20;
/// Most queued operations the writer handles behind one `fdatasync`.
const WRITER_BATCH_OPS: usize = 256;
/// How long `open` waits for a previous writer of the same directory to let go of the lock.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// Interval between lock attempts while waiting.
const LOCK_POLL: Duration = Duration::from_millis(20);

/// The persisted non-entry state of the log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LogMeta {
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
}

/// What readers see: every entry after the purge point, the vote and the pointers.
#[derive(Debug, Default)]
struct Shared {
    entries: BTreeMap<u64, Entry>,
    meta: LogMeta,
}

fn read_lock(lock: &RwLock<Shared>) -> RwLockReadGuard<'_, Shared> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write_lock(lock: &RwLock<Shared>) -> RwLockWriteGuard<'_, Shared> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The Raft log storage handed to openraft.
pub struct LogStore {
    shared: Arc<RwLock<Shared>>,
    ops: mpsc::Sender<Op>,
}

/// A cheap reader over the same in-memory log, used by openraft's replication tasks.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<RwLock<Shared>>,
}

impl LogStore {
    /// Opens (creating if needed) the log in `dir`, repairing a torn tail, and starts its writer
    /// thread. Blocking: call from `spawn_blocking` in async code.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let (writer, shared) = Writer::open(dir)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("raft-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(Self {
            shared: Arc::new(RwLock::new(shared)),
            ops: tx,
        })
    }

    fn send(&self, op: Op) -> io::Result<()> {
        self.ops
            .send(op)
            .map_err(|_| io::Error::other("raft log writer thread has stopped"))
    }

    async fn send_and_wait(&self, make: impl FnOnce(Done) -> Op) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await
            .map_err(|_| io::Error::other("raft log writer thread has stopped"))?
    }
}

fn get_entries<RB: RangeBounds<u64>>(shared: &RwLock<Shared>, range: RB) -> Vec<Entry> {
    let start = match range.start_bound() {
        Bound::Included(i) => Bound::Included(*i),
        Bound::Excluded(i) => Bound::Excluded(*i),
        Bound::Unbounded => Bound::Unbounded,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => Bound::Included(*i),
        Bound::Excluded(i) => Bound::Excluded(*i),
        Bound::Unbounded => Bound::Unbounded,
    };
    if let (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) =
        (start, end)
        && s > e
    {
        return Vec::new();
    }
    if let (Bound::Excluded(s), Bound::Excluded(e)) = (start, end)
        && s == e
    {
        return Vec::new();
    }
    read_lock(shared)
        .entries
        .range((start, end))
        .map(|(_, e)| e.clone())
        .collect()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(get_entries(&self.shared, range))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(read_lock(&self.shared).meta.vote)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(get_entries(&self.shared, range))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(read_lock(&self.shared).meta.vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let shared = read_lock(&self.shared);
        let last_purged_log_id = shared.meta.purged;
        let last_log_id = shared
            .entries
            .last_key_value()
            .map(|(_, e)| e.log_id())
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        write_lock(&self.shared).meta.vote = Some(*vote);
        let vote = *vote;
        self.send_and_wait(|done| Op::SaveVote { vote, done }).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        write_lock(&self.shared).meta.committed = committed;
        self.send(Op::SaveCommitted { committed })
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(read_lock(&self.shared).meta.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut records = Vec::new();
        let mut decoded = Vec::new();
        for entry in entries {
            let payload = postcard::to_stdvec(&entry).map_err(io::Error::other)?;
            if payload.len() > MAX_ENTRY_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("raft entry of {} bytes is too large", payload.len()),
                ));
            }
            let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
            encode_frame(&payload, &mut frame)?;
            records.push((entry.index(), frame));
            decoded.push(entry);
        }
        {
            let mut shared = write_lock(&self.shared);
            for entry in decoded {
                shared.entries.insert(entry.index(), entry);
            }
        }
        self.send(Op::Append {
            records,
            done: callback,
        })
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let keep_upto = last_log_id.map(|id| id.index());
        {
            let mut shared = write_lock(&self.shared);
            let cut_from = keep_upto.map_or(0, |k| k + 1);
            drop(shared.entries.split_off(&cut_from));
        }
        self.send_and_wait(|done| Op::Truncate { keep_upto, done })
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        {
            let mut shared = write_lock(&self.shared);
            let keep = shared.entries.split_off(&(log_id.index() + 1));
            shared.entries = keep;
            if shared.meta.purged.is_none_or(|p| p < log_id) {
                shared.meta.purged = Some(log_id);
            }
        }
        self.send_and_wait(|done| Op::Purge { upto: log_id, done })
            .await
    }
}

type Done = oneshot::Sender<io::Result<()>>;

/// Work for the writer thread, handled strictly in the order sent.
enum Op {
    Append {
        records: Vec<(u64, Vec<u8>)>,
        done: IOFlushed<TypeConfig>,
    },
    Truncate {
        keep_upto: Option<u64>,
        done: Done,
    },
    Purge {
        upto: LogId,
        done: Done,
    },
    SaveVote {
        vote: Vote,
        done: Done,
    },
    SaveCommitted {
        committed: Option<LogId>,
    },
}

/// One segment file and where each of its records starts.
#[derive(Debug)]
struct Segment {
    first_index: u64,
    path: PathBuf,
    len: u64,
    /// `offsets[i]` is the file offset of the record for index `first_index + i`.
    offsets: Vec<u64>,
}

impl Segment {
    fn next_index(&self) -> u64 {
        self.first_index + self.offsets.len() as u64
    }

    fn last_index(&self) -> Option<u64> {
        (!self.offsets.is_empty()).then(|| self.next_index() - 1)
    }
}

/// Owns the files. Runs on its own thread; all disk writes of the log happen here.
struct Writer {
    dir: PathBuf,
    seg_dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    /// Open append handle of the newest segment, keyed by its first index.
    active: Option<(u64, File)>,
    /// Segments written since the last sync (an old one when a rotation happened mid-batch).
    unsynced: bool,
    meta: LogMeta,
    meta_dirty: bool,
    /// Set on the first I/O error: every later operation fails (the page cache state after a
    /// failed write or fsync is unknown).
    failed: Option<String>,
    _lock: File,
}

fn segment_name(first_index: u64) -> String {
    format!("seg-{first_index:020}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    if digits.len() != 20 {
        return None;
    }
    digits.parse().ok()
}

fn lock_dir(dir: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match rustix::fs::flock(
            file.as_fd(),
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        ) {
            Ok(()) => return Ok(file),
            Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                std::thread::sleep(LOCK_POLL);
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("raft log {} is in use by another process", dir.display()),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads the `state` file (vote, committed, purged), or the empty state if there is none.
fn read_meta(dir: &Path) -> io::Result<LogMeta> {
    match fsutil::read_optional(&dir.join("state"))? {
        Some(bytes) => {
            let payload = fsutil::decode_file(STATE_MAGIC, &bytes, "raft log state")?;
            postcard::from_bytes(payload).map_err(|e| invalid(format!("raft log state: {e}")))
        }
        None => Ok(LogMeta::default()),
    }
}

/// Segment files in `seg_dir` as `(first index, path)`, oldest first.
fn list_segments(seg_dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut names = Vec::new();
    for dirent in fs::read_dir(seg_dir)? {
        let dirent = dirent?;
        let name = dirent.file_name();
        match name.to_str().and_then(parse_segment_name) {
            Some(first) => names.push((first, dirent.path())),
            None if name.to_string_lossy().ends_with(".tmp") => {}
            None => {
                tracing::warn!(file = %dirent.path().display(), "ignoring unknown file in raft log");
            }
        }
    }
    names.sort_by_key(|(first, _)| *first);
    Ok(names)
}

/// Deletes segments wholly behind the purge point (a crash may leave them) and empty ones;
/// returns whether any file went.
fn remove_stale_segments(
    segments: &mut BTreeMap<u64, Segment>,
    purged_index: Option<u64>,
) -> io::Result<bool> {
    let stale: Vec<u64> = segments
        .values()
        .filter(|s| match (s.last_index(), purged_index) {
            (None, _) => true,
            (Some(last), Some(p)) => last <= p,
            (Some(_), None) => false,
        })
        .map(|s| s.first_index)
        .collect();
    for first in &stale {
        if let Some(seg) = segments.remove(first) {
            fs::remove_file(&seg.path)?;
        }
    }
    Ok(!stale.is_empty())
}

impl Writer {
    fn open(dir: &Path) -> io::Result<(Self, Shared)> {
        let seg_dir = dir.join("log");
        fs::create_dir_all(&seg_dir)?;
        let lock = lock_dir(dir)?;

        let meta = read_meta(dir)?;
        let names = list_segments(&seg_dir)?;

        let purged_index = meta.purged.map(|p| p.index());
        let mut segments = BTreeMap::new();
        let mut entries = BTreeMap::new();
        let mut prev_next: Option<u64> = None;
        let mut removed_any = false;
        let count = names.len();
        for (pos, (first, path)) in names.into_iter().enumerate() {
            let is_last = pos + 1 == count;
            let seg = Self::recover_segment(first, path, is_last, &mut entries, purged_index)?;
            let Some(seg) = seg else {
                removed_any = true;
                continue;
            };
            if let Some(expected) = prev_next
                && seg.first_index != expected
                && purged_index.is_none_or(|p| seg.first_index > p + 1)
            {
                return Err(invalid(format!(
                    "raft log: gap between segments, expected index {expected}, found {}",
                    seg.first_index
                )));
            }
            prev_next = Some(seg.next_index());
            segments.insert(seg.first_index, seg);
        }

        removed_any |= remove_stale_segments(&mut segments, purged_index)?;
        if removed_any {
            fsutil::sync_dir(&seg_dir)?;
        }

        // The first entry must follow the purge point: anything else is a hole.
        if let (Some(p), Some((&first, _))) = (purged_index, entries.first_key_value())
            && first != p + 1
        {
            return Err(invalid(format!(
                "raft log: first entry {first} does not follow purged index {p}"
            )));
        }

        let shared = Shared {
            entries,
            meta: meta.clone(),
        };
        let writer = Self {
            dir: dir.to_path_buf(),
            seg_dir,
            segments,
            active: None,
            unsynced: false,
            meta,
            meta_dirty: false,
            failed: None,
            _lock: lock,
        };
        Ok((writer, shared))
    }

    /// Reads one segment into `entries` (skipping purged ones). Returns `None` when the file was
    /// removed because it held nothing.
    fn recover_segment(
        first: u64,
        path: PathBuf,
        is_last: bool,
        entries: &mut BTreeMap<u64, Entry>,
        purged_index: Option<u64>,
    ) -> io::Result<Option<Segment>> {
        let bytes = fs::read(&path)?;
        let Some(body) = bytes.strip_prefix(SEGMENT_MAGIC.as_slice()) else {
            if is_last && bytes.len() < SEGMENT_MAGIC.len() && SEGMENT_MAGIC.starts_with(&bytes) {
                tracing::warn!(file = %path.display(), "removing raft log segment torn at creation");
                fs::remove_file(&path)?;
                return Ok(None);
            }
            return Err(invalid(format!(
                "raft log segment {}: unknown magic or format version",
                path.display()
            )));
        };
        let magic_len = SEGMENT_MAGIC.len() as u64;
        let scan = scan_frames(body, MAX_ENTRY_BYTES);
        let mut offsets = Vec::with_capacity(scan.records.len());
        for (k, (offset, payload)) in scan.records.iter().enumerate() {
            let entry: Entry = postcard::from_bytes(payload).map_err(|e| {
                invalid(format!(
                    "raft log segment {}: record at offset {} passes its checksum but does not decode: {e}",
                    path.display(),
                    magic_len + *offset as u64
                ))
            })?;
            let expected = first + k as u64;
            if entry.index() != expected {
                return Err(invalid(format!(
                    "raft log segment {}: record {k} has index {}, expected {expected}",
                    path.display(),
                    entry.index()
                )));
            }
            offsets.push(magic_len + *offset as u64);
            if purged_index.is_none_or(|p| expected > p) {
                entries.insert(expected, entry);
            }
        }
        let valid_len = magic_len + scan.valid_len as u64;
        if let Some(defect) = scan.defect {
            if !is_last {
                return Err(invalid(format!(
                    "raft log segment {} is corrupt at offset {valid_len} ({defect:?}) and is not the newest segment",
                    path.display()
                )));
            }
            tracing::warn!(
                file = %path.display(),
                offset = valid_len,
                dropped_bytes = bytes.len() as u64 - valid_len,
                ?defect,
                "truncating torn tail of raft log"
            );
            let file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(valid_len)?;
            file.sync_all()?;
        }
        Ok(Some(Segment {
            first_index: first,
            path,
            len: valid_len,
            offsets,
        }))
    }

    fn run(mut self, rx: mpsc::Receiver<Op>) {
        while let Ok(op) = rx.recv() {
            let mut batch = vec![op];
            while batch.len() < WRITER_BATCH_OPS {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let mut pending: Vec<IOFlushed<TypeConfig>> = Vec::new();
            for op in batch {
                match op {
                    Op::Append { records, done } => match self.append(&records) {
                        Ok(()) => pending.push(done),
                        Err(e) => {
                            self.flush_pending(&mut pending);
                            done.io_completed(Err(e));
                        }
                    },
                    Op::SaveCommitted { committed } => {
                        self.meta.committed = committed;
                        self.meta_dirty = true;
                    }
                    Op::SaveVote { vote, done } => {
                        self.flush_pending(&mut pending);
                        self.meta.vote = Some(vote);
                        let res = self.checked(Self::write_meta);
                        let _ = done.send(res);
                    }
                    Op::Truncate { keep_upto, done } => {
                        self.flush_pending(&mut pending);
                        let res = self.checked(|w| w.truncate(keep_upto));
                        let _ = done.send(res);
                    }
                    Op::Purge { upto, done } => {
                        self.flush_pending(&mut pending);
                        let res = self.checked(|w| w.purge(upto));
                        let _ = done.send(res);
                    }
                }
            }
            self.flush_pending(&mut pending);
            if self.meta_dirty {
                let res = self.checked(Self::write_meta);
                if let Err(e) = res {
                    tracing::error!(error = %e, "failed to persist raft committed index");
                }
            }
        }
        tracing::debug!(dir = %self.dir.display(), "raft log writer stopped");
    }

    /// Runs `f` unless an earlier error poisoned the writer; records a new error.
    fn checked(&mut self, f: impl FnOnce(&mut Self) -> io::Result<()>) -> io::Result<()> {
        if let Some(msg) = &self.failed {
            return Err(io::Error::other(format!("raft log failed earlier: {msg}")));
        }
        let res = f(self);
        if let Err(e) = &res {
            tracing::error!(error = %e, "raft log write failed; the log refuses further writes");
            self.failed = Some(e.to_string());
        }
        res
    }

    /// Makes queued appends durable, then reports them flushed (or failed).
    fn flush_pending(&mut self, pending: &mut Vec<IOFlushed<TypeConfig>>) {
        if pending.is_empty() {
            return;
        }
        let res = self.checked(Self::sync_active);
        for done in pending.drain(..) {
            done.io_completed(match &res {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            });
        }
    }

    fn sync_active(&mut self) -> io::Result<()> {
        if self.unsynced {
            if let Some((_, file)) = &self.active {
                file.sync_data()?;
            }
            self.unsynced = false;
        }
        Ok(())
    }

    fn append(&mut self, records: &[(u64, Vec<u8>)]) -> io::Result<()> {
        self.checked(|w| {
            for (index, frame) in records {
                w.append_one(*index, frame)?;
            }
            Ok(())
        })
    }

    fn append_one(&mut self, index: u64, frame: &[u8]) -> io::Result<()> {
        let needs_new = match self.segments.last_key_value() {
            None => true,
            Some((_, seg)) => seg.next_index() != index || seg.len >= SEGMENT_TARGET_BYTES,
        };
        if needs_new {
            if let Some((_, seg)) = self.segments.last_key_value() {
                debug_assert!(
                    seg.next_index() == index || seg.len >= SEGMENT_TARGET_BYTES,
                    "append at {index} leaves a hole after {}",
                    seg.next_index()
                );
            }
            self.rotate(index)?;
        }
        let (first, seg) = match self.segments.last_key_value() {
            Some((first, seg)) => (*first, seg),
            None => return Err(io::Error::other("raft log: no active segment")),
        };
        if self.active.as_ref().is_none_or(|(k, _)| *k != first) {
            let file = OpenOptions::new().append(true).open(&seg.path)?;
            self.active = Some((first, file));
        }
        let Some((_, file)) = self.active.as_mut() else {
            return Err(io::Error::other("raft log: no active segment"));
        };
        file.write_all(frame)?;
        self.unsynced = true;
        if let Some(seg) = self.segments.get_mut(&first) {
            seg.offsets.push(seg.len);
            seg.len += frame.len() as u64;
        }
        Ok(())
    }

    /// Starts a new segment whose first record will be `first_index`.
    fn rotate(&mut self, first_index: u64) -> io::Result<()> {
        self.sync_active()?;
        let path = self.seg_dir.join(segment_name(first_index));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        file.write_all(SEGMENT_MAGIC)?;
        file.sync_data()?;
        fsutil::sync_dir(&self.seg_dir)?;
        drop(file);
        let file = OpenOptions::new().append(true).open(&path)?;
        self.segments.insert(
            first_index,
            Segment {
                first_index,
                path,
                len: SEGMENT_MAGIC.len() as u64,
                offsets: Vec::new(),
            },
        );
        self.active = Some((first_index, file));
        Ok(())
    }

    fn truncate(&mut self, keep_upto: Option<u64>) -> io::Result<()> {
        self.sync_active()?;
        let cut_from = keep_upto.map_or(0, |k| k + 1);
        let mut removed = false;
        let firsts: Vec<u64> = self.segments.keys().rev().copied().collect();
        for first in firsts {
            let Some(seg) = self.segments.get_mut(&first) else {
                continue;
            };
            if seg.next_index() <= cut_from {
                break;
            }
            if seg.first_index >= cut_from {
                fs::remove_file(&seg.path)?;
                self.segments.remove(&first);
                if self.active.as_ref().is_some_and(|(k, _)| *k == first) {
                    self.active = None;
                }
                removed = true;
                continue;
            }
            let keep = usize::try_from(cut_from - seg.first_index)
                .map_err(|_| io::Error::other("raft log: index out of range"))?;
            let new_len = seg.offsets[keep];
            let file = OpenOptions::new().write(true).open(&seg.path)?;
            file.set_len(new_len)?;
            file.sync_all()?;
            seg.offsets.truncate(keep);
            seg.len = new_len;
            break;
        }
        if removed {
            fsutil::sync_dir(&self.seg_dir)?;
        }
        Ok(())
    }

    fn purge(&mut self, upto: LogId) -> io::Result<()> {
        self.sync_active()?;
        if self.meta.purged.is_none_or(|p| p < upto) {
            self.meta.purged = Some(upto);
        }
        // The purge point is durable before any file goes, so recovery never sees a hole.
        self.write_meta()?;
        let gone: Vec<u64> = self
            .segments
            .values()
            .filter(|s| s.last_index().is_none_or(|last| last <= upto.index()))
            .map(|s| s.first_index)
            .collect();
        for first in &gone {
            if let Some(seg) = self.segments.remove(first) {
                fs::remove_file(&seg.path)?;
            }
            if self.active.as_ref().is_some_and(|(k, _)| k == first) {
                self.active = None;
            }
        }
        if !gone.is_empty() {
            fsutil::sync_dir(&self.seg_dir)?;
        }
        Ok(())
    }

    fn write_meta(&mut self) -> io::Result<()> {
        let payload = postcard::to_stdvec(&self.meta).map_err(io::Error::other)?;
        let bytes = fsutil::encode_file(STATE_MAGIC, &payload)?;
        fsutil::write_atomic(&self.dir.join("state"), &bytes)?;
        self.meta_dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(parse_segment_name(&segment_name(0)), Some(0));
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("seg-1.log"), None);
        assert_eq!(parse_segment_name("LOCK"), None);
    }
}
