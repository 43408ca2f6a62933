//! Pure planning for peering and recovery: compare chunk labels `(epoch, version)` and decide
//! what to copy where.
//!
//! A chunk's label is the highest `(epoch, version)` applied to it (epoch first). Within one
//! epoch only one primary assigns versions, and every new primary first adopts the highest
//! version any member holds, so on two nodes:
//! - equal labels mean the same history for that chunk (a copy is labelled only once all of
//!   its data is durable, see `PushStep`);
//! - the higher label is the newer history: a write of a later epoch supersedes anything an
//!   older primary left behind, acknowledged or not.
//!
//! Peering adopts, per chunk, the highest label among the acting members; recovery makes a
//! member's labels equal to the primary's, whichever way they differ.

use std::collections::BTreeMap;

use basalt::ids::{ChunkKey, ChunkVersion, NodeId};

/// A node's chunks of one PG with their labels.
pub type Labels = BTreeMap<ChunkKey, ChunkVersion>;

/// One change that brings a target's chunk level with the source's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkFix {
    /// Copy the source's chunk (data and label) over the target's.
    Copy {
        /// The chunk.
        chunk: ChunkKey,
        /// The source's label when compared.
        label: ChunkVersion,
    },
    /// The source does not hold the chunk: delete it on the target.
    Delete {
        /// The chunk.
        chunk: ChunkKey,
    },
}

/// Every chunk on which `target` differs from `source`, in chunk order.
pub fn diff(source: &Labels, target: &Labels) -> Vec<ChunkFix> {
    let mut fixes = Vec::new();
    for (chunk, label) in source {
        if target.get(chunk) != Some(label) {
            fixes.push(ChunkFix::Copy {
                chunk: *chunk,
                label: *label,
            });
        }
    }
    for chunk in target.keys() {
        if !source.contains_key(chunk) {
            fixes.push(ChunkFix::Delete { chunk: *chunk });
        }
    }
    fixes
}

/// What a new primary does to adopt the newest history of its PG.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeeringPlan {
    /// Chunks some member holds at a higher label than this node: pull each from that member.
    pub pulls: Vec<(ChunkKey, NodeId, ChunkVersion)>,
    /// The labels this node holds once the pulls are done.
    pub adopted: Labels,
    /// The head to assign after: every version any member holds is at most `head.version`,
    /// and `head.epoch` is the highest epoch seen, so the next label is above all of them.
    pub head: ChunkVersion,
}

/// Plans peering from this node's labels and every other acting member's.
pub fn plan_peering(own: &Labels, members: &[(NodeId, Labels)]) -> PeeringPlan {
    let mut adopted = own.clone();
    let mut sources: BTreeMap<ChunkKey, (NodeId, ChunkVersion)> = BTreeMap::new();
    let mut head = own
        .values()
        .copied()
        .fold(ChunkVersion::default(), max_parts);
    for (node, labels) in members {
        for (chunk, label) in labels {
            head = max_parts(head, *label);
            let newer = adopted.get(chunk).is_none_or(|current| label > current);
            if newer {
                adopted.insert(*chunk, *label);
                sources.insert(*chunk, (*node, *label));
            }
        }
    }
    let pulls = sources
        .into_iter()
        .map(|(chunk, (node, label))| (chunk, node, label))
        .collect();
    PeeringPlan {
        pulls,
        adopted,
        head,
    }
}

/// The members whose labels equal `adopted` exactly: they hold the adopted history.
pub fn level_members(adopted: &Labels, members: &[(NodeId, Labels)]) -> Vec<NodeId> {
    members
        .iter()
        .filter(|(_, labels)| labels == adopted)
        .map(|(node, _)| *node)
        .collect()
}

fn max_parts(a: ChunkVersion, b: ChunkVersion) -> ChunkVersion {
    ChunkVersion {
        epoch: a.epoch.max(b.epoch),
        version: a.version.max(b.version),
    }
}

#[cfg(test)]
mod tests {
    use basalt::ids::{Epoch, VolumeId};

    use super::*;

    fn chunk(index: u64) -> ChunkKey {
        ChunkKey::new(VolumeId(7), index)
    }

    fn label(epoch: u64, version: u64) -> ChunkVersion {
        ChunkVersion {
            epoch: Epoch(epoch),
            version,
        }
    }

    fn labels(entries: &[(u64, u64, u64)]) -> Labels {
        entries
            .iter()
            .map(|(index, epoch, version)| (chunk(*index), label(*epoch, *version)))
            .collect()
    }

    /// Goal: a diff copies every chunk whose label differs either way, copies chunks the
    /// target lacks, and deletes chunks the source lacks.
    #[test]
    fn diff_covers_every_difference() {
        let source = labels(&[(0, 2, 5), (1, 1, 3), (2, 2, 9)]);
        let target = labels(&[(0, 2, 5), (1, 1, 4), (3, 1, 1)]);
        assert_eq!(
            diff(&source, &target),
            vec![
                ChunkFix::Copy {
                    chunk: chunk(1),
                    label: label(1, 3)
                },
                ChunkFix::Copy {
                    chunk: chunk(2),
                    label: label(2, 9)
                },
                ChunkFix::Delete { chunk: chunk(3) },
            ]
        );
        assert!(diff(&source, &source).is_empty());
    }

    /// Goal: peering adopts the highest label per chunk, epoch first, pulls only what it lacks,
    /// and its head is above every version seen on any member.
    #[test]
    fn peering_adopts_the_newest_history() {
        let own = labels(&[(0, 1, 4), (1, 3, 10)]);
        let members = vec![
            // An old primary's unacknowledged write at a high version of an older epoch.
            (NodeId(2), labels(&[(0, 1, 4), (1, 1, 12)])),
            // A member that holds a newer write of chunk 0 and a chunk we lack.
            (NodeId(3), labels(&[(0, 3, 11), (2, 3, 9)])),
        ];
        let plan = plan_peering(&own, &members);
        assert_eq!(
            plan.pulls,
            vec![
                (chunk(0), NodeId(3), label(3, 11)),
                (chunk(2), NodeId(3), label(3, 9)),
            ]
        );
        assert_eq!(plan.adopted, labels(&[(0, 3, 11), (1, 3, 10), (2, 3, 9)]));
        assert_eq!(plan.head, label(3, 12));
        assert!(level_members(&plan.adopted, &members).is_empty());
        let level = vec![(NodeId(4), plan.adopted.clone())];
        assert_eq!(level_members(&plan.adopted, &level), vec![NodeId(4)]);
    }

    /// Goal: with every member level, peering pulls nothing and keeps the head.
    #[test]
    fn peering_of_level_members_pulls_nothing() {
        let own = labels(&[(0, 2, 7), (5, 2, 8)]);
        let members = vec![(NodeId(2), own.clone()), (NodeId(3), own.clone())];
        let plan = plan_peering(&own, &members);
        assert!(plan.pulls.is_empty());
        assert_eq!(plan.head, label(2, 8));
        assert_eq!(
            level_members(&plan.adopted, &members),
            vec![NodeId(2), NodeId(3)]
        );
    }
}
