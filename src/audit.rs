//! Acknowledged-write audit: the log format, payload generator and checker behind
//! `basalt audit` (`docs/audit.md`).
//!
//! A writer logs an [`RecordKind::Intent`] record before it sends a write and an
//! [`RecordKind::Ack`] record once the server acknowledged it. Payloads are not stored: every
//! 4 KiB block of a write is generated from (seed, sequence, block number) by [`fill_block`],
//! so the checker regenerates what each block must hold. [`Expectations::replay`] turns the log
//! into, per block, the content that must be there: the latest acknowledged write (or zeroes
//! if none), plus any later writes that were sent but never acknowledged, which may or may not
//! have landed. [`Expectations::verify_block`] judges one block read back from the volume.
//!
//! The writer never has two overlapping writes in flight, so the log order of intents is the
//! order the volume must apply them in: a later acknowledged write supersedes everything
//! before it on its blocks.
//!
//! # Log format (version 1, little-endian)
//! A 32-byte [`LogHeader`] (magic `BSLTAUDL`, version, seed, crc32c of the preceding bytes),
//! then 32-byte [`RawRecord`]s, each ending in the crc32c of its first 28 bytes. A writer
//! killed mid-append leaves a short or torn last record: [`decode_log`] reports it as a
//! [`TornTail`] and ignores it. A bad record followed by a valid one is corruption, not a
//! torn tail, and fails the decode.

use std::collections::BTreeMap;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::units::BLOCK_SIZE_BYTES;

/// Granularity of audit writes and checks: the store's block.
pub const AUDIT_BLOCK_BYTES: u64 = BLOCK_SIZE_BYTES as u64;
/// First bytes of an audit log.
pub const LOG_MAGIC: [u8; 8] = *b"BSLTAUDL";
/// Log format version written and understood.
pub const LOG_VERSION: u32 = 1;
/// First bytes of every generated block: lets the checker say which write a block came from.
pub const BLOCK_MAGIC: [u8; 8] = *b"BSLTAUDB";
/// Bytes of the header of every generated block (magic, seed, sequence, block number).
pub const BLOCK_HEADER_BYTES: usize = 32;
/// Largest write the log accepts (a sanity bound on a record's length field).
pub const WRITE_BYTES_MAX: u64 = 32 << 20;
/// Unacknowledged writes remembered per block; older ones are superseded in practice, and
/// the bound keeps a pathological log from growing the checker without limit.
const MAYBE_PER_BLOCK_MAX: usize = 64;

/// The log's header.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct LogHeader {
    /// [`LOG_MAGIC`].
    pub magic: [u8; 8],
    /// [`LOG_VERSION`].
    pub version: U32,
    /// Reserved, zero.
    pub reserved: U32,
    /// Seed of the payload generator.
    pub seed: U64,
    /// crc32c of the 24 bytes before it.
    pub crc: U32,
    /// Reserved, zero.
    pub reserved2: U32,
}

/// One log record as stored.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct RawRecord {
    /// [`RecordKind`] code.
    pub kind: u8,
    /// Reserved, zero.
    pub reserved: [u8; 3],
    /// Bytes written (a multiple of [`AUDIT_BLOCK_BYTES`]).
    pub length: U32,
    /// Sequence number of the write.
    pub seq: U64,
    /// Byte offset (a multiple of [`AUDIT_BLOCK_BYTES`]).
    pub offset: U64,
    /// crc32c of the whole payload.
    pub payload_crc: U32,
    /// crc32c of the 28 bytes before it.
    pub crc: U32,
}

const _: () = assert!(size_of::<LogHeader>() == 32);
const _: () = assert!(size_of::<RawRecord>() == 32);

/// Bytes of the log header.
pub const LOG_HEADER_BYTES: usize = size_of::<LogHeader>();
/// Bytes of one log record.
pub const RECORD_BYTES: usize = size_of::<RawRecord>();

/// What a record says about its write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// About to be sent: it may land from now on.
    Intent,
    /// The server acknowledged it.
    Ack,
}

impl RecordKind {
    fn code(self) -> u8 {
        match self {
            Self::Intent => 1,
            Self::Ack => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Intent),
            2 => Some(Self::Ack),
            _ => None,
        }
    }
}

