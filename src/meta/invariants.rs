//! Whole-state invariants: checked after every apply in debug builds, on every decoded
//! snapshot, and by the property tests.

use super::idempotency::IdempotencyStore;
use super::state::MetaState;
use super::volumes::check_volume_size;
use crate::placement::NodeState;
use thiserror::Error;

/// A broken state invariant: a bug, or a corrupted snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("metadata state invariant violated: {0}")]
pub struct StateInvariantError(pub String);

impl MetaState {
    /// Checks the structure: map invariants, acting sets only on up nodes and their drives,
    /// volume ids below the id counter and names indexed, token hashes indexed.
    pub fn check_invariants(&self) -> Result<(), StateInvariantError> {
        let fail = |what: String| Err(StateInvariantError(what));
        if self.cluster.is_none()
            && !(self.nodes.is_empty() && self.volumes.is_empty() && self.tokens.is_empty())
        {
            return fail("records exist before the cluster".into());
        }
        self.map
            .check_invariants()
            .map_err(|error| StateInvariantError(error.to_string()))?;
        if let Some(node) = self
            .removed_nodes
            .iter()
            .find(|n| self.nodes.contains_key(n))
        {
            return fail(format!("{node} is both removed and registered"));
        }
        self.check_placement()?;
        self.check_volumes()?;
        let tokens_indexed = self.tokens.len() == self.token_hashes.len()
            && self.token_hashes.iter().all(|(hash, name)| {
                self.tokens
                    .get(name)
                    .is_some_and(|token| token.sha256 == *hash)
            });
        if !tokens_indexed {
            return fail("token hash index out of step".into());
        }
        if !IdempotencyStore::is_consistent(&self.idempotency) {
            return fail("idempotency store out of step".into());
        }
        Ok(())
    }

    fn check_placement(&self) -> Result<(), StateInvariantError> {
        for (id, node) in &self.nodes {
            let sorted = node.drives.windows(2).all(|pair| pair[0].id < pair[1].id);
            if *id != node.id || !sorted {
                return Err(StateInvariantError(format!("{id} record malformed")));
            }
        }
        for pool in self.map.pools() {
            for (index, pg) in pool.pgs().iter().enumerate() {
                let acting_ok = pg.acting().iter().all(|member| {
                    self.nodes.get(&member.node).is_some_and(|node| {
                        node.state.is_serving()
                            && node.drives.iter().any(|drive| drive.id == member.drive)
                    })
                });
                let up_ok = pg.up().iter().all(|member| {
                    self.nodes
                        .get(&member.node)
                        .is_some_and(|node| matches!(node.state, NodeState::Up | NodeState::Down))
                });
                if !acting_ok || !up_ok {
                    return Err(StateInvariantError(format!(
                        "{} pg {index} holds a node that is not up (or a drive it lacks)",
                        pool.spec().id
                    )));
                }
            }
        }
        Ok(())
    }

    fn check_volumes(&self) -> Result<(), StateInvariantError> {
        if self.volume_names.len() != self.volumes.len() {
            return Err(StateInvariantError("volume name index out of step".into()));
        }
        for (id, volume) in &self.volumes {
            let indexed = self.volume_names.get(&volume.name) == Some(id);
            let id_ok = *id == volume.id && id.0 >= 1 && id.0 < self.next_volume_id;
            let pool_ok = self.map.pool(volume.pool).is_some();
            if !indexed || !id_ok || !pool_ok || check_volume_size(volume.size_bytes).is_err() {
                return Err(StateInvariantError(format!("{id} record malformed")));
            }
        }
        Ok(())
    }
}
