//! Drives a `StoreCore` over a `SimDrive` deterministically, with random completion order.

use std::collections::HashMap;

use basalt::ids::{ClusterId, NodeId};
use blockd::store::core::{CoreOptions, StoreCore};
use blockd::store::engine::DriveEngine;
use blockd::store::engine::sim::{SimDrive, SimRng};
use blockd::store::geometry::GeometryOptions;
use blockd::store::mkfs::{FormatOptions, format_drive};
use blockd::store::recovery::{Expect, OpenError, RecoveryReport, recover};
use blockd::store::types::{Reply, Request, StoreError};

/// Small geometry so tests exercise wrap-around, checkpoints and both write paths.
pub fn small_geometry() -> GeometryOptions {
    GeometryOptions {
        chunk_size_bytes: Some(64 * 1024),
        journal_size_bytes: Some(256 * 1024),
        journal_batch_size_max: Some(64 * 1024),
        slot_count: Some(32),
    }
}

/// Device size used with `small_geometry`.
pub const SIM_DEVICE_BYTES: u64 = 8 << 20;

/// A freshly formatted simulated drive image.
pub fn formatted_image(seed: u64) -> Vec<u8> {
    let mut drive = SimDrive::new(SIM_DEVICE_BYTES, seed);
    let opts = FormatOptions {
        cluster_id: ClusterId(uuid::Uuid::from_u128(1)),
        node_id: NodeId(1),
        drive_id: None,
        geometry: small_geometry(),
        force: false,
    };
    format_drive(&mut drive, &opts, 0).expect("format a simulated drive");
    drive.flushed_image()
}

/// A store core running over a simulated drive.
pub struct SimStore {
    pub core: StoreCore,
    pub drive: SimDrive,
    pub replies: HashMap<u64, Result<Reply, StoreError>>,
    pub report: RecoveryReport,
    next_tag: u64,
}

impl SimStore {
    /// Recovers the store in `image`; the drive then completes operations in random order.
    pub fn open(image: Vec<u8>, seed: u64) -> Result<Self, Box<(OpenError, SimDrive)>> {
        let drive = SimDrive::from_image(image, seed);
        Self::open_drive(drive, CoreOptions::default())
    }

    /// Recovers the store on `drive`.
    pub fn open_drive(
        mut drive: SimDrive,
        opts: CoreOptions,
    ) -> Result<Self, Box<(OpenError, SimDrive)>> {
        let recovered = match recover(&mut drive, &Expect::default()) {
            Ok(r) => r,
            Err(e) => return Err(Box::new((e, drive))),
        };
        drive.set_manual_completion();
        Ok(Self {
            core: StoreCore::new(recovered.init, opts),
            drive,
            replies: HashMap::new(),
            report: recovered.report,
            next_tag: 0,
        })
    }

    /// Queues a request; returns its tag.
    pub fn submit(&mut self, request: Request) -> u64 {
        self.next_tag += 1;
        self.core.handle_request(self.next_tag, request);
        self.collect();
        self.next_tag
    }

    /// Moves operations to the drive and completes up to `n` of them at random.
    pub fn step(&mut self, rng: &mut SimRng, n: usize) {
        self.pass_ops();
        let k = if n == 0 {
            0
        } else {
            rng.below(n as u64 + 1) as usize
        };
        self.drive.complete_random(k);
        while let Some(c) = self.drive.poll_completion() {
            self.core.handle_completion(c);
        }
        self.pass_ops();
        self.collect();
    }

    fn pass_ops(&mut self) {
        while let Some(op) = self.core.poll_op() {
            self.drive.submit(op).expect("simulated drive queue");
        }
    }

    fn collect(&mut self) {
        while let Some((tag, result)) = self.core.poll_reply() {
            assert!(
                self.replies.insert(tag, result).is_none(),
                "tag {tag} answered twice"
            );
        }
    }

    /// Runs until `tag` is answered.
    pub fn wait_for(&mut self, tag: u64, rng: &mut SimRng) -> Result<Reply, StoreError> {
        for _ in 0..100_000 {
            if let Some(result) = self.replies.remove(&tag) {
                return result;
            }
            self.step(rng, 8);
        }
        panic!("request {tag} never completed");
    }

    /// Submits a request and runs until it is answered.
    pub fn call(&mut self, request: Request, rng: &mut SimRng) -> Result<Reply, StoreError> {
        let tag = self.submit(request);
        self.wait_for(tag, rng)
    }

    /// Runs until no operation is pending.
    pub fn settle(&mut self, rng: &mut SimRng) {
        for _ in 0..100_000 {
            if self.core.is_idle() && self.drive.pending_ops() == 0 {
                return;
            }
            self.step(rng, 8);
        }
        panic!("store never settled");
    }
}
