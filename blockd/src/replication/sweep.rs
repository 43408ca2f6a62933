//! Dropping copies no PG needs from this node any more: the plan (pure) and the deletion loop
//! the PG task and the service share.
//!
//! Copies outlive their use: a node that left a PG (rebalance onto a new node, a drain, a node
//! that came back from `out` with other PGs) keeps the old PG's chunks, and the chunks of a
//! deleted volume stay wherever they were. The sweep finds them from the drives' chunk lists
//! and the current view:
//! - a chunk of a volume the view no longer lists, with an id below the view's next volume id,
//!   belongs to a deleted volume (ids are never reused): it goes;
//! - a chunk of a PG whose up set and acting set both lack this node on that drive is a stray:
//!   no peering, recovery or read ever asks for it (they ask acting members, and a down member
//!   in the up set returns with its copy). It goes, but only through the PG's task (or with
//!   the PG's task creation held back), re-checked against the latest view, so a map that
//!   brings the node back into the PG is applied after the deletion: peering then lists what
//!   is really there and recovery copies the rest.
//!
//! A chunk of a volume the view does not know yet (created after the view) is kept.

use std::collections::{BTreeMap, HashMap};

use basalt::ids::{ChunkKey, DriveId, NodeId, VolumeId};
use basalt::placement::{Member, PoolId, pg_of};

use super::service::PgKey;
use crate::store::{Store, StoreError};
use crate::view::ClusterView;

/// What one sweep deletes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SweepPlan {
    /// Chunks of deleted volumes.
    pub(crate) deleted_volumes: Vec<(DriveId, ChunkKey)>,
    /// Chunks of PGs that list this node on that drive neither up nor acting, by drive and PG.
    pub(crate) strays: BTreeMap<(DriveId, PgKey), Vec<ChunkKey>>,
}

impl SweepPlan {
    /// Whether there is nothing to delete.
    pub(crate) fn is_empty(&self) -> bool {
        self.deleted_volumes.is_empty() && self.strays.is_empty()
    }
}

/// The PG of `chunk` in `view`, `None` if the view does not know its volume.
pub(crate) fn pg_of_chunk(view: &ClusterView, chunk: ChunkKey) -> Option<PgKey> {
    let volume = view.volumes.values().find(|v| v.id == chunk.volume)?;
    pg_in_pool(view, volume.pool, chunk)
}

fn pg_in_pool(view: &ClusterView, pool: PoolId, chunk: ChunkKey) -> Option<PgKey> {
    let pg_count = view.map.pool(pool)?.spec().pg_count;
    Some(PgKey {
        pool,
        pg: pg_of(chunk.volume, chunk.index, pg_count),
    })
}

/// Whether the PG `key` lists `member` in its up or acting set in `view` (a PG the view does
/// not know lists nobody).
pub(crate) fn lists(view: &ClusterView, key: PgKey, member: Member) -> bool {
    view.map
        .pool(key.pool)
        .and_then(|pool| pool.pg(key.pg))
        .is_some_and(|pg| pg.up().iter().chain(pg.acting()).any(|m| *m == member))
}

/// Deletes those of `chunks` that belong to the PG `key` in `view` from `store`, stopping at
/// the first failure: how many went, and the failure if any.
pub(crate) async fn delete_chunks(
    store: &Store,
    view: &ClusterView,
    key: PgKey,
    chunks: &[ChunkKey],
) -> (u64, Option<(ChunkKey, StoreError)>) {
    let mut deleted: u64 = 0;
    for chunk in chunks {
        if pg_of_chunk(view, *chunk) != Some(key) {
            continue;
        }
        if let Err(error) = store.delete_chunk(*chunk).await {
            return (deleted, Some((*chunk, error)));
        }
        deleted += 1;
    }
    (deleted, None)
}

