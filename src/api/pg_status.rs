//! Cluster-wide PG states: what each primary reports about its PGs (engine state, recovery
//! remaining), merged with the placement map by one pure function, [`classify_pg`], that the
//! API (`GET /v1/pgs`, `GET /v1/cluster`) and the `basalt_pgs{state}` metric both use, so the
//! two cannot disagree about what "recovering" means.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::cluster::PgStatus;
use crate::ids::NodeId;
use crate::placement::{PgPlacement, Pool, PoolSpec};

/// A PG engine's state as its node reports it (the daemon's engine state, on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PgEngineState {
    /// Primary with every acting member in sync.
    Active,
    /// Primary serving writes, some acting members waiting for recovery.
    Degraded,
    /// Primary with fewer than `min_size` copies available.
    Inactive,
    /// New primary agreeing with the members on the PG's history.
    Peering,
    /// Primary copying missed data to some acting members.
    Recovering,
    /// Replica of another node's primary.
    Replica,
    /// Not in the acting set.
    Stray,
    /// The local store failed.
    Failed,
}

/// Recovery of one member of a PG, as the primary reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecovery {
    /// The member being recovered.
    pub node: u64,
    /// Chunks the current recovery pass still has to fix on it.
    pub objects: u64,
    /// Allocated bytes of the chunks still to copy.
    pub bytes: u64,
    /// The member held no chunk of the PG when its recovery started (it is new to the PG):
    /// backfill rather than catching up.
    pub backfill: bool,
}

/// A primary's report of one PG it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgReport {
    /// The pool.
    pub pool: u32,
    /// The PG within the pool.
    pub pg: u32,
    /// The engine's state.
    pub engine: PgEngineState,
    /// Members being recovered, with what is left.
    pub recovery: Vec<MemberRecovery>,
}

impl PgReport {
    /// Chunks and allocated bytes left to copy over every member of the PG.
    pub fn remaining(&self) -> (u64, u64) {
        self.recovery.iter().fold((0, 0), |(objects, bytes), m| {
            (
                objects.saturating_add(m.objects),
                bytes.saturating_add(m.bytes),
            )
        })
    }
}

/// What one node reports: the PGs its engines run (other than as replica or stray) and its
/// recovery counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePgReport {
    /// The reporting node.
    pub node: u64,
    /// Its PGs, by (pool, pg).
    pub pgs: Vec<PgReport>,
    /// Bytes its peering and recovery copied since it started.
    pub recovered_bytes: u64,
    /// Chunks its peering and recovery copied or deleted since it started.
    pub recovered_objects: u64,
}

/// Every answer a fan-out collected, indexed for the merge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterReports {
    by_node: BTreeMap<u64, HashMap<(u32, u32), PgReport>>,
    /// Up nodes that did not answer in time: their PGs' states come from the map alone.
    pub unreachable: Vec<u64>,
    /// Sum of the answering nodes' recovered bytes.
    pub recovered_bytes: u64,
    /// Sum of the answering nodes' recovered chunks.
    pub recovered_objects: u64,
}

impl ClusterReports {
    /// Adds one node's answer.
    pub fn add(&mut self, report: NodePgReport) {
        self.recovered_bytes = self.recovered_bytes.saturating_add(report.recovered_bytes);
        self.recovered_objects = self
            .recovered_objects
            .saturating_add(report.recovered_objects);
        let pgs = report
            .pgs
            .into_iter()
            .map(|pg| ((pg.pool, pg.pg), pg))
            .collect();
        self.by_node.insert(report.node, pgs);
    }

    /// Records an up node that did not answer.
    pub fn add_unreachable(&mut self, node: NodeId) {
        self.unreachable.push(node.0);
    }

    /// Whether `node` answered.
    pub fn answered(&self, node: NodeId) -> bool {
        self.by_node.contains_key(&node.0)
    }

    /// Whether some up node did not answer (states of its PGs may lag).
    pub fn partial(&self) -> bool {
        !self.unreachable.is_empty()
    }

    /// What `primary` reported about PG `pg` of `pool`, if it answered and runs it.
    pub fn report(&self, primary: NodeId, pool: u32, pg: u32) -> Option<&PgReport> {
        self.by_node.get(&primary.0)?.get(&(pool, pg))
    }
}

