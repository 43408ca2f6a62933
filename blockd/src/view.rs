//! The data path's picture of the cluster: what the gateway and the replication engines need
//! from the metadata service, published as one immutable snapshot per applied change.
//!
//! The metadata service builds a new [`ClusterView`] whenever the replicated state changes and
//! sends it through a `tokio::sync::watch` channel; readers clone the `Arc` and never take a
//! lock on the I/O path. Keeping this separate from the metadata state machine's own types lets
//! the data path be tested with hand-made views.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use basalt::ids::{Epoch, NodeId, VolumeId};
use basalt::placement::{PlacementMap, PoolId};
use tokio::sync::watch;

/// One immutable snapshot of what the data path needs to route and replicate I/O.
#[derive(Clone, Debug)]
pub struct ClusterView {
    /// The placement map; its epoch orders views.
    pub map: PlacementMap,
    /// The cluster's chunk size, fixed at creation.
    pub chunk_size_bytes: u32,
    /// How to reach each node's peer listener.
    pub peer_addrs: BTreeMap<NodeId, SocketAddr>,
    /// Volumes by name (export name = volume name).
    pub volumes: BTreeMap<String, VolumeView>,
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
    /// The view's map epoch.
    pub fn epoch(&self) -> Epoch {
        self.map.epoch()
    }
}

/// The receiving end every data-path component holds.
pub type ViewReceiver = watch::Receiver<Arc<ClusterView>>;

/// Why waiting for a newer view failed.
#[derive(Debug, thiserror::Error)]
pub enum ViewWaitError {
    /// No view with the wanted epoch arrived within the bound.
    #[error("no cluster view with epoch >= {wanted} within {waited:?}")]
    Timeout {
        /// The epoch waited for.
        wanted: Epoch,
        /// How long we waited.
        waited: Duration,
    },
    /// The publisher is gone (the node is shutting down).
    #[error("cluster view publisher closed")]
    Closed,
}

/// Waits until the published view's epoch is at least `wanted`, at most `bound`; returns it.
/// Used after a peer answered `StaleEpoch` with its newer epoch.
pub async fn wait_for_epoch(
    rx: &mut ViewReceiver,
    wanted: Epoch,
    bound: Duration,
) -> Result<Arc<ClusterView>, ViewWaitError> {
    let wait = rx.wait_for(|view| view.epoch() >= wanted);
    match tokio::time::timeout(bound, wait).await {
        Ok(Ok(view)) => Ok(Arc::clone(&view)),
        Ok(Err(_)) => Err(ViewWaitError::Closed),
        Err(_) => Err(ViewWaitError::Timeout {
            wanted,
            waited: bound,
        }),
    }
}
