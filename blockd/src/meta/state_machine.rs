//! State-machine storage: applies committed entries through [`ReplicatedState`], tracks the
//! last applied log id and membership, and keeps whole-state snapshots in
//! `<data_dir>/snapshot` (replaced atomically).
//!
//! The applied state is published through a `tokio::sync::watch` of [`Applied`] holding an
//! `Arc<S>`: readers clone the `Arc` (cheap, never blocks Raft for long) and the applier mutates
//! in place with `Arc::make_mut`, copying the state only while some reader still holds the
//! previous version.
//!
//! On restart the state comes from the snapshot file (or the caller's initial state when there
//! is none); openraft then re-applies the log from the snapshot up to the persisted committed
//! index.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::fsutil;
use super::{ReplicatedState, Response, TypeConfig};

type LogId = LogIdOf<TypeConfig>;
type SnapshotMeta = SnapshotMetaOf<TypeConfig>;
type StoredMembership = StoredMembershipOf<TypeConfig>;
type Snapshot = SnapshotOf<TypeConfig, Vec<u8>>;

/// First bytes of the snapshot file: kind and format version.
const SNAPSHOT_MAGIC: &[u8; 8] = b"BSRSNP01";
/// File name of the snapshot inside the data directory.
pub const SNAPSHOT_FILE: &str = "snapshot";

/// The latest applied state as published to readers.
#[derive(Debug)]
pub struct Applied<S> {
    /// Raft log index of the last applied entry (`None` before anything was applied).
    pub index: Option<u64>,
    /// The state after applying it.
    pub state: Arc<S>,
}

impl<S> Clone for Applied<S> {
    fn clone(&self) -> Self {
        Self {
            index: self.index,
            state: self.state.clone(),
        }
    }
}

/// The snapshot file's payload.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// Shared between the state machine and its snapshot builders.
struct SnapshotSlot {
    path: PathBuf,
    /// Metadata of the snapshot currently in the file; guards against an older build replacing a
    /// newer installed snapshot.
    current: Mutex<Option<SnapshotMeta>>,
}

impl SnapshotSlot {
    fn store(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current
            .as_ref()
            .is_some_and(|c| c.last_log_id > meta.last_log_id)
        {
            tracing::debug!("not replacing a newer snapshot with an older one");
            return Ok(());
        }
        let file = SnapshotFile {
            meta: meta.clone(),
            data: data.to_vec(),
        };
        let payload = postcard::to_stdvec(&file).map_err(io::Error::other)?;
        fsutil::write_atomic(&self.path, &fsutil::encode_file(SNAPSHOT_MAGIC, &payload)?)?;
        *current = Some(meta.clone());
        Ok(())
    }

    fn load(path: &Path) -> io::Result<Option<SnapshotFile>> {
        let Some(bytes) = fsutil::read_optional(path)? else {
            return Ok(None);
        };
        let payload = fsutil::decode_file(SNAPSHOT_MAGIC, &bytes, "raft snapshot")?;
        let file = postcard::from_bytes(payload)
            .map_err(|e| fsutil::invalid(format!("raft snapshot: {e}")))?;
        Ok(Some(file))
    }
}

/// The openraft state machine over an application state `S`.
pub struct StateMachineStore<S: ReplicatedState> {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    published: watch::Sender<Applied<S>>,
    snapshot: Arc<SnapshotSlot>,
}

impl<S: ReplicatedState> StateMachineStore<S> {
    /// Opens the state machine in `data_dir`, restoring the snapshot if one exists, else starting
    /// from `initial`. Blocking (reads a file).
    pub fn open(data_dir: &Path, initial: S) -> io::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(SNAPSHOT_FILE);
        let (state, last_applied, last_membership, current) = match SnapshotSlot::load(&path)? {
            Some(file) => {
                let state = S::from_snapshot(&file.data)
                    .map_err(|e| fsutil::invalid(format!("raft snapshot: {e}")))?;
                (
                    state,
                    file.meta.last_log_id,
                    file.meta.last_membership.clone(),
                    Some(file.meta),
                )
            }
            None => (initial, None, StoredMembership::default(), None),
        };
        let (published, _) = watch::channel(Applied {
            index: last_applied.map(|id| id.index()),
            state: Arc::new(state),
        });
        Ok(Self {
            last_applied,
            last_membership,
            published,
            snapshot: Arc::new(SnapshotSlot {
                path,
                current: Mutex::new(current),
            }),
        })
    }

    /// A receiver of the applied state, for readers outside Raft.
    pub fn subscribe(&self) -> watch::Receiver<Applied<S>> {
        self.published.subscribe()
    }
}

