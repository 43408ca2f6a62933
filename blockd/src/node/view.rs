//! Publishing the data path's [`ClusterView`] from the applied metadata state.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use basalt::meta::MetaState;
use basalt::units::CHUNK_SIZE_BYTES_DEFAULT;
use tokio_util::sync::CancellationToken;

use super::NodeShared;
use crate::view::{ClusterView, MapPublisher, VolumeView};

/// The view of `state`.
pub fn build(state: &MetaState) -> ClusterView {
    let node_addrs = state
        .nodes()
        .iter()
        .filter_map(|(id, node)| {
            node.addresses
                .peer
                .parse::<SocketAddr>()
                .ok()
                .map(|addr| (*id, addr))
        })
        .collect();
    let volumes = state
        .volumes()
        .values()
        .map(|v| {
            (
                v.name.clone(),
                VolumeView {
                    id: v.id,
                    size_bytes: v.size_bytes,
                    pool: v.pool,
                },
            )
        })
        .collect::<BTreeMap<_, _>>();
    ClusterView {
        map: state.map().clone(),
        chunk_size_bytes: state
            .cluster()
            .map_or(CHUNK_SIZE_BYTES_DEFAULT, |c| c.chunk_size_bytes),
        node_addrs,
        volumes,
        next_volume_id: state.next_volume_id(),
    }
}

/// Rebuilds and publishes the view after every applied change, until `cancel`.
pub async fn publish(shared: Arc<NodeShared>, publisher: MapPublisher, cancel: CancellationToken) {
    let mut applied = shared.meta.subscribe();
    loop {
        let state = Arc::clone(&applied.borrow_and_update().state);
        publisher.publish(build(&state));
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = applied.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}
