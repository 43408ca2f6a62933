//! Property test: random sequences of write, trim, write-zeroes, read, flush, checkpoint,
//! delete and reopen against an in-memory model, including sub-4K ranges, ranges touching the
//! chunk end, and ranges that are invalid (which must fail cleanly and change nothing).

mod common;

use std::collections::HashMap;

use basalt::ids::{ChunkKey, ChunkVersion, Epoch, VolumeId};
use blockd::store::engine::sim::SimRng;
use blockd::store::types::{Reply, Request, StoreError};
use bytes::Bytes;
use common::simstore::{SimStore, formatted_image};
use proptest::prelude::*;

const CHUNK_BYTES: u32 = 64 * 1024;

#[derive(Clone, Debug)]
enum Op {
    Write {
        chunk: u8,
        offset: u32,
        len: u32,
        fill: u8,
    },
    Trim {
        chunk: u8,
        offset: u32,
        len: u32,
    },
    Read {
        chunk: u8,
        offset: u32,
        len: u32,
    },
    Delete {
        chunk: u8,
    },
    Flush,
    Checkpoint,
    Reopen,
}

/// Offsets and lengths in sectors, allowed to overshoot the chunk or be zero (invalid cases).
fn range() -> impl Strategy<Value = (u32, u32)> {
    let sectors = CHUNK_BYTES / 512;
    prop_oneof![
        (0..sectors, 1..=16u32).prop_map(|(s, n)| (s * 512, n * 512)),
        (0..16u32, 1..=16u32).prop_map(|(b, n)| (b * 4096, n * 4096)),
        (0..=sectors, 0..=sectors).prop_map(|(s, n)| (s * 512, n * 512)),
        (1..sectors, 1..64u32)
            .prop_map(move |(n, k)| (CHUNK_BYTES - n * 512, n * 512 + k % 2 * 512)),
        (0..CHUNK_BYTES, 1..9000u32),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3u8, range(), any::<u8>())
            .prop_map(|(chunk, (offset, len), fill)| Op::Write { chunk, offset, len, fill }),
        2 => (0..3u8, range()).prop_map(|(chunk, (offset, len))| Op::Trim { chunk, offset, len }),
        3 => (0..3u8, range()).prop_map(|(chunk, (offset, len))| Op::Read { chunk, offset, len }),
        1 => (0..3u8).prop_map(|chunk| Op::Delete { chunk }),
        1 => Just(Op::Flush),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Reopen),
    ]
}

fn key(chunk: u8) -> ChunkKey {
    ChunkKey::new(VolumeId(1), u64::from(chunk))
}

fn expected_error(offset: u32, len: u32) -> Option<&'static str> {
    if len == 0 {
        Some("zero")
    } else if !offset.is_multiple_of(512) || !len.is_multiple_of(512) {
        Some("misaligned")
    } else if u64::from(offset) + u64::from(len) > u64::from(CHUNK_BYTES) {
        Some("range")
    } else {
        None
    }
}

fn check_error(result: Result<Reply, StoreError>, why: &str) {
    let ok = matches!(
        (&result, why),
        (Err(StoreError::ZeroLength), "zero")
            | (Err(StoreError::Misaligned { .. }), "misaligned")
            | (Err(StoreError::OutOfRange { .. }), "range")
    );
    assert!(ok, "expected a {why} error, got {result:?}");
}

struct Harness {
    store: SimStore,
    rng: SimRng,
    model: HashMap<u8, Vec<u8>>,
    version: u64,
}

impl Harness {
    fn next_version(&mut self) -> ChunkVersion {
        self.version += 1;
        ChunkVersion {
            epoch: Epoch(1),
            version: self.version,
        }
    }

    fn mutate(&mut self, chunk: u8, offset: u32, len: u32, fill: Option<u8>) {
        let version = self.next_version();
        let request = match fill {
            Some(fill) => {
                let data: Vec<u8> = (0..len).map(|i| fill ^ (i / 512) as u8).collect();
                let data = Bytes::from(data);
                Request::Write {
                    chunk: key(chunk),
                    offset,
                    data,
                    version,
                }
            }
            None => Request::Unmap {
                chunk: key(chunk),
                offset,
                len,
                version,
            },
        };
        let result = self.store.call(request, &mut self.rng);
        if let Some(why) = expected_error(offset, len) {
            return check_error(result, why);
        }
        assert!(
            matches!(result, Ok(Reply::Done)),
            "mutation failed: {result:?}"
        );
        let bytes = self
            .model
            .entry(chunk)
            .or_insert_with(|| vec![0; CHUNK_BYTES as usize]);
        let range = offset as usize..(offset + len) as usize;
        match fill {
            Some(fill) => {
                for (i, b) in bytes[range].iter_mut().enumerate() {
                    *b = fill ^ (i / 512) as u8;
                }
            }
            None => bytes[range].fill(0),
        }
    }