/// Builds a snapshot from the state captured when the builder was created.
pub struct SnapshotBuilder<S> {
    state: Arc<S>,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    slot: Arc<SnapshotSlot>,
}

impl<S: ReplicatedState> RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder<S> {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let state = self.state.clone();
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
        };
        let slot = self.slot.clone();
        let meta2 = meta.clone();
        let data = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
            let data = state
                .to_snapshot()
                .map_err(|e| io::Error::other(format!("serializing snapshot: {e}")))?;
            slot.store(&meta2, &data)?;
            Ok(data)
        })
        .await
        .map_err(io::Error::other)??;
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = data.len(), "built raft snapshot");
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl<S: ReplicatedState> RaftStateMachine<TypeConfig> for StateMachineStore<S> {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = SnapshotBuilder<S>;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.next().await {
            batch.push(item?);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let mut replies = Vec::with_capacity(batch.len());
        let mut result = Ok(());
        let last_applied = &mut self.last_applied;
        let last_membership = &mut self.last_membership;
        self.published.send_modify(|applied| {
            let state = Arc::make_mut(&mut applied.state);
            for (entry, responder) in batch {
                let log_id = entry.log_id();
                let reply = match entry.payload {
                    EntryPayload::Blank => Response(Vec::new()),
                    EntryPayload::Membership(membership) => {
                        *last_membership = StoredMembership::new(Some(log_id), membership);
                        Response(Vec::new())
                    }
                    EntryPayload::Normal(request) => match apply_one(state, &request.0) {
                        Ok(bytes) => Response(bytes),
                        Err(e) => {
                            // Every node decodes the same bytes, so a command this binary cannot
                            // read stops this node rather than letting replicas diverge.
                            tracing::error!(%log_id, error = %e, "cannot apply raft entry");
                            result = Err(e);
                            break;
                        }
                    },
                };
                *last_applied = Some(log_id);
                applied.index = Some(log_id.index());
                if let Some(responder) = responder {
                    replies.push((responder, reply));
                }
            }
        });
        for (responder, reply) in replies {
            responder.send(reply);
        }
        result
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            state: self.published.borrow().state.clone(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            slot: self.snapshot.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let slot = self.snapshot.clone();
        let meta2 = meta.clone();
        let state = tokio::task::spawn_blocking(move || -> io::Result<S> {
            let state = S::from_snapshot(&snapshot)
                .map_err(|e| fsutil::invalid(format!("received raft snapshot: {e}")))?;
            slot.store(&meta2, &snapshot)?;
            Ok(state)
        })
        .await
        .map_err(io::Error::other)??;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.published.send_replace(Applied {
            index: meta.last_log_id.map(|id| id.index()),
            state: Arc::new(state),
        });
        tracing::info!(last_log_id = ?meta.last_log_id, "installed raft snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let path = self.snapshot.path.clone();
        let file = tokio::task::spawn_blocking(move || SnapshotSlot::load(&path))
            .await
            .map_err(io::Error::other)??;
        Ok(file.map(|f| Snapshot {
            meta: f.meta,
            snapshot: f.data,
        }))
    }
}

/// Decodes one command, applies it and encodes the reply.
fn apply_one<S: ReplicatedState>(state: &mut S, bytes: &[u8]) -> io::Result<Vec<u8>> {
    let cmd: S::Command = postcard::from_bytes(bytes)
        .map_err(|e| fsutil::invalid(format!("undecodable command: {e}")))?;
    let reply = state.apply(&cmd);
    postcard::to_stdvec(&reply).map_err(|e| io::Error::other(format!("encoding reply: {e}")))
}