/// One decoded log record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Intent or acknowledgement.
    pub kind: RecordKind,
    /// Sequence number of the write (increasing over intents).
    pub seq: u64,
    /// Byte offset.
    pub offset: u64,
    /// Bytes written.
    pub length: u32,
    /// crc32c of the payload.
    pub payload_crc: u32,
}

impl Record {
    /// The record's 32 stored bytes.
    pub fn encode(&self) -> [u8; RECORD_BYTES] {
        let mut raw = RawRecord {
            kind: self.kind.code(),
            reserved: [0; 3],
            length: U32::new(self.length),
            seq: U64::new(self.seq),
            offset: U64::new(self.offset),
            payload_crc: U32::new(self.payload_crc),
            crc: U32::new(0),
        };
        raw.crc = U32::new(crc32c::crc32c(&raw.as_bytes()[..RECORD_BYTES - 4]));
        let mut out = [0; RECORD_BYTES];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    /// Decodes and validates one stored record; `None` if it is damaged or malformed.
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let (raw, _) = RawRecord::read_from_prefix(bytes).ok()?;
        if crc32c::crc32c(&raw.as_bytes()[..RECORD_BYTES - 4]) != raw.crc.get() {
            return None;
        }
        let kind = RecordKind::from_code(raw.kind)?;
        let (offset, length) = (raw.offset.get(), raw.length.get());
        let aligned = offset.is_multiple_of(AUDIT_BLOCK_BYTES)
            && u64::from(length).is_multiple_of(AUDIT_BLOCK_BYTES);
        let sane = length > 0 && u64::from(length) <= WRITE_BYTES_MAX;
        (aligned
            && sane
            && raw.reserved == [0; 3]
            && offset.checked_add(u64::from(length)).is_some())
        .then_some(Record {
            kind,
            seq: raw.seq.get(),
            offset,
            length,
            payload_crc: raw.payload_crc.get(),
        })
    }

    /// Block numbers the write covers.
    pub fn blocks(&self) -> std::ops::Range<u64> {
        let first = self.offset / AUDIT_BLOCK_BYTES;
        first..first + u64::from(self.length) / AUDIT_BLOCK_BYTES
    }
}

/// The 32-byte header of a log for `seed`.
pub fn encode_header(seed: u64) -> [u8; LOG_HEADER_BYTES] {
    let mut header = LogHeader {
        magic: LOG_MAGIC,
        version: U32::new(LOG_VERSION),
        reserved: U32::new(0),
        seed: U64::new(seed),
        crc: U32::new(0),
        reserved2: U32::new(0),
    };
    header.crc = U32::new(crc32c::crc32c(&header.as_bytes()[..24]));
    let mut out = [0; LOG_HEADER_BYTES];
    out.copy_from_slice(header.as_bytes());
    out
}

/// Why a log cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// Shorter than its header, wrong magic or a damaged header.
    #[error("not an audit log (bad header)")]
    BadHeader,
    /// Written by another format version.
    #[error("audit log version {0}, this tool reads version {LOG_VERSION}")]
    Version(u32),
    /// A damaged record with valid records after it.
    #[error("audit log record {index} (byte {byte}) is corrupt")]
    Corrupt {
        /// Record number, from 0.
        index: u64,
        /// Its byte offset in the log.
        byte: u64,
    },
    /// Records that contradict each other (a writer bug or a spliced log).
    #[error("audit log record {index} is inconsistent: {reason}")]
    Inconsistent {
        /// Record number, from 0.
        index: u64,
        /// What is wrong.
        reason: String,
    },
}

/// A damaged or short last record, left by a writer killed mid-append; ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// Byte offset of the damaged record.
    pub byte: u64,
    /// Bytes from there to the end of the log.
    pub bytes: u64,
}

/// A decoded log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedLog {
    /// Seed of the payload generator.
    pub seed: u64,
    /// Every valid record, in log order.
    pub records: Vec<Record>,
    /// The ignored damaged tail, if any.
    pub torn_tail: Option<TornTail>,
}

impl DecodedLog {
    /// Bytes of the valid prefix (where a writer appending to this log continues).
    pub fn valid_bytes(&self) -> u64 {
        (LOG_HEADER_BYTES + self.records.len() * RECORD_BYTES) as u64
    }

    /// The next unused sequence number.
    pub fn next_seq(&self) -> u64 {
        self.records.iter().map(|r| r.seq + 1).max().unwrap_or(1)
    }
}