/// A PG's state from the size of its acting set (0: no primary) and its primary's report (None: no report, the map alone
/// decides). In order: no primary or fewer than `min_size` acting (or a failed or inactive
/// engine) is `inactive`; a peering engine is `peering`; a recovering engine, or one with
/// members left to copy, is `backfilling` if a member is new to the PG and `recovering`
/// otherwise; fewer than `replicas` acting (or an engine waiting to recover a member) is
/// `degraded`; the rest is `active`. A report by an engine that is not the primary (its map
/// lags) is ignored.
pub fn classify_pg(spec: &PoolSpec, acting: usize, report: Option<&PgReport>) -> PgStatus {
    if acting == 0 || acting < usize::from(spec.min_size) {
        return PgStatus::Inactive;
    }
    let engine = report.map(|r| r.engine);
    match engine {
        Some(PgEngineState::Failed | PgEngineState::Inactive) => return PgStatus::Inactive,
        Some(PgEngineState::Peering) => return PgStatus::Peering,
        _ => {}
    }
    let recovering = engine == Some(PgEngineState::Recovering)
        || report.is_some_and(|r| !r.recovery.is_empty() && is_primary_state(r.engine));
    if recovering {
        let backfill = report.is_some_and(|r| r.recovery.iter().any(|m| m.backfill));
        return if backfill {
            PgStatus::Backfilling
        } else {
            PgStatus::Recovering
        };
    }
    if acting < usize::from(spec.replicas) || engine == Some(PgEngineState::Degraded) {
        return PgStatus::Degraded;
    }
    PgStatus::Active
}

/// Whether `state` is one a primary reports (a replica's or stray's report says nothing about
/// the PG's recovery).
fn is_primary_state(state: PgEngineState) -> bool {
    !matches!(state, PgEngineState::Replica | PgEngineState::Stray)
}

/// The state of PG `index` of `pool` and what is left to copy (chunks, bytes), from the
/// primary's report in `reports`.
pub fn pg_state_of(
    pool: &Pool,
    index: u32,
    placement: &PgPlacement,
    reports: &ClusterReports,
) -> (PgStatus, u64, u64) {
    let spec = pool.spec();
    let report = placement
        .primary()
        .and_then(|primary| reports.report(primary.node, spec.id.0, index))
        .filter(|r| is_primary_state(r.engine));
    let (objects, bytes) = report.map_or((0, 0), PgReport::remaining);
    (
        classify_pg(spec, placement.acting().len(), report),
        objects,
        bytes,
    )
}

/// Most PGs one `GET /v1/pgs` answer lists (also the default page size).
pub const PG_LIST_LIMIT_MAX: u64 = 4096;

/// Largest `offset` of `GET /v1/pgs`: the most PGs a map can hold (every pool at the largest
/// PG count).
pub const PG_LIST_OFFSET_MAX: u64 =
    crate::placement::POOLS_MAX as u64 * crate::placement::PG_COUNT_MAX as u64;
// The OpenAPI bound of `offset` is written out (an attribute needs a literal).
const _: () = assert!(PG_LIST_OFFSET_MAX == 1_048_576);

/// Query of `GET /v1/pgs`: a state filter and a page.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PgListQuery {
    /// Only PGs in this state.
    #[serde(default)]
    pub state: Option<PgStatus>,
    /// Skip this many matching PGs (the previous page's `next_offset`).
    #[serde(default)]
    #[param(minimum = 0, maximum = 1_048_576)]
    pub offset: Option<u64>,
    /// At most this many PGs (default and maximum 4096).
    #[serde(default)]
    #[param(minimum = 1, maximum = 4096)]
    pub limit: Option<u64>,
}

impl PgListQuery {
    /// Why the query is refused (a parameter out of its documented range), if it is.
    pub fn invalid(&self) -> Option<String> {
        if self.limit == Some(0) || self.limit.is_some_and(|limit| limit > PG_LIST_LIMIT_MAX) {
            return Some(format!("limit must be in 1..={PG_LIST_LIMIT_MAX}"));
        }
        if self
            .offset
            .is_some_and(|offset| offset > PG_LIST_OFFSET_MAX)
        {
            return Some(format!("offset must be in 0..={PG_LIST_OFFSET_MAX}"));
        }
        None
    }