/// Plans a sweep of `drives` (each drive's chunks) on node `me` from `view`.
pub(crate) fn plan(
    view: &ClusterView,
    me: NodeId,
    drives: &BTreeMap<DriveId, Vec<ChunkKey>>,
) -> SweepPlan {
    let pools: HashMap<VolumeId, PoolId> = view.volumes.values().map(|v| (v.id, v.pool)).collect();
    let mut plan = SweepPlan::default();
    for (drive, chunks) in drives {
        let member = Member {
            node: me,
            drive: *drive,
        };
        for chunk in chunks {
            let pool = pools.get(&chunk.volume);
            match pool.and_then(|pool| pg_in_pool(view, *pool, *chunk)) {
                Some(key) if !lists(view, key, member) => {
                    plan.strays.entry((*drive, key)).or_default().push(*chunk);
                }
                Some(_) => {}
                None if pool.is_none() && chunk.volume.0 < view.next_volume_id => {
                    plan.deleted_volumes.push((*drive, *chunk));
                }
                None => {}
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::VolumeView;
    use basalt::placement::{
        ClusterDescription, DriveDescription, NodeDescription, NodeState, PlacementMap, PoolSpec,
    };

    const POOL: PoolId = PoolId(3);

    fn drive(node: u64) -> DriveId {
        DriveId(uuid::Uuid::from_u128(u128::from(node)))
    }

    fn nodes(count: u64) -> ClusterDescription {
        ClusterDescription {
            nodes: (1..=count)
                .map(|id| NodeDescription {
                    id: NodeId(id),
                    zone: None,
                    state: NodeState::Up,
                    drives: vec![DriveDescription {
                        id: drive(id),
                        weight: 1000,
                    }],
                })
                .collect(),
        }
    }

    /// Four nodes, 16 PGs of 3 replicas, volume 2 live, volume 1 deleted (next id 3).
    fn view() -> ClusterView {
        let mut map = PlacementMap::new();
        let spec = PoolSpec {
            id: POOL,
            pg_count: 16,
            replicas: 3,
            min_size: 2,
        };
        map.add_pool(spec, &nodes(4)).unwrap();
        let volume = VolumeView {
            id: VolumeId(2),
            size_bytes: 1 << 30,
            pool: POOL,
        };
        ClusterView {
            map,
            chunk_size_bytes: 4 << 20,
            node_addrs: BTreeMap::new(),
            volumes: BTreeMap::from([("live".to_owned(), volume)]),
            next_volume_id: 3,
        }
    }

    fn chunk(volume: u64, index: u64) -> ChunkKey {
        ChunkKey::new(VolumeId(volume), index)
    }

    /// Goal: a node keeps exactly the chunks of the PGs that list it (on that drive); chunks
    /// of PGs that do not are strays grouped by PG; chunks of a deleted volume go; chunks of a
    /// volume newer than the view stay.
    #[test]
    fn plan_keeps_listed_chunks_and_finds_strays_and_deleted_volumes() {
        let view = view();
        let me = NodeId(1);
        let chunks: Vec<ChunkKey> = (0..64).map(|index| chunk(2, index)).collect();
        let extra = [chunk(1, 0), chunk(1, 7), chunk(9, 0)];
        let listed = chunks.iter().chain(&extra).copied().collect();
        let plan = plan(&view, me, &BTreeMap::from([(drive(1), listed)]));
        assert_eq!(
            plan.deleted_volumes,
            vec![(drive(1), chunk(1, 0)), (drive(1), chunk(1, 7))]
        );
        let own = Member {
            node: me,
            drive: drive(1),
        };
        let mut strays = 0;
        for chunk in &chunks {
            let key = pg_of_chunk(&view, *chunk).unwrap();
            let stray = plan
                .strays
                .get(&(drive(1), key))
                .is_some_and(|list| list.contains(chunk));
            assert_eq!(stray, !lists(&view, key, own), "{chunk}");
            strays += usize::from(stray);
        }
        assert!(strays > 0 && strays < chunks.len(), "{strays}");
        assert!(plan.strays.keys().all(|(_, key)| !lists(&view, *key, own)));
    }

    /// Goal: a down member stays in its PGs' up sets and keeps its copies (it returns with
    /// them); a drive the map does not place anything on holds only strays.
    #[test]
    fn a_down_member_keeps_its_copies_and_a_foreign_drive_holds_strays() {
        let mut view = view();
        let mut down = nodes(4);
        down.nodes[0].state = NodeState::Down;
        view.map.update(&down).unwrap();
        let chunks: Vec<ChunkKey> = (0..64).map(|index| chunk(2, index)).collect();
        let own = plan(
            &view,
            NodeId(1),
            &BTreeMap::from([(drive(1), chunks.clone())]),
        );
        let mut expected = 0;
        for chunk in &chunks {
            let key = pg_of_chunk(&view, *chunk).unwrap();
            let pg = view.map.pool(POOL).unwrap().pg(key.pg).unwrap();
            let up = pg.up().iter().any(|m| m.node == NodeId(1));
            assert!(pg.acting().iter().all(|m| m.node != NodeId(1)));
            expected += usize::from(!up);
        }
        let strays: usize = own.strays.values().map(Vec::len).sum();
        assert_eq!(strays, expected);
        let foreign = plan(&view, NodeId(1), &BTreeMap::from([(drive(7), chunks)]));
        assert_eq!(foreign.strays.values().map(Vec::len).sum::<usize>(), 64);
        assert!(!foreign.is_empty());
    }
}