/// Decodes a whole log (see the module doc for torn tails versus corruption).
pub fn decode_log(bytes: &[u8]) -> Result<DecodedLog, LogError> {
    let Ok((header, _)) = LogHeader::read_from_prefix(bytes) else {
        return Err(LogError::BadHeader);
    };
    if header.magic != LOG_MAGIC || crc32c::crc32c(&header.as_bytes()[..24]) != header.crc.get() {
        return Err(LogError::BadHeader);
    }
    if header.version.get() != LOG_VERSION {
        return Err(LogError::Version(header.version.get()));
    }
    let body = &bytes[LOG_HEADER_BYTES..];
    let mut records = Vec::with_capacity(body.len() / RECORD_BYTES);
    let mut torn_tail = None;
    for (index, chunk) in body.chunks(RECORD_BYTES).enumerate() {
        if let Some(record) = Record::decode(chunk) {
            records.push(record);
            continue;
        }
        let byte = (LOG_HEADER_BYTES + index * RECORD_BYTES) as u64;
        let rest = ((index + 1) * RECORD_BYTES).min(body.len());
        if body[rest..]
            .chunks(RECORD_BYTES)
            .any(|chunk| Record::decode(chunk).is_some())
        {
            // Valid records follow: not a torn append.
            return Err(LogError::Corrupt {
                index: index as u64,
                byte,
            });
        }
        torn_tail = Some(TornTail {
            byte,
            bytes: bytes.len() as u64 - byte,
        });
        break;
    }
    Ok(DecodedLog {
        seed: header.seed.get(),
        records,
        torn_tail,
    })
}

/// splitmix64: a tiny, well-mixed generator; the audit needs reproducibility, not secrecy.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting at `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0; the tiny modulo bias does not matter here).
    pub fn below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound > 0);
        self.next_u64() % bound.max(1)
    }
}

/// Fills `out` (one block) with what write `seq` of a log seeded `seed` puts in block `block`:
/// a header naming all three, then pseudo-random bytes.
pub fn fill_block(seed: u64, seq: u64, block: u64, out: &mut [u8]) {
    debug_assert_eq!(out.len() as u64, AUDIT_BLOCK_BYTES);
    out[..8].copy_from_slice(&BLOCK_MAGIC);
    out[8..16].copy_from_slice(&seed.to_le_bytes());
    out[16..24].copy_from_slice(&seq.to_le_bytes());
    out[24..32].copy_from_slice(&block.to_le_bytes());
    let mut rng = SplitMix64::new(
        seed ^ seq.wrapping_mul(0xd6e8_feb8_6659_fd93) ^ block.wrapping_mul(0xa076_1d64_78bd_642f),
    );
    for word in out[BLOCK_HEADER_BYTES..].chunks_mut(8) {
        let bytes = rng.next_u64().to_le_bytes();
        word.copy_from_slice(&bytes[..word.len()]);
    }
}

/// The whole payload of write `seq` at `offset` of `length` bytes (both block multiples).
pub fn payload(seed: u64, seq: u64, offset: u64, length: u32) -> Vec<u8> {
    let mut out = vec![0; length as usize];
    let first = offset / AUDIT_BLOCK_BYTES;
    for (i, block) in out.chunks_mut(AUDIT_BLOCK_BYTES as usize).enumerate() {
        fill_block(seed, seq, first + i as u64, block);
    }
    out
}

/// What a block read back holds, as far as its content tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockOrigin {
    /// All zeroes (never written, or the volume was fresh).
    Zero,
    /// A generated block whose header names this seed, sequence and block number (its body
    /// may still differ from what they generate).
    Generated {
        /// Seed named in the block.
        seed: u64,
        /// Sequence named in the block.
        seq: u64,
        /// Block number named in the block.
        block: u64,
    },
    /// Anything else.
    Foreign,
}

impl BlockOrigin {
    /// Reads the origin of a block's content from its header.
    pub fn of(data: &[u8]) -> BlockOrigin {
        if data.iter().all(|b| *b == 0) {
            return BlockOrigin::Zero;
        }
        if data.len() < BLOCK_HEADER_BYTES || data[..8] != BLOCK_MAGIC {
            return BlockOrigin::Foreign;
        }
        let word = |at: usize| {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&data[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        BlockOrigin::Generated {
            seed: word(8),
            seq: word(16),
            block: word(24),
        }
    }
}

impl std::fmt::Display for BlockOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Zero => write!(f, "zeroes"),
            Self::Generated { seed, seq, block } => {
                write!(f, "write {seq} (seed {seed:#x}, block {block})")
            }
            Self::Foreign => write!(f, "unrecognised data"),
        }
    }
}

