//! The async side of peering and recovery: list labels, copy chunks between the local store
//! and members over [`ControlKind::PG_RECOVERY`], send sync points. A PG task runs these as
//! jobs for its engine's [`Action::Peer`], [`Action::Recover`] and [`Action::FinalSync`]; what
//! to copy is decided by the pure `recovery_plan`.
//!
//! [`Action::Peer`]: super::Action::Peer
//! [`Action::Recover`]: super::Action::Recover
//! [`Action::FinalSync`]: super::Action::FinalSync

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use basalt::ids::{ChunkKey, ChunkVersion, Epoch, NodeId};
use basalt::placement::pg_of;
use basalt::units::BLOCK_SIZE_BYTES;
use basalt::wire::{Bytes, ControlKind, Status};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::recovery_msg::{
    PgRef, PushStep, RECOVERY_PIECE_BYTES_MAX, RECOVERY_VERSION, RecoveryReply, RecoveryRequest,
};
use super::recovery_plan::{ChunkFix, Labels, diff, level_members, plan_peering};
use super::service::PgKey;
use super::stats::{Progress, ReplicationStats};
use super::types::Peered;
use crate::peer::Peers;
use crate::store::{ChunkInfo, Store, StoreError};
use crate::view::ClusterView;

/// A recovery pass that leaves at most this many chunks to fix asks the primary for the final
/// sync: the pause of new writes then covers only that much copying.
pub const FINAL_FIXES_MAX: usize = 8;

/// Pause between attempts of a failed peering round or recovery pass.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// How often a sync point is retried while the member's own writes are still landing.
const SYNC_POINT_ATTEMPTS: usize = 20;

/// Why a recovery step failed; the job retries or gives up the final sync.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecoveryError {
    /// The local store failed.
    #[error("local store: {0}")]
    Store(#[from] StoreError),
    /// The member could not be reached or answered with a transport error.
    #[error("{node}: {detail}")]
    Peer {
        /// The member.
        node: NodeId,
        /// What went wrong.
        detail: String,
    },
    /// The member refused.
    #[error("{node} refused with {status:?} at {epoch}")]
    Refused {
        /// The member.
        node: NodeId,
        /// Its status.
        status: Status,
        /// Its epoch.
        epoch: Epoch,
    },
    /// The member answered something that does not fit the request.
    #[error("{node} answered out of protocol: {what}")]
    Protocol {
        /// The member.
        node: NodeId,
        /// What.
        what: &'static str,
    },
    /// The local chunks changed under a final sync (cannot happen while writes are paused).
    #[error("chunks still differ after the final copy")]
    NotLevel,
    /// The PG task did not apply a repair (the chunk moved on, or writes were in flight).
    #[error("repair not applied: {0:?}")]
    Repair(Status),
}

/// Paces recovery copies to a byte rate shared by every PG of the node, so client I/O keeps
/// the rest of the disk and network.
#[derive(Debug)]
pub struct Throttle {
    bytes_per_sec: u64,
    next: Mutex<Option<Instant>>,
}