    /// The page size asked for, within `1..=PG_LIST_LIMIT_MAX`.
    pub fn limit(&self) -> u64 {
        self.limit
            .unwrap_or(PG_LIST_LIMIT_MAX)
            .clamp(1, PG_LIST_LIMIT_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::PoolId;

    fn spec() -> PoolSpec {
        PoolSpec {
            id: PoolId(3),
            pg_count: 8,
            replicas: 3,
            min_size: 2,
        }
    }

    fn report(engine: PgEngineState, recovery: &[(u64, bool)]) -> PgReport {
        PgReport {
            pool: 3,
            pg: 0,
            engine,
            recovery: recovery
                .iter()
                .map(|(objects, backfill)| MemberRecovery {
                    node: 2,
                    objects: *objects,
                    bytes: objects * 10,
                    backfill: *backfill,
                })
                .collect(),
        }
    }

    /// Goal: the map alone decides active / degraded / inactive by acting-set size, and no
    /// primary is inactive whatever a report says.
    #[test]
    fn classify_from_the_map_alone() {
        let spec = spec();
        assert_eq!(classify_pg(&spec, 3, None), PgStatus::Active);
        assert_eq!(classify_pg(&spec, 2, None), PgStatus::Degraded);
        assert_eq!(classify_pg(&spec, 1, None), PgStatus::Inactive);
        let active = report(PgEngineState::Active, &[]);
        assert_eq!(classify_pg(&spec, 0, Some(&active)), PgStatus::Inactive);
    }

    /// Goal: the primary's engine refines the map: peering, recovering (a returning member),
    /// backfilling (a member new to the PG), degraded (waiting to recover), inactive (failed
    /// store); replica and stray reports change nothing.
    #[test]
    fn classify_with_the_primary_report() {
        let spec = spec();
        let classify = |acting, engine, recovery: &[(u64, bool)]| {
            classify_pg(&spec, acting, Some(&report(engine, recovery)))
        };
        use PgEngineState as E;
        assert_eq!(classify(3, E::Peering, &[]), PgStatus::Peering);
        assert_eq!(classify(2, E::Peering, &[]), PgStatus::Peering);
        assert_eq!(
            classify(3, E::Recovering, &[(5, false)]),
            PgStatus::Recovering
        );
        assert_eq!(classify(3, E::Recovering, &[]), PgStatus::Recovering);
        assert_eq!(
            classify(3, E::Recovering, &[(5, false), (9, true)]),
            PgStatus::Backfilling
        );
        // Members still listed while the engine already reports degraded: still copying.
        assert_eq!(
            classify(3, E::Degraded, &[(1, false)]),
            PgStatus::Recovering
        );
        assert_eq!(classify(3, E::Degraded, &[]), PgStatus::Degraded);
        assert_eq!(classify(2, E::Active, &[]), PgStatus::Degraded);
        assert_eq!(classify(3, E::Active, &[]), PgStatus::Active);
        assert_eq!(classify(3, E::Failed, &[]), PgStatus::Inactive);
        assert_eq!(classify(3, E::Replica, &[(5, false)]), PgStatus::Active);
        assert_eq!(classify(3, E::Stray, &[]), PgStatus::Active);
        assert_eq!(
            classify(1, E::Recovering, &[(5, false)]),
            PgStatus::Inactive
        );
    }

    /// Goal: a report is looked up by the PG's primary, and what is left sums over members.
    #[test]
    fn reports_are_indexed_by_node_and_pg() {
        let mut reports = ClusterReports::default();
        reports.add(NodePgReport {
            node: 1,
            pgs: vec![report(PgEngineState::Recovering, &[(2, false), (3, true)])],
            recovered_bytes: 7,
            recovered_objects: 1,
        });
        reports.add_unreachable(NodeId(2));
        assert!(reports.partial());
        assert!(reports.answered(NodeId(1)));
        assert!(!reports.answered(NodeId(2)));
        let found = reports.report(NodeId(1), 3, 0).expect("reported");
        assert_eq!(found.remaining(), (5, 50));
        assert!(reports.report(NodeId(2), 3, 0).is_none());
        assert!(reports.report(NodeId(1), 3, 1).is_none());
        assert_eq!(reports.recovered_bytes, 7);
    }

    /// Goal: state names parse back, and the page size stays within bounds.
    #[test]
    fn state_names_and_limits() {
        for state in PgStatus::ALL {
            assert_eq!(state.label().parse::<PgStatus>(), Ok(state));
        }
        assert!("bogus".parse::<PgStatus>().is_err());
        let query = |limit| PgListQuery {
            limit,
            ..PgListQuery::default()
        };
        assert_eq!(query(None).limit(), PG_LIST_LIMIT_MAX);
        assert_eq!(query(Some(0)).limit(), 1);
        assert_eq!(query(Some(10)).limit(), 10);
        assert_eq!(query(Some(u64::MAX)).limit(), PG_LIST_LIMIT_MAX);
    }

    /// Goal: out-of-range pages are refused with a reason; the documented bounds pass.
    #[test]
    fn page_bounds_are_checked() {
        let query = |offset, limit| PgListQuery {
            state: None,
            offset,
            limit,
        };
        assert!(query(None, None).invalid().is_none());
        assert!(
            query(Some(PG_LIST_OFFSET_MAX), Some(PG_LIST_LIMIT_MAX))
                .invalid()
                .is_none()
        );
        assert!(query(None, Some(0)).invalid().is_some());
        assert!(query(None, Some(PG_LIST_LIMIT_MAX + 1)).invalid().is_some());
        assert!(
            query(Some(PG_LIST_OFFSET_MAX + 1), None)
                .invalid()
                .is_some()
        );
        assert!(query(Some(1 << 63), None).invalid().is_some());
    }
}