/// What one block may hold after the log's writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockExpectation {
    /// The latest acknowledged write (`None`: zeroes, nothing acknowledged).
    pub acked: Option<u64>,
    /// Later writes that were sent but never acknowledged: each may or may not have landed.
    pub maybe: Vec<u64>,
}

impl BlockExpectation {
    /// Whether the block's content is not fully determined.
    pub fn is_either(&self) -> bool {
        !self.maybe.is_empty()
    }
}

/// Counts from a replay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Intent records.
    pub intents: u64,
    /// Ack records.
    pub acks: u64,
    /// Intents never acknowledged (lost with a connection, or failed).
    pub unacknowledged: u64,
}

/// Per block, what the volume must hold; built from a log by [`Expectations::replay`].
#[derive(Clone, Debug, Default)]
pub struct Expectations {
    seed: u64,
    blocks: BTreeMap<u64, BlockExpectation>,
}

/// The judgement on one block read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The block holds an allowed content.
    Ok,
    /// It does not.
    Mismatch {
        /// What it should hold.
        expected: BlockExpectation,
        /// What it holds.
        found: BlockOrigin,
    },
}

/// State of [`Expectations::replay`] between records.
struct Replay {
    seed: u64,
    blocks: BTreeMap<u64, BlockExpectation>,
    /// Intents not acknowledged (yet), by sequence.
    pending: BTreeMap<u64, Record>,
    stats: ReplayStats,
    last_seq: u64,
}

impl Replay {
    fn intent(&mut self, record: &Record) -> Result<(), String> {
        if record.seq <= self.last_seq {
            return Err(format!("sequence {} after {}", record.seq, self.last_seq));
        }
        let crc = crc32c::crc32c(&payload(
            self.seed,
            record.seq,
            record.offset,
            record.length,
        ));
        if crc != record.payload_crc {
            return Err(format!(
                "payload checksum {:#010x} of write {} is not the generator's {crc:#010x}",
                record.payload_crc, record.seq
            ));
        }
        self.last_seq = record.seq;
        self.stats.intents += 1;
        self.pending.insert(record.seq, *record);
        for block in record.blocks() {
            let entry = self.blocks.entry(block).or_default();
            if entry.maybe.len() >= MAYBE_PER_BLOCK_MAX {
                entry.maybe.remove(0);
            }
            entry.maybe.push(record.seq);
        }
        Ok(())
    }

    fn ack(&mut self, record: &Record) -> Result<(), String> {
        let Some(intent) = self.pending.remove(&record.seq) else {
            return Err(format!(
                "acknowledgement of write {} without a pending intent",
                record.seq
            ));
        };
        if (intent.offset, intent.length, intent.payload_crc)
            != (record.offset, record.length, record.payload_crc)
        {
            return Err(format!(
                "acknowledgement of write {} differs from its intent",
                record.seq
            ));
        }
        self.stats.acks += 1;
        for block in record.blocks() {
            let entry = self.blocks.entry(block).or_default();
            // Writes before this one were sent before it: superseded. Later unacknowledged
            // ones may still have landed after it.
            if entry.acked.is_none_or(|acked| acked < record.seq) {
                entry.acked = Some(record.seq);
            }
            entry.maybe.retain(|seq| *seq > record.seq);
        }
        Ok(())
    }
}

impl Expectations {
    /// Replays `log`: intents in sequence order, each ack after its intent, and payload
    /// checksums that match the generator (so the log and this checker agree on payloads).
    pub fn replay(log: &DecodedLog) -> Result<(Expectations, ReplayStats), LogError> {
        let mut replay = Replay {
            seed: log.seed,
            blocks: BTreeMap::new(),
            pending: BTreeMap::new(),
            stats: ReplayStats::default(),
            last_seq: 0,
        };
        for (index, record) in log.records.iter().enumerate() {
            let result = match record.kind {
                RecordKind::Intent => replay.intent(record),
                RecordKind::Ack => replay.ack(record),
            };
            result.map_err(|reason| LogError::Inconsistent {
                index: index as u64,
                reason,
            })?;
        }
        replay.stats.unacknowledged = replay.pending.len() as u64;
        Ok((
            Expectations {
                seed: log.seed,
                blocks: replay.blocks,
            },
            replay.stats,
        ))
    }