impl Throttle {
    /// A throttle at `bytes_per_sec` (0: unlimited).
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec,
            next: Mutex::new(None),
        }
    }

    /// Waits for the turn of `bytes` more bytes.
    pub(crate) async fn acquire(&self, bytes: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let start = {
            let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let start = next.map_or(now, |at| at.max(now));
            *next = Some(start + cost);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// Everything a job needs; cloned into each.
#[derive(Clone)]
pub(crate) struct RecoveryCtx {
    pub(crate) key: PgKey,
    pub(crate) store: Arc<Store>,
    pub(crate) peers: Arc<Peers>,
    /// The view when the job started: which volumes map to this PG.
    pub(crate) view: Arc<ClusterView>,
    pub(crate) chunk_size_bytes: u32,
    pub(crate) throttle: Arc<Throttle>,
    pub(crate) stats: Arc<ReplicationStats>,
    pub(crate) call_timeout: Duration,
    pub(crate) cancel: CancellationToken,
}

/// One side of a chunk copy.
#[derive(Clone, Copy, Debug)]
pub(crate) enum End {
    Local,
    Remote(NodeId),
}

/// The labels of the PG's chunks among `chunks` (a store listing), per `view`.
pub(crate) fn pg_labels(view: &ClusterView, key: PgKey, chunks: &[ChunkInfo]) -> Labels {
    chunks
        .iter()
        .filter(|info| {
            let volume = info.chunk.volume;
            let Some(spec) = view.volumes.values().find(|v| v.id == volume) else {
                return false;
            };
            let Some(pool) = view.map.pool(spec.pool) else {
                return false;
            };
            spec.pool == key.pool && pg_of(volume, info.chunk.index, pool.spec().pg_count) == key.pg
        })
        .map(|info| (info.chunk, info.version))
        .collect()
}

impl RecoveryCtx {
    pub(crate) fn pg(&self) -> PgRef {
        PgRef {
            pool: self.key.pool,
            pg: self.key.pg,
        }
    }

    async fn own_labels(&self) -> Result<Labels, RecoveryError> {
        let chunks = self.store.list_chunks().await?;
        Ok(pg_labels(&self.view, self.key, &chunks))
    }

    pub(crate) async fn call(
        &self,
        node: NodeId,
        request: &RecoveryRequest,
    ) -> Result<RecoveryReply, RecoveryError> {
        let peer_error = |detail: String| RecoveryError::Peer { node, detail };
        let body = postcard::to_stdvec(request).map_err(|e| peer_error(e.to_string()))?;
        let call = self.peers.call_control(
            node,
            ControlKind::PG_RECOVERY,
            RECOVERY_VERSION,
            Bytes::from(body),
        );
        let reply = tokio::time::timeout(self.call_timeout, call)
            .await
            .map_err(|_| peer_error("timed out".into()))?
            .map_err(|e| peer_error(e.to_string()))?;
        let reply: RecoveryReply =
            postcard::from_bytes(&reply).map_err(|_| RecoveryError::Protocol {
                node,
                what: "undecodable reply",
            })?;
        match reply {
            RecoveryReply::Refused { status, epoch } => Err(RecoveryError::Refused {
                node,
                status: Status::from_code(status).unwrap_or(Status::Invalid),
                epoch,
            }),
            reply => Ok(reply),
        }
    }

    async fn member_labels(&self, node: NodeId, epoch: Epoch) -> Result<Labels, RecoveryError> {
        let request = RecoveryRequest::Labels {
            pg: self.pg(),
            epoch,
        };
        match self.call(node, &request).await? {
            RecoveryReply::Labels(labels) => Ok(labels.into_iter().collect()),
            _ => Err(RecoveryError::Protocol {
                node,
                what: "labels expected",
            }),
        }
    }

    /// The allocated extents of `[offset, offset + len)` of `chunk` on `end`.
    pub(crate) async fn read_window(
        &self,
        end: End,
        epoch: Epoch,
        chunk: ChunkKey,
        offset: u32,
        len: u32,
    ) -> Result<Vec<(u32, Vec<u8>)>, RecoveryError> {
        match end {
            End::Local => {
                let mut extents = Vec::new();
                for extent in self.store.block_status(chunk, offset, len).await? {
                    if extent.allocated {
                        let data = self.store.read(chunk, extent.offset, extent.len).await?;
                        extents.push((extent.offset, data.to_vec()));
                    }
                }
                Ok(extents)
            }
            End::Remote(node) => {
                let request = RecoveryRequest::Read {
                    pg: self.pg(),
                    epoch,
                    chunk,
                    offset,
                    len,
                };
                let RecoveryReply::Data { runs, data } = self.call(node, &request).await? else {
                    return Err(RecoveryError::Protocol {
                        node,
                        what: "data expected",
                    });
                };
                split_runs(offset, len, &runs, data).ok_or(RecoveryError::Protocol {
                    node,
                    what: "runs do not match the range or the data",
                })
            }
        }
    }

    async fn apply_step(
        &self,
        end: End,
        epoch: Epoch,
        chunk: ChunkKey,
        step: PushStep,
    ) -> Result<(), RecoveryError> {
        match end {
            End::Local => {
                match step {
                    PushStep::Delete => self.store.delete_chunk(chunk).await?,
                    PushStep::Write {
                        offset,
                        label,
                        data,
                    } => {
                        self.store
                            .write(chunk, offset, Bytes::from(data), label)
                            .await?
                    }
                    PushStep::Unmap { offset, len, label } => {
                        self.store.trim(chunk, offset, len, label).await?
                    }
                }
                Ok(())
            }
            End::Remote(node) => {
                let request = RecoveryRequest::Push {
                    pg: self.pg(),
                    epoch,
                    chunk,
                    step,
                };
                match self.call(node, &request).await? {
                    RecoveryReply::Done => Ok(()),
                    _ => Err(RecoveryError::Protocol {
                        node,
                        what: "done expected",
                    }),
                }
            }
        }
    }

    /// Makes `to`'s copy of `chunk` equal to `from`'s, labelled `label` (the source's label
    /// when it was listed, at most as new as the data copied). The label is written last, with
    /// the last extent, after every earlier one is durable: a copy cut short keeps a label
    /// that differs from the source's and is copied again.
    async fn copy_chunk(
        &self,
        from: End,
        to: End,
        epoch: Epoch,
        chunk: ChunkKey,
        label: ChunkVersion,
    ) -> Result<u64, RecoveryError> {
        self.apply_step(to, epoch, chunk, PushStep::Delete).await?;
        let unlabelled = ChunkVersion::default();
        let mut held: Option<(u32, Vec<u8>)> = None;
        let mut copied = 0u64;
        let mut offset = 0u32;
        while offset < self.chunk_size_bytes {
            let len = RECOVERY_PIECE_BYTES_MAX.min(self.chunk_size_bytes - offset);
            for extent in self.read_window(from, epoch, chunk, offset, len).await? {
                if let Some((at, data)) = held.replace(extent) {
                    copied += data.len() as u64;
                    self.throttle.acquire(data.len() as u64).await;
                    let step = PushStep::Write {
                        offset: at,
                        label: unlabelled,
                        data,
                    };
                    self.apply_step(to, epoch, chunk, step).await?;
                }
            }
            offset += len;
        }
        let last = match held {
            Some((at, data)) => {
                copied += data.len() as u64;
                self.throttle.acquire(data.len() as u64).await;
                PushStep::Write {
                    offset: at,
                    label,
                    data,
                }
            }
            None => PushStep::Unmap {
                offset: 0,
                len: self.chunk_size_bytes,
                label,
            },
        };
        self.apply_step(to, epoch, chunk, last).await?;
        Ok(copied)
    }

    async fn sync_point(
        &self,
        node: NodeId,
        epoch: Epoch,
        head: ChunkVersion,
    ) -> Result<(), RecoveryError> {
        let request = RecoveryRequest::SyncPoint {
            pg: self.pg(),
            epoch,
            head,
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.call(node, &request).await {
                Ok(RecoveryReply::Done) => return Ok(()),
                Ok(_) => {
                    return Err(RecoveryError::Protocol {
                        node,
                        what: "done expected",
                    });
                }
                Err(RecoveryError::Refused {
                    status: Status::Busy,
                    ..
                }) if attempts < SYNC_POINT_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One peering round: every member's labels, pull what is newer elsewhere, sync points to
    /// the members that hold the adopted history.
    async fn peer_once(&self, epoch: Epoch, members: &[NodeId]) -> Result<Peered, RecoveryError> {
        let own = self.own_labels().await?;
        let mut heard = Vec::with_capacity(members.len());
        for node in members {
            heard.push((*node, self.member_labels(*node, epoch).await?));
        }
        let plan = plan_peering(&own, &heard);
        for (chunk, node, label) in &plan.pulls {
            let bytes = self
                .copy_chunk(End::Remote(*node), End::Local, epoch, *chunk, *label)
                .await?;
            self.stats.add_recovered(bytes);
        }
        if self.own_labels().await? != plan.adopted {
            return Err(RecoveryError::NotLevel);
        }
        let mut in_sync = Vec::new();
        for node in level_members(&plan.adopted, &heard) {
            match self.sync_point(node, epoch, plan.head).await {
                Ok(()) => in_sync.push(node),
                Err(error) => {
                    tracing::warn!(pg = %self.key, %node, %error, "no sync point; the member will be recovered");
                }
            }
        }
        tracing::info!(pg = %self.key, %epoch, pulled = plan.pulls.len(), "peered");
        Ok(Peered {
            epoch,
            head: plan.head,
            in_sync,
        })
    }

    /// Peers until it succeeds or the job is cancelled (the epoch moved on).
    pub(crate) async fn peer(&self, epoch: Epoch, members: Vec<NodeId>) -> Option<Peered> {
        loop {
            let attempt = self.peer_once(epoch, &members);
            tokio::select! {
                () = self.cancel.cancelled() => return None,
                result = attempt => match result {
                    Ok(peered) => return Some(peered),
                    Err(error) => tracing::warn!(pg = %self.key, %epoch, %error, "peering round failed; retrying"),
                },
            }
            tokio::select! {
                () = self.cancel.cancelled() => return None,
                () = tokio::time::sleep(RETRY_DELAY) => {}
            }
        }
    }

    /// One recovery pass: copy every differing chunk to `member`, delete what it should not
    /// hold. Returns how many chunks needed fixing.
    async fn pass(&self, member: NodeId, epoch: Epoch) -> Result<usize, RecoveryError> {
        let chunks = self.store.list_chunks().await?;
        let own = pg_labels(&self.view, self.key, &chunks);
        let theirs = self.member_labels(member, epoch).await?;
        if theirs.is_empty() && !own.is_empty() {
            // The member holds nothing of this PG: it is new to it (backfill).
            self.stats.mark_backfill(self.key, member);
        }
        let fixes = diff(&own, &theirs);
        let sizes: HashMap<ChunkKey, u64> = chunks
            .iter()
            .map(|info| {
                let size = u64::from(info.allocated_blocks) * u64::from(BLOCK_SIZE_BYTES);
                (info.chunk, size)
            })
            .collect();
        let fix_bytes = |fix: &ChunkFix| match fix {
            ChunkFix::Copy { chunk, .. } => sizes.get(chunk).copied().unwrap_or(0),
            ChunkFix::Delete { .. } => 0,
        };
        let mut bytes = 0;
        let mut left = Progress {
            chunks: fixes.len() as u64,
            bytes: fixes.iter().map(fix_bytes).sum(),
        };
        for fix in &fixes {
            self.stats.set_progress(self.key, member, left);
            let copied = match *fix {
                ChunkFix::Copy { chunk, label } => {
                    self.copy_chunk(End::Local, End::Remote(member), epoch, chunk, label)
                        .await?
                }
                ChunkFix::Delete { chunk } => {
                    self.apply_step(End::Remote(member), epoch, chunk, PushStep::Delete)
                        .await?;
                    0
                }
            };
            self.stats.add_recovered(copied);
            bytes += copied;
            left.chunks -= 1;
            left.bytes = left.bytes.saturating_sub(fix_bytes(fix));
        }
        self.stats.set_remaining(self.key, member, 0);
        if !fixes.is_empty() {
            tracing::info!(pg = %self.key, %member, chunks = fixes.len(), bytes, "recovery pass");
        }
        Ok(fixes.len())
    }

    /// Recovery passes until one leaves at most [`FINAL_FIXES_MAX`] chunks to fix: true then,
    /// false if cancelled.
    pub(crate) async fn recover(&self, member: NodeId, epoch: Epoch) -> bool {
        loop {
            let attempt = self.pass(member, epoch);
            tokio::select! {
                () = self.cancel.cancelled() => {
                    self.stats.end_recovery(self.key, member);
                    return false;
                }
                result = attempt => match result {
                    Ok(fixed) if fixed <= FINAL_FIXES_MAX => return true,
                    Ok(_) => continue,
                    Err(error) => tracing::warn!(pg = %self.key, %member, %epoch, %error, "recovery pass failed; retrying"),
                },
            }
            tokio::select! {
                () = self.cancel.cancelled() => return false,
                () = tokio::time::sleep(RETRY_DELAY) => {}
            }
        }
    }

    /// With writes paused: copy what still differs, check the member is level, and send it
    /// the sync point at `head`.
    pub(crate) async fn final_sync(
        &self,
        member: NodeId,
        epoch: Epoch,
        head: ChunkVersion,
    ) -> bool {
        let attempt = async {
            self.pass(member, epoch).await?;
            let own = self.own_labels().await?;
            if self.member_labels(member, epoch).await? != own {
                return Err(RecoveryError::NotLevel);
            }
            self.sync_point(member, epoch, head).await
        };
        let done = tokio::select! {
            () = self.cancel.cancelled() => false,
            result = attempt => match result {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(pg = %self.key, %member, %epoch, %error, "final sync failed");
                    false
                }
            },
        };
        self.stats.end_recovery(self.key, member);
        done
    }
}

/// Splits a `Read` answer into extents `(offset, bytes)`; `None` if the runs do not cover
/// exactly `len` bytes from `offset` or the data is not the allocated runs' total.
fn split_runs(
    offset: u32,
    len: u32,
    runs: &[super::AllocationRun],
    data: Vec<u8>,
) -> Option<Vec<(u32, Vec<u8>)>> {
    let mut extents = Vec::new();
    let mut at = offset;
    let mut used = 0usize;
    for run in runs {
        let end = at.checked_add(run.len)?;
        if run.allocated {
            let take = usize::try_from(run.len).ok()?;
            let bytes = data.get(used..used.checked_add(take)?)?;
            extents.push((at, bytes.to_vec()));
            used += take;
        }
        at = end;
    }
    (at == offset.checked_add(len)? && used == data.len()).then_some(extents)
}

#[cfg(test)]
mod tests {
    use super::super::AllocationRun;
    use super::*;

    /// Goal: a read answer becomes extents at the right offsets, and answers that do not add
    /// up are refused rather than trusted.
    #[test]
    fn split_runs_checks_the_answer() {
        let runs = [
            AllocationRun {
                len: 512,
                allocated: true,
            },
            AllocationRun {
                len: 1024,
                allocated: false,
            },
            AllocationRun {
                len: 512,
                allocated: true,
            },
        ];
        let data: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
        let extents = split_runs(4096, 2048, &runs, data.clone()).expect("valid");
        assert_eq!(
            extents,
            vec![(4096, data[..512].to_vec()), (5632, data[512..].to_vec())]
        );
        assert_eq!(split_runs(4096, 4096, &runs, data.clone()), None);
        assert_eq!(split_runs(4096, 2048, &runs, data[..1000].to_vec()), None);
        assert_eq!(split_runs(u32::MAX - 100, 2048, &runs, data), None);
    }
}