    fn read(&mut self, chunk: u8, offset: u32, len: u32) {
        let result = self.store.call(
            Request::Read {
                chunk: key(chunk),
                offset,
                len,
            },
            &mut self.rng,
        );
        if let Some(why) = expected_error(offset, len) {
            return check_error(result, why);
        }
        let Ok(Reply::Data(data)) = result else {
            panic!("read failed: {result:?}")
        };
        let zeros = vec![0; CHUNK_BYTES as usize];
        let model = self.model.get(&chunk).unwrap_or(&zeros);
        assert!(
            data[..] == model[offset as usize..(offset + len) as usize],
            "read mismatch"
        );
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Write {
                chunk,
                offset,
                len,
                fill,
            } => self.mutate(chunk, offset, len, Some(fill)),
            Op::Trim { chunk, offset, len } => self.mutate(chunk, offset, len, None),
            Op::Read { chunk, offset, len } => self.read(chunk, offset, len),
            Op::Delete { chunk } => {
                let result = self
                    .store
                    .call(Request::DeleteChunk { chunk: key(chunk) }, &mut self.rng);
                assert!(matches!(result, Ok(Reply::Done)));
                self.model.remove(&chunk);
            }
            Op::Flush => assert!(self.store.call(Request::Flush, &mut self.rng).is_ok()),
            Op::Checkpoint => {
                assert!(self.store.call(Request::Checkpoint, &mut self.rng).is_ok());
            }
            Op::Reopen => {
                self.store.settle(&mut self.rng);
                let drive = std::mem::replace(
                    &mut self.store.drive,
                    blockd::store::engine::sim::SimDrive::new(4096, 0),
                );
                let image = drive.flushed_image();
                self.store = SimStore::open(image, self.rng.next_u64())
                    .unwrap_or_else(|e| panic!("reopen failed: {}", e.0));
            }
        }
    }

    fn check_all(&mut self) {
        for chunk in 0..3 {
            self.read(chunk, 0, CHUNK_BYTES);
        }
        let chunks = match self.store.call(Request::ListChunks, &mut self.rng) {
            Ok(Reply::Chunks(chunks)) => chunks,
            other => panic!("list failed: {other:?}"),
        };
        for info in chunks {
            let has_data = self
                .model
                .get(&(info.chunk.index as u8))
                .is_some_and(|bytes| bytes.iter().any(|&b| b != 0));
            assert!(
                info.allocated_blocks > 0 || !has_data,
                "allocation of {info:?}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..60), seed in any::<u64>()) {
        let store = SimStore::open(formatted_image(seed), seed)
            .unwrap_or_else(|e| panic!("open failed: {}", e.0));
        let mut h = Harness { store, rng: SimRng::new(seed), model: HashMap::new(), version: 0 };
        for op in ops {
            h.apply(op);
        }
        h.check_all();
    }
}

/// Unwritten space costs nothing; trimming whole blocks gives the space back.
#[test]
fn thin_provisioning_accounting() {
    let mut rng = SimRng::new(5);
    let mut store = SimStore::open(formatted_image(5), 5).unwrap_or_else(|e| panic!("{}", e.0));
    let stats = |store: &mut SimStore, rng: &mut SimRng| match store.call(Request::Stats, rng) {
        Ok(Reply::Stats(s)) => s,
        other => panic!("stats failed: {other:?}"),
    };
    let empty = stats(&mut store, &mut rng);
    assert_eq!(empty.allocated_bytes, 0);
    assert_eq!(empty.free_bytes, empty.capacity_bytes);
    let version = ChunkVersion {
        epoch: Epoch(1),
        version: 1,
    };
    let data = Bytes::from(vec![7u8; 32 * 1024]);
    let write = Request::Write {
        chunk: key(0),
        offset: 0,
        data,
        version,
    };
    assert!(matches!(store.call(write, &mut rng), Ok(Reply::Done)));
    store.settle(&mut rng);
    assert_eq!(stats(&mut store, &mut rng).allocated_bytes, 32 * 1024);
    let trim = Request::Unmap {
        chunk: key(0),
        offset: 4096,
        len: 16 * 1024,
        version,
    };
    assert!(matches!(store.call(trim, &mut rng), Ok(Reply::Done)));
    store.settle(&mut rng);
    assert_eq!(stats(&mut store, &mut rng).allocated_bytes, 16 * 1024);
}