    /// Every block the log wrote, in order, with what it may hold.
    pub fn blocks(&self) -> impl Iterator<Item = (u64, &BlockExpectation)> {
        self.blocks
            .iter()
            .map(|(block, expected)| (*block, expected))
    }

    /// Number of blocks the log wrote.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether the log wrote nothing.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Judges block `block` read back as `data`. Blocks the log never wrote are always `Ok`.
    pub fn verify_block(&self, block: u64, data: &[u8]) -> Verdict {
        let Some(expected) = self.blocks.get(&block) else {
            return Verdict::Ok;
        };
        let found = BlockOrigin::of(data);
        let allowed = match found {
            BlockOrigin::Zero => expected.acked.is_none(),
            BlockOrigin::Generated {
                seed,
                seq,
                block: named,
            } => {
                let candidate = expected.acked == Some(seq) || expected.maybe.contains(&seq);
                candidate && seed == self.seed && named == block && {
                    let mut want = vec![0; AUDIT_BLOCK_BYTES as usize];
                    fill_block(self.seed, seq, block, &mut want);
                    want == data
                }
            }
            BlockOrigin::Foreign => false,
        };
        if allowed {
            Verdict::Ok
        } else {
            Verdict::Mismatch {
                expected: expected.clone(),
                found,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Goal: the log survives a torn last record but not silent corruption, and the checker
    //! accepts exactly the contents the writes allow. Method: hand-built logs and blocks.

    use super::*;

    const SEED: u64 = 0x5eed;

    fn intent(seq: u64, offset: u64, length: u32) -> Record {
        Record {
            kind: RecordKind::Intent,
            seq,
            offset,
            length,
            payload_crc: crc32c::crc32c(&payload(SEED, seq, offset, length)),
        }
    }

    fn ack(record: Record) -> Record {
        Record {
            kind: RecordKind::Ack,
            ..record
        }
    }

    fn log_bytes(records: &[Record]) -> Vec<u8> {
        let mut out = encode_header(SEED).to_vec();
        for record in records {
            out.extend_from_slice(&record.encode());
        }
        out
    }

    fn block(seq: u64, block: u64) -> Vec<u8> {
        let mut out = vec![0; AUDIT_BLOCK_BYTES as usize];
        fill_block(SEED, seq, block, &mut out);
        out
    }

    #[test]
    fn records_round_trip() {
        let a = intent(7, 8192, 12288);
        assert_eq!(Record::decode(&a.encode()), Some(a));
        assert_eq!(a.blocks(), 2..5);
        let log = log_bytes(&[a, ack(a)]);
        let decoded = decode_log(&log).unwrap();
        assert_eq!(decoded.records, [a, ack(a)]);
        assert_eq!(decoded.seed, SEED);
        assert_eq!(decoded.torn_tail, None);
        assert_eq!(decoded.valid_bytes(), log.len() as u64);
        assert_eq!(decoded.next_seq(), 8);
    }

    #[test]
    fn torn_last_record_is_ignored_but_corruption_is_not() {
        let (a, b) = (intent(1, 0, 4096), intent(2, 4096, 4096));
        let log = log_bytes(&[a, ack(a), b]);
        // Short tail.
        let short = &log[..log.len() - 5];
        let decoded = decode_log(short).unwrap();
        assert_eq!(decoded.records, [a, ack(a)]);
        let tail = decoded.torn_tail.unwrap();
        assert_eq!(tail.byte, (LOG_HEADER_BYTES + 2 * RECORD_BYTES) as u64);
        assert_eq!(tail.bytes, RECORD_BYTES as u64 - 5);
        // Damaged last record.
        let mut damaged = log.clone();
        let last = damaged.len() - 3;
        damaged[last] ^= 0xff;
        let decoded = decode_log(&damaged).unwrap();
        assert_eq!(decoded.records.len(), 2);
        assert!(decoded.torn_tail.is_some());
        // Damaged middle record: corruption.
        let mut corrupt = log.clone();
        corrupt[LOG_HEADER_BYTES + RECORD_BYTES + 10] ^= 1;
        assert_eq!(
            decode_log(&corrupt),
            Err(LogError::Corrupt {
                index: 1,
                byte: (LOG_HEADER_BYTES + RECORD_BYTES) as u64
            })
        );
        // Header damage and versions.
        let mut bad = log.clone();
        bad[0] = b'X';
        assert_eq!(decode_log(&bad), Err(LogError::BadHeader));
        assert_eq!(decode_log(&log[..10]), Err(LogError::BadHeader));
        let mut future = log;
        future[8] = 2;
        let crc = crc32c::crc32c(&future[..24]);
        future[24..28].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_log(&future), Err(LogError::Version(2)));
    }

    #[test]
    fn acknowledged_writes_must_be_there_unacknowledged_may_be() {
        let a = intent(1, 0, 8192); // blocks 0, 1
        let b = intent(2, 4096, 8192); // blocks 1, 2: acked, supersedes a on block 1
        let c = intent(3, 8192, 4096); // block 2: never acked
        let log = decode_log(&log_bytes(&[a, ack(a), b, c, ack(b)])).unwrap();
        let (expect, stats) = Expectations::replay(&log).unwrap();
        assert_eq!(
            stats,
            ReplayStats {
                intents: 3,
                acks: 2,
                unacknowledged: 1
            }
        );
        assert_eq!(expect.len(), 3);
        assert_eq!(expect.verify_block(0, &block(1, 0)), Verdict::Ok);
        assert_eq!(expect.verify_block(1, &block(2, 1)), Verdict::Ok);
        // Block 1 must not hold the superseded write, nor zeroes.
        assert!(matches!(
            expect.verify_block(1, &block(1, 1)),
            Verdict::Mismatch { .. }
        ));
        assert!(matches!(
            expect.verify_block(1, &[0; 4096]),
            Verdict::Mismatch {
                found: BlockOrigin::Zero,
                ..
            }
        ));
        // Block 2: the acked write or the unacknowledged later one.
        assert_eq!(expect.verify_block(2, &block(2, 2)), Verdict::Ok);
        assert_eq!(expect.verify_block(2, &block(3, 2)), Verdict::Ok);
        // A block from the right write but the wrong place, or with a damaged body.
        assert!(matches!(
            expect.verify_block(0, &block(1, 1)),
            Verdict::Mismatch { .. }
        ));
        let mut damaged = block(1, 0);
        damaged[4000] ^= 1;
        assert!(matches!(
            expect.verify_block(0, &damaged),
            Verdict::Mismatch {
                found: BlockOrigin::Generated { seq: 1, .. },
                ..
            }
        ));
        // Untouched blocks are not judged.
        assert_eq!(expect.verify_block(9, &[1; 4096]), Verdict::Ok);
    }

    #[test]
    fn never_acknowledged_blocks_may_be_zero() {
        let a = intent(1, 0, 4096);
        let log = decode_log(&log_bytes(&[a])).unwrap();
        let (expect, _) = Expectations::replay(&log).unwrap();
        assert_eq!(expect.verify_block(0, &[0; 4096]), Verdict::Ok);
        assert_eq!(expect.verify_block(0, &block(1, 0)), Verdict::Ok);
        assert!(matches!(
            expect.verify_block(0, &[7; 4096]),
            Verdict::Mismatch {
                found: BlockOrigin::Foreign,
                ..
            }
        ));
    }

    #[test]
    fn inconsistent_logs_are_refused() {
        let a = intent(2, 0, 4096);
        let b = intent(1, 0, 4096);
        let log = decode_log(&log_bytes(&[a, b])).unwrap();
        assert!(matches!(
            Expectations::replay(&log),
            Err(LogError::Inconsistent { index: 1, .. })
        ));
        let log = decode_log(&log_bytes(&[ack(a)])).unwrap();
        assert!(matches!(
            Expectations::replay(&log),
            Err(LogError::Inconsistent { index: 0, .. })
        ));
        let mut wrong = intent(3, 0, 4096);
        wrong.payload_crc ^= 1;
        let log = decode_log(&log_bytes(&[wrong])).unwrap();
        assert!(matches!(
            Expectations::replay(&log),
            Err(LogError::Inconsistent { .. })
        ));
    }
}
