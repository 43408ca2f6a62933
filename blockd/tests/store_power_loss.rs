//! Power-loss test: concurrent writers on a simulated drive with a volatile write cache, cut
//! off at thousands of random points (including during recovery). After every crash, every
//! acknowledged write must read back, every other block must hold an old or a new version in
//! full, and no block may fail its checksum.

mod common;

use basalt::ids::{ChunkKey, ChunkVersion, Epoch, VolumeId};
use blockd::store::engine::sim::{SimDrive, SimRng};
use blockd::store::types::{Reply, Request, StoreError};
use bytes::Bytes;
use common::model::Model;
use common::simstore::{SimStore, formatted_image};

const CHUNKS: u64 = 4;
const CHUNK_BYTES: u32 = 64 * 1024;
const BLOCKS_PER_CHUNK: u32 = CHUNK_BYTES / 4096;
const IN_FLIGHT_MAX: usize = 12;

fn chunk(i: u64) -> ChunkKey {
    ChunkKey::new(VolumeId(7), i)
}

/// A random sector-aligned range inside a chunk, biased towards interesting shapes.
fn random_range(rng: &mut SimRng) -> (u32, u32) {
    let sectors = CHUNK_BYTES / 512;
    match rng.below(4) {
        // Sub-block.
        0 => {
            let start = rng.below(u64::from(sectors)) as u32;
            let len = 1 + rng.below(u64::from((sectors - start).min(8))) as u32;
            (start * 512, len * 512)
        }
        // Whole blocks, small (journaled).
        1 => {
            let start = rng.below(u64::from(BLOCKS_PER_CHUNK)) as u32;
            let len = 1 + rng.below(u64::from((BLOCKS_PER_CHUNK - start).min(4))) as u32;
            (start * 4096, len * 4096)
        }
        // Large, reaching the chunk's end (redirected).
        2 => {
            let start = rng.below(4) as u32;
            (start * 4096, CHUNK_BYTES - start * 4096)
        }
        // Anything.
        _ => {
            let start = rng.below(u64::from(sectors)) as u32;
            let len = 1 + rng.below(u64::from(sectors - start)) as u32;
            (start * 512, len * 512)
        }
    }
}

fn pattern(rng: &mut SimRng, len: u32) -> Bytes {
    let seed = rng.next_u64();
    let mut data = vec![0u8; len as usize];
    for (i, word) in data.chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(
            &(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes(),
        );
    }
    Bytes::from(data)
}

struct Workload {
    model: Model,
    in_flight: Vec<(u64, bool)>,
    version: u64,
}

impl Workload {
    fn issue(&mut self, store: &mut SimStore, rng: &mut SimRng) {
        let key = chunk(rng.below(CHUNKS));
        self.version += 1;
        let version = ChunkVersion {
            epoch: Epoch(1),
            version: self.version,
        };
        let roll = rng.below(100);
        let (tag, mutating) = if roll < 70 {
            let (offset, len) = random_range(rng);
            let data = pattern(rng, len);
            let tag = store.submit(Request::Write {
                chunk: key,
                offset,
                data: data.clone(),
                version,
            });
            self.model.issue(tag, key, offset, len, Some(&data));
            (tag, true)
        } else if roll < 85 {
            let (offset, len) = random_range(rng);
            let tag = store.submit(Request::Unmap {
                chunk: key,
                offset,
                len,
                version,
            });
            self.model.issue(tag, key, offset, len, None);
            (tag, true)
        } else if roll < 88 {
            let tag = store.submit(Request::DeleteChunk { chunk: key });
            self.model.issue_delete(tag, key, BLOCKS_PER_CHUNK);
            (tag, true)
        } else if roll < 93 {
            (store.submit(Request::Flush), false)
        } else if roll < 95 {
            (store.submit(Request::Checkpoint), false)
        } else {
            let (offset, len) = random_range(rng);
            (
                store.submit(Request::Read {
                    chunk: key,
                    offset,
                    len,
                }),
                false,
            )
        };
        self.in_flight.push((tag, mutating));
    }

    fn collect(&mut self, store: &mut SimStore) {
        let model = &mut self.model;
        self.in_flight
            .retain(|&(tag, mutating)| match store.replies.remove(&tag) {
                None => true,
                Some(Ok(_)) => {
                    if mutating {
                        model.ack(tag);
                    }
                    false
                }
                Some(Err(e)) => panic!("request failed: {e}"),
            });
    }
}

