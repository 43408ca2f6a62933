//! The data path's picture of the cluster: what the gateway, the replication engines and the
//! NBD exports need from the metadata service, and how they learn that it changed.
//!
//! The metadata service (DESIGN §5) keeps the placement map and the nodes' addresses; every
//! node follows it and publishes each new version as a [`ClusterView`] through a
//! [`MapPublisher`]. The gateway only reads, through a [`MapWatch`]: the current view for
//! routing, and a bounded wait for "epoch ≥ e" after a primary answered `STALE_EPOCH` with
//! epoch `e`. A `tokio::sync::watch` channel carries it, so readers never block the publisher
//! and always see the latest view (intermediate ones may be skipped, which routing never
//! needs).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use basalt::ids::{Epoch, NodeId, VolumeId};
use basalt::placement::{PlacementMap, PoolId};
use basalt::units::{self, CHUNK_SIZE_BYTES_DEFAULT};
use tokio::sync::watch;

/// One consistent snapshot of what the data path needs: the placement map (with its epoch),
/// the cluster's chunk size, where each node's peer endpoint listens, and the volumes.
#[derive(Clone, Debug)]
pub struct ClusterView {
    /// The placement map; its epoch tags every request routed by it.
    pub map: PlacementMap,
    /// The cluster's chunk size (fixed at cluster creation; a valid chunk size).
    pub chunk_size_bytes: u32,
    /// Peer address of every node that may be a primary.
    pub node_addrs: BTreeMap<NodeId, SocketAddr>,
    /// Volumes by name (export name = volume name).
    pub volumes: BTreeMap<String, VolumeView>,
    /// Every volume id below this was created at some point: one the view does not list was
    /// deleted, and its chunks can go (ids are never reused). 0 when unknown.
    pub next_volume_id: u64,
}

/// A volume as the data path sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeView {
    /// Never-reused id: the first half of every chunk key.
    pub id: VolumeId,
    /// Size in bytes, a multiple of 4 KiB.
    pub size_bytes: u64,
    /// The pool whose PGs hold the volume's chunks.
    pub pool: PoolId,
}

impl ClusterView {
    /// The view before the metadata service has published anything: epoch 0, no pools, so
    /// every request waits (bounded) for a real map.
    pub fn empty() -> Self {
        ClusterView {
            map: PlacementMap::new(),
            chunk_size_bytes: CHUNK_SIZE_BYTES_DEFAULT,
            node_addrs: BTreeMap::new(),
            volumes: BTreeMap::new(),
            next_volume_id: 0,
        }
    }

    /// The map's epoch.
    pub fn epoch(&self) -> Epoch {
        self.map.epoch()
    }

    /// Whether the chunk size is one the cluster could have been created with.
    pub fn is_valid(&self) -> bool {
        units::is_valid_chunk_size(self.chunk_size_bytes)
    }
}

/// Creates the channel a node's map follower publishes into and its gateways read from.
pub fn map_channel(initial: ClusterView) -> (MapPublisher, MapWatch) {
    let (sender, receiver) = watch::channel(Arc::new(initial));
    (MapPublisher { sender }, MapWatch { receiver })
}

/// The writing end: owned by whatever follows the metadata service (tests publish by hand).
#[derive(Debug)]
pub struct MapPublisher {
    sender: watch::Sender<Arc<ClusterView>>,
}

impl MapPublisher {
    /// Publishes `view` unless it is older than the current one (a late, reordered update
    /// must not roll routing back). Returns whether it was published. A view with the same
    /// epoch is published: node addresses can change without the map changing.
    pub fn publish(&self, view: ClusterView) -> bool {
        let view = Arc::new(view);
        self.sender.send_if_modified(|current| {
            if view.epoch() < current.epoch() {
                return false;
            }
            *current = Arc::clone(&view);
            true
        })
    }

    /// The current view.
    pub fn current(&self) -> Arc<ClusterView> {
        Arc::clone(&self.sender.borrow())
    }

    /// Another reader of this channel.
    pub fn subscribe(&self) -> MapWatch {
        MapWatch {
            receiver: self.sender.subscribe(),
        }
    }
}

/// The reading end the gateway routes by. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MapWatch {
    receiver: watch::Receiver<Arc<ClusterView>>,
}

impl MapWatch {
    /// A watch over a fixed view (tests, tools): it never changes.
    pub fn fixed(view: ClusterView) -> Self {
        let (publisher, watch) = map_channel(view);
        // Dropping the sender keeps the last value readable; waits then end at once.
        drop(publisher);
        watch
    }

    /// The underlying receiver (for `tokio::select!` on changes).
    pub fn receiver(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.receiver.clone()
    }

    /// The latest published view.
    pub fn current(&self) -> Arc<ClusterView> {
        Arc::clone(&self.receiver.borrow())
    }

    /// Waits until a view with epoch ≥ `epoch` is published, at most `timeout`. Returns it, or
    /// `None` if the time ran out or the publisher is gone without publishing one.
    pub async fn wait_for_epoch(
        &self,
        epoch: Epoch,
        timeout: Duration,
    ) -> Option<Arc<ClusterView>> {
        let current = self.current();
        if current.epoch() >= epoch {
            return Some(current);
        }
        let mut receiver = self.receiver.clone();
        let wait = receiver.wait_for(|view| view.epoch() >= epoch);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(view)) => Some(Arc::clone(&view)),
            Ok(Err(_)) | Err(_) => None,
        }
    }

    /// Waits until a view newer than `epoch` appears or `timeout` passes, whichever is first:
    /// the gateway's back-off, cut short when the map moves (a re-route may succeed at once).
    pub async fn changed_after(&self, epoch: Epoch, timeout: Duration) {
        let started = tokio::time::Instant::now();
        let next = Epoch(epoch.0.saturating_add(1));
        if self.wait_for_epoch(next, timeout).await.is_none() {
            // Time ran out, or the publisher is gone (then the wait ended early): sleep what
            // is left so a caller retrying in a loop never spins.
            tokio::time::sleep(timeout.saturating_sub(started.elapsed())).await;
        }
    }
}