/// Reads every known block after recovery and checks it against the model.
fn verify(store: &mut SimStore, model: &mut Model, rng: &mut SimRng) {
    for c in 0..CHUNKS {
        let key = chunk(c);
        let reply = store.call(
            Request::Read {
                chunk: key,
                offset: 0,
                len: CHUNK_BYTES,
            },
            rng,
        );
        let data = match reply {
            Ok(Reply::Data(data)) => data,
            Err(StoreError::Corrupt { chunk, block }) => {
                panic!("checksum error after crash: {chunk} block {block}")
            }
            other => panic!("read failed: {other:?}"),
        };
        for block in 0..BLOCKS_PER_CHUNK {
            let bytes = &data[block as usize * 4096..][..4096];
            assert!(
                model.allowed(key, block, bytes),
                "chunk {c} block {block}: content is neither the acknowledged nor a later version: {}\nrecovery: {:?}",
                model.explain(key, block, bytes),
                store.report
            );
            model.settle_after_crash(key, block, bytes);
        }
    }
    model.forget_in_flight();
}

/// One seed: format, then several lives each ended by a power cut at a random point.
fn run_seed(seed: u64, lives: usize, totals: &mut [u64; 4]) -> usize {
    let mut rng = SimRng::new(seed);
    let mut image = formatted_image(seed);
    let mut work = Workload {
        model: Model::default(),
        in_flight: Vec::new(),
        version: 0,
    };
    let mut crashes = 0;
    for _ in 0..lives {
        let mut store = open_surviving_recovery_crashes(image, &mut rng, &mut crashes);
        verify(&mut store, &mut work.model, &mut rng);
        let r = store.report;
        for (t, v) in totals.iter_mut().zip([
            r.batches,
            r.records_applied,
            r.records_skipped,
            r.records_dropped,
        ]) {
            *t += v;
        }
        let steps = rng.below(400);
        for _ in 0..steps {
            if work.in_flight.len() < IN_FLIGHT_MAX && rng.chance(1, 2) {
                work.issue(&mut store, &mut rng);
            }
            store.step(&mut rng, 6);
            work.collect(&mut store);
        }
        assert!(store.core.failure().is_none());
        if std::env::var("BASALT_SIM_CLEAN").is_ok() {
            while !work.in_flight.is_empty() {
                store.step(&mut rng, 6);
                work.collect(&mut store);
            }
            store.settle(&mut rng);
            work.in_flight.clear();
            image = store.drive.flushed_image();
            crashes += 1;
            continue;
        }
        work.in_flight.clear();
        image = store.drive.crash_image();
        crashes += 1;
    }
    crashes
}

/// Opens the image; sometimes cuts power during recovery itself first.
fn open_surviving_recovery_crashes(
    mut image: Vec<u8>,
    rng: &mut SimRng,
    crashes: &mut usize,
) -> SimStore {
    while rng.chance(1, 4) {
        let mut drive = SimDrive::from_image(image, rng.next_u64());
        drive.fail_after_ops = Some(rng.below(40));
        match SimStore::open_drive(drive, Default::default()) {
            Ok(store) => {
                image = store.drive.crash_image();
            }
            Err(failed) => image = failed.1.crash_image(),
        }
        *crashes += 1;
    }
    match SimStore::open(image, rng.next_u64()) {
        Ok(store) => store,
        Err(failed) => panic!("recovery failed: {}", failed.0),
    }
}

#[test]
fn acknowledged_writes_survive_power_loss() {
    let seeds: u64 = std::env::var("BASALT_POWER_LOSS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut crashes = 0;
    let mut totals = [0u64; 4];
    let first: u64 = std::env::var("BASALT_POWER_LOSS_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for seed in first..first + seeds {
        crashes += run_seed(seed, 8, &mut totals);
    }
    let [batches, applied, skipped, dropped] = totals;
    eprintln!(
        "replayed {batches} batches: {applied} records applied, {skipped} skipped, {dropped} dropped"
    );
    assert!(
        applied > 0 && skipped > 0,
        "the workload must exercise replay"
    );
    assert!(crashes as u64 >= seeds * 8);
    eprintln!("{crashes} crash points verified over {seeds} seeds");
}
