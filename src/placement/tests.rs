//! Placement tests: properties from issue 3 (balance, movement, failure domains, determinism,
//! errors). Each test opens with its goal. Proptests use a fixed seed so a run replays exactly.

use super::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

const REPLICAS: u8 = 3;
/// Largest tolerated deviation of a node's replica count from its weighted ideal.
const BALANCE_TOLERANCE: f64 = 0.10;
/// Largest tolerated movement when adding a node, as a multiple of the new node's ideal share.
const ADD_MOVEMENT_FACTOR: f64 = 1.3;

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x6261_7361_6c74),
        failure_persistence: None,
        ..Config::default()
    }
}

fn drive(node: u64, index: u64) -> DriveId {
    DriveId(uuid::Uuid::from_u64_pair(node, index))
}

/// A node with two drives splitting `weight` unevenly (so drive choice is exercised).
fn node(id: u64, weight: u64, zone: Option<&str>) -> NodeDescription {
    NodeDescription {
        id: NodeId(id),
        zone: zone.map(str::to_owned),
        state: NodeState::Up,
        drives: vec![
            DriveDescription {
                id: drive(id, 0),
                weight: weight / 3,
            },
            DriveDescription {
                id: drive(id, 1),
                weight: weight - weight / 3,
            },
        ],
    }
}

fn cluster(weights: &[u64]) -> ClusterDescription {
    let nodes = (0u64..)
        .zip(weights)
        .map(|(id, w)| node(id, *w, None))
        .collect();
    ClusterDescription { nodes }
}

fn spec(pg_count: u32) -> PoolSpec {
    PoolSpec {
        id: PoolId(0),
        pg_count,
        replicas: REPLICAS,
        min_size: 2,
    }
}

fn map_of(cluster: &ClusterDescription, pg_count: u32) -> PlacementMap {
    let mut map = PlacementMap::new();
    map.add_pool(spec(pg_count), cluster).unwrap();
    map.check_invariants().unwrap();
    map
}

fn up_sets(map: &PlacementMap) -> Vec<Vec<Member>> {
    map.pools()[0]
        .pgs()
        .iter()
        .map(|pg| pg.up().to_vec())
        .collect()
}

/// Replicas per node id (dense ids `0..count`).
fn replica_counts(map: &PlacementMap, count: usize) -> Vec<f64> {
    let mut counts = vec![0.0; count];
    for set in up_sets(map) {
        for member in set {
            counts[member.node.0 as usize] += 1.0;
        }
    }
    counts
}

/// The weighted ideal replica count per node: `k × pgs` shared by weight, capped at one replica
/// per PG (water-filling), as floats: test-only.
fn ideal_counts(weights: &[u64], pg_count: u32, replicas: u8) -> Vec<f64> {
    let (pgs, k) = (f64::from(pg_count), f64::from(replicas));
    let mut capped = vec![false; weights.len()];
    loop {
        let capped_count = capped.iter().filter(|c| **c).count() as f64;
        let free: f64 = weights
            .iter()
            .zip(&capped)
            .filter(|(_, c)| !**c)
            .map(|(w, _)| *w as f64)
            .sum();
        let shares: Vec<f64> = weights
            .iter()
            .zip(&capped)
            .map(|(w, c)| {
                if *c {
                    pgs
                } else {
                    (k - capped_count) * pgs * *w as f64 / free
                }
            })
            .collect();
        let mut again = false;
        for (share, capped) in shares.iter().zip(capped.iter_mut()) {
            if !*capped && *share > pgs {
                *capped = true;
                again = true;
            }
        }
        if !again {
            return shares;
        }
    }
}

/// Worst relative deviation of any node from its ideal.
fn worst_deviation(counts: &[f64], ideal: &[f64]) -> f64 {
    counts
        .iter()
        .zip(ideal)
        .map(|(c, i)| (c / i - 1.0).abs())
        .fold(0.0, f64::max)
}

/// Up-set members of `after` that were not in the same PG's up set in `before`.
fn moved(before: &PlacementMap, after: &PlacementMap) -> usize {
    up_sets(before)
        .iter()
        .zip(up_sets(after))
        .map(|(old, new)| new.iter().filter(|m| !old.contains(m)).count())
        .sum()
}

/// Enough PGs that a node's expected count is in the thousands: binomial noise of ±2-3%.
fn balance_pg_count(nodes: usize) -> u32 {
    ((nodes as u32) * 1024)
        .next_power_of_two()
        .clamp(4096, PG_COUNT_MAX)
}

proptest! {
    #![proptest_config(config(12))]

    /// Goal: every node holds its weighted share of replicas within ±10%, for 3..64 nodes with
    /// weights differing up to 2.5×. Method: water-filled ideal vs. counted up-set members.
    #[test]
    fn balance_within_tolerance(weights in prop::collection::vec(1000u64..=2500, 3..=64)) {
        let pg_count = balance_pg_count(weights.len());
        let map = map_of(&cluster(&weights), pg_count);
        let counts = replica_counts(&map, weights.len());
        let worst = worst_deviation(&counts, &ideal_counts(&weights, pg_count, REPLICAS));
        prop_assert!(worst <= BALANCE_TOLERANCE, "worst deviation {worst:.4}, {} nodes", weights.len());
    }

    /// Goal: adding one node to N (any weights) moves at most 1.3× the new node's ideal share
    /// of replicas, and only to the new node or within PGs it entered.
    #[test]
    fn adding_a_node_moves_little(
        weights in prop::collection::vec(1000u64..=2500, 3..=63),
        new_weight in 1000u64..=2500,
    ) {
        let pg_count = 4096;
        let before = map_of(&cluster(&weights), pg_count);
        let mut grown = weights.clone();
        grown.push(new_weight);
        let mut after = before.clone();
        let update = after.update(&cluster(&grown)).unwrap();
        after.check_invariants().unwrap();
        let total = f64::from(pg_count) * f64::from(REPLICAS);
        let ideal_share = ideal_counts(&grown, pg_count, REPLICAS)[weights.len()] / total;
        let moved_share = moved(&before, &after) as f64 / total;
        prop_assert_eq!(update.moved_replicas, moved(&before, &after));
        prop_assert!(moved_share <= ADD_MOVEMENT_FACTOR * ideal_share,
            "moved {moved_share:.4} vs ideal {ideal_share:.4}, N={}", weights.len());
        let new_node = NodeId(weights.len() as u64);
        for (old, new) in up_sets(&before).iter().zip(up_sets(&after)) {
            prop_assert!(old == &new || new.iter().any(|m| m.node == new_node));
        }
    }

    /// Goal: with equal weights, adding one node to N moves at most 1.3/N of the replicas.
    #[test]
    fn adding_a_node_equal_weights(count in 3usize..=63) {
        let pg_count = 4096;
        let weights = vec![1000u64; count];
        let before = map_of(&cluster(&weights), pg_count);
        let mut after = before.clone();
        after.update(&cluster(&vec![1000u64; count + 1])).unwrap();
        let moved_share = moved(&before, &after) as f64 / (f64::from(pg_count) * 3.0);
        prop_assert!(moved_share <= ADD_MOVEMENT_FACTOR / count as f64, "moved {moved_share:.4}");
    }

    /// Goal: marking a node out (or dropping it from the description) changes exactly the PGs
    /// whose up set held it, replacing one replica in each; nothing else moves.
    #[test]
    fn removing_a_node_moves_only_its_pgs(
        weights in prop::collection::vec(1000u64..=2500, 4..=64),
        victim_seed in any::<usize>(),
        drop_from_description in any::<bool>(),
    ) {
        let pg_count = 2048;
        let mut description = cluster(&weights);
        let before = map_of(&description, pg_count);
        let victim = victim_seed % weights.len();
        if drop_from_description {
            description.nodes.remove(victim);
        } else {
            description.nodes[victim].state = NodeState::Out;
        }
        let mut after = before.clone();
        let update = after.update(&description).unwrap();
        after.check_invariants().unwrap();
        let victim = NodeId(victim as u64);
        let mut holding = 0;
        for (old, new) in up_sets(&before).iter().zip(up_sets(&after)) {
            let held = old.iter().any(|m| m.node == victim);
            holding += usize::from(held);
            prop_assert_eq!(new.len(), usize::from(REPLICAS));
            prop_assert!(new.iter().all(|m| m.node != victim));
            if held {
                let kept: Vec<&Member> = old.iter().filter(|m| m.node != victim).collect();
                prop_assert_eq!(kept, new.iter().take(2).collect::<Vec<_>>(), "rest kept in order");
            } else {
                prop_assert_eq!(old, &new);
            }
        }
        prop_assert_eq!(update.changed_pgs, holding);
        prop_assert_eq!(update.moved_replicas, holding);
    }

    /// Goal: the map depends only on the description's content, not on its order.
    #[test]
    fn deterministic_regardless_of_order(
        weights in prop::collection::vec(1000u64..=2500, 3..=16),
        rotation in any::<usize>(),
    ) {
        let description = cluster(&weights);
        let mut shuffled = description.clone();
        let len = shuffled.nodes.len();
        shuffled.nodes.rotate_left(rotation % len);
        shuffled.nodes.reverse();
        prop_assert_eq!(map_of(&description, 512), map_of(&shuffled, 512));
    }
}

/// Goal: the chunk → PG hash is stable (pinned values), in range and spreads chunks evenly.
#[test]
fn pg_of_is_stable_and_uniform() {
    let pg_count = 256;
    let mut counts = vec![0u32; pg_count as usize];
    for chunk in 0..25_600 {
        let pg = pg_of(VolumeId(7), chunk, pg_count);
        assert_eq!(pg, pg_of(VolumeId(7), chunk, pg_count));
        counts[pg.0 as usize] += 1;
    }
    assert!(counts.iter().all(|c| (60..=140).contains(c)), "{counts:?}");
    assert_ne!(
        pg_of(VolumeId(1), 0, 1 << 16),
        pg_of(VolumeId(2), 0, 1 << 16)
    );
    assert_eq!(pg_of(VolumeId(9), 9, 1), PgId(0));
}

/// Goal: the same input gives the same map, bit for bit, across calls (the metadata service's
/// replicas apply the same commands and must agree).
#[test]
fn same_input_same_map() {
    let description = cluster(&[1000, 2000, 1500, 1200, 1800]);
    let first = postcard::to_allocvec(&map_of(&description, 1024)).unwrap();
    let second = postcard::to_allocvec(&map_of(&description, 1024)).unwrap();
    assert_eq!(first, second);
    let decoded: PlacementMap = postcard::from_bytes(&first).unwrap();
    decoded.check_invariants().unwrap();
    assert_eq!(decoded, map_of(&description, 1024));
}

/// Goal: with at least `replicas` zones every acting set spans distinct zones; with fewer zones
/// than replicas, sets use every zone and still distinct nodes; replica count is respected.
#[test]
fn distinct_nodes_and_zones() {
    for zone_count in [2u64, 3, 4] {
        let nodes: Vec<NodeDescription> = (0..12)
            .map(|id| {
                node(
                    id,
                    1000 + id * 100,
                    Some(["a", "b", "c", "d"][(id % zone_count) as usize]),
                )
            })
            .collect();
        let description = ClusterDescription { nodes };
        let map = map_of(&description, 1024);
        for set in up_sets(&map) {
            assert_eq!(set.len(), usize::from(REPLICAS));
            let mut nodes: Vec<NodeId> = set.iter().map(|m| m.node).collect();
            let mut zones: Vec<u64> = set.iter().map(|m| m.node.0 % zone_count).collect();
            nodes.sort_unstable();
            nodes.dedup();
            zones.sort_unstable();
            zones.dedup();
            assert_eq!(nodes.len(), 3);
            assert_eq!(
                zones.len(),
                (zone_count as usize).min(3),
                "zones {zone_count}: {set:?}"
            );
        }
    }
}

/// Goal: a down node leaves acting sets (the rest keep their order) without moving any up set;
/// when it returns, acting sets are exactly as before. Each change advances the epoch.
#[test]
fn down_then_up_restores_acting_sets() {
    let mut description = cluster(&[1000, 1500, 2000, 1000, 1200, 1700]);
    let mut map = map_of(&description, 512);
    let original = map.clone();
    description.nodes[2].state = NodeState::Down;
    let update = map.update(&description).unwrap();
    assert_eq!(update.moved_replicas, 0);
    assert!(update.epoch > original.epoch() && update.changed_pgs > 0);
    for (old, new) in original.pools()[0].pgs().iter().zip(map.pools()[0].pgs()) {
        assert_eq!(old.up(), new.up());
        let expected: Vec<Member> = old
            .acting()
            .iter()
            .filter(|m| m.node != NodeId(2))
            .copied()
            .collect();
        assert_eq!(new.acting(), expected.as_slice());
    }
    let before_return = map.clone();
    description.nodes[2].state = NodeState::Up;
    map.update(&description).unwrap();
    for ((old, away), new) in original.pools()[0]
        .pgs()
        .iter()
        .zip(before_return.pools()[0].pgs())
        .zip(map.pools()[0].pgs())
    {
        // Back in every PG it held, but not primary again before the PG settles.
        assert_eq!(new.primary(), away.primary());
        let mut members: Vec<Member> = new.acting().to_vec();
        members.sort_unstable();
        let mut expected: Vec<Member> = old.acting().to_vec();
        expected.sort_unstable();
        assert_eq!(members, expected);
        assert_eq!(new.is_pending(), old.primary() != away.primary());
    }
    settle_all(&mut map, &description);
    for (old, new) in original.pools()[0].pgs().iter().zip(map.pools()[0].pgs()) {
        assert_eq!(old.acting(), new.acting());
        assert!(!new.is_pending());
    }
    let unchanged = map.update(&description).unwrap();
    assert_eq!(
        (unchanged.changed_pgs, unchanged.epoch),
        (0, map.epoch()),
        "no-op update"
    );
}

/// Settles every pending PG, as the metadata service does when their primaries report in sync.
fn settle_all(map: &mut PlacementMap, description: &ClusterDescription) -> usize {
    let pending: Vec<(PoolId, PgId, crate::ids::Epoch)> = map
        .pools()
        .iter()
        .flat_map(|pool| {
            (0u32..)
                .zip(pool.pgs())
                .filter(|(_, pg)| pg.is_pending())
                .map(|(index, pg)| (pool.spec().id, PgId(index), pg.since()))
        })
        .collect();
    for (pool, pg, since) in &pending {
        let update = map.settle(*pool, *pg, *since, description).unwrap();
        assert_eq!(update.changed_pgs, 1);
    }
    map.check_invariants().unwrap();
    pending.len()
}

/// Goal: a node added to the cluster enters the up sets of the PGs it takes, while the members
/// it replaces stay acting (after it, the primary unchanged) until each PG settles: the number
/// of copies never drops during a rebalance.
#[test]
fn rebalance_keeps_replaced_members_until_settled() {
    let mut description = cluster(&[1000, 1000, 1000, 1000]);
    let mut map = map_of(&description, 256);
    let original = map.clone();
    description.nodes.push(node(4, 1000, None));
    map.update(&description).unwrap();
    let mut moved = 0;
    for (old, new) in original.pools()[0].pgs().iter().zip(map.pools()[0].pgs()) {
        assert_eq!(new.primary(), old.primary(), "the primary stays");
        assert!(
            old.acting().iter().all(|m| new.acting().contains(m)),
            "no copy dropped"
        );
        if new.up().iter().any(|m| m.node == NodeId(4)) {
            moved += 1;
            assert!(new.is_pending());
            assert_eq!(new.acting().len(), 4);
        } else {
            assert_eq!(new.acting(), old.acting());
        }
    }
    assert!(moved > 0);
    assert_eq!(settle_all(&mut map, &description), moved);
    for pg in map.pools()[0].pgs() {
        assert_eq!(pg.acting(), pg.up(), "settled: the up set acts");
    }
}

/// Goal: a draining node keeps serving (and keeps the primary role) in every PG it held until
/// that PG settles on its replacement; settling then drops it.
#[test]
fn draining_node_serves_until_settled() {
    let mut description = cluster(&[1000, 1000, 1000, 1000]);
    let mut map = map_of(&description, 128);
    let original = map.clone();
    description.nodes[1].state = NodeState::Draining;
    map.update(&description).unwrap();
    for (old, new) in original.pools()[0].pgs().iter().zip(map.pools()[0].pgs()) {
        assert!(new.up().iter().all(|m| m.node != NodeId(1)));
        assert_eq!(new.primary(), old.primary());
        assert!(old.acting().iter().all(|m| new.acting().contains(m)));
    }
    assert!(map.pgs_of_node(NodeId(1)).count() > 0);
    settle_all(&mut map, &description);
    assert_eq!(map.pgs_of_node(NodeId(1)).count(), 0);
    // A draining node that then stops leaves acting sets at once (nothing to settle).
    let mut again = original.clone();
    description.nodes[1].state = NodeState::Draining;
    again.update(&description).unwrap();
    description.nodes[1].state = NodeState::Out;
    again.update(&description).unwrap();
    assert_eq!(again.pgs_of_node(NodeId(1)).count(), 0);
    again.check_invariants().unwrap();
}

/// Goal: settling is refused for a report about an older placement, ignored for a PG that is
/// not pending, refused when a member of the up set is down (it would drop a copy), and names
/// a missing PG.
#[test]
fn settle_checks_its_report() {
    let mut description = cluster(&[1000, 1000, 1000, 1000]);
    let mut map = map_of(&description, 16);
    let steady = map.pools()[0].pgs()[0].since();
    let noop = map
        .settle(PoolId(0), PgId(0), steady, &description)
        .unwrap();
    assert_eq!((noop.changed_pgs, noop.epoch), (0, map.epoch()));
    assert_eq!(
        map.settle(PoolId(0), PgId(99), steady, &description),
        Err(SettleError::NoSuchPg {
            pool: PoolId(0),
            pg: PgId(99)
        })
    );
    description.nodes.push(node(4, 1000, None));
    map.update(&description).unwrap();
    let (index, pending) = (0u32..)
        .zip(map.pools()[0].pgs())
        .find(|(_, pg)| pg.is_pending())
        .map(|(index, pg)| (PgId(index), pg.clone()))
        .unwrap();
    assert!(matches!(
        map.settle(PoolId(0), index, steady, &description),
        Err(SettleError::Stale { .. })
    ));
    let newcomer = pending
        .up()
        .iter()
        .find(|m| m.node == NodeId(4))
        .unwrap()
        .node;
    description.nodes[newcomer.0 as usize].state = NodeState::Down;
    map.update(&description).unwrap();
    let since = map.pools()[0].pgs()[index.0 as usize].since();
    assert!(!map.would_settle(PoolId(0), index, since, &description));
    assert_eq!(
        map.settle(PoolId(0), index, since, &description),
        Err(SettleError::WouldDropCopy)
    );
    description.nodes[newcomer.0 as usize].state = NodeState::Up;
    map.update(&description).unwrap();
    let since = map.pools()[0].pgs()[index.0 as usize].since();
    assert!(
        !map.would_settle(PoolId(0), index, steady, &description),
        "stale"
    );
    assert!(map.would_settle(PoolId(0), index, since, &description));
    let settled = map.settle(PoolId(0), index, since, &description).unwrap();
    assert_eq!(settled.changed_pgs, 1);
    assert!(!map.pools()[0].pgs()[index.0 as usize].is_pending());
}

/// Goal: health follows acting set size against `replicas` and `min_size`.
#[test]
fn health_follows_acting_size() {
    let mut description = cluster(&[1000; 3]);
    let mut map = map_of(&description, 16);
    assert_eq!(map.pools()[0].health(PgId(0)), Some(PgHealth::Active));
    description.nodes[0].state = NodeState::Down;
    map.update(&description).unwrap();
    assert_eq!(map.pools()[0].health(PgId(0)), Some(PgHealth::Degraded));
    description.nodes[1].state = NodeState::Down;
    map.update(&description).unwrap();
    assert_eq!(map.pools()[0].health(PgId(0)), Some(PgHealth::Inactive));
    assert_eq!(map.pools()[0].health(PgId(16)), None);
    let (pg, placement) = map.pools()[0].locate(VolumeId(3), 5);
    assert_eq!(placement.primary().map(|m| m.node), Some(NodeId(2)), "{pg}");
}

/// Goal: typed errors for fewer eligible nodes than replicas (at pool creation and when an
/// update would leave too few), bad specs and duplicate ids; a failed update changes nothing.
#[test]
fn errors_are_typed_and_leave_the_map_alone() {
    let two = cluster(&[1000, 1000]);
    let too_few = PlacementMap::new().add_pool(spec(64), &two);
    assert_eq!(
        too_few,
        Err(PlacementError::TooFewFailureDomains {
            replicas: 3,
            available: 2
        })
    );
    let mut description = cluster(&[1000, 1000, 1000]);
    let mut map = map_of(&description, 64);
    let before = map.clone();
    description.nodes[1].state = NodeState::Out;
    let error = map.update(&description).unwrap_err();
    assert_eq!(
        error,
        PlacementError::TooFewFailureDomains {
            replicas: 3,
            available: 2
        }
    );
    assert_eq!(map, before);
    let bad = PoolSpec {
        id: PoolId(1),
        pg_count: 100,
        replicas: 3,
        min_size: 2,
    };
    assert_eq!(
        map.add_pool(bad, &cluster(&[1000; 3])),
        Err(PlacementError::InvalidPool { spec: bad })
    );
    assert_eq!(
        map.add_pool(spec(64), &cluster(&[1000; 3])),
        Err(PlacementError::PoolExists { pool: PoolId(0) })
    );
    let mut duplicate = cluster(&[1000; 4]);
    duplicate.nodes[3].id = NodeId(0);
    assert!(matches!(
        map.update(&duplicate),
        Err(PlacementError::DuplicateNode { .. })
    ));
    let mut shared_drive = cluster(&[1000; 4]);
    shared_drive.nodes[3].drives[0].id = drive(0, 0);
    assert!(matches!(
        map.update(&shared_drive),
        Err(PlacementError::DuplicateDrive { .. })
    ));
    assert_eq!(map, before);
}

/// Goal: an out node that comes back takes PGs again (it is a changed node), and a node whose
/// drive disappears has that drive replaced by another of its drives or another node.
#[test]
fn out_node_returns_and_lost_drive_is_replaced() {
    let mut description = cluster(&[1000, 1200, 1400, 1600, 1800]);
    let mut map = map_of(&description, 512);
    description.nodes[4].state = NodeState::Out;
    map.update(&description).unwrap();
    assert_eq!(map.pgs_of_node(NodeId(4)).count(), 0);
    description.nodes[4].state = NodeState::Up;
    map.update(&description).unwrap();
    let fresh = map_of(&description, 512);
    let returned = map.pgs_of_node(NodeId(4)).count();
    assert_eq!(
        returned,
        fresh.pgs_of_node(NodeId(4)).count(),
        "back to its computed share"
    );
    description.nodes[1].drives.remove(0);
    map.update(&description).unwrap();
    map.check_invariants().unwrap();
    let lost = drive(1, 0);
    assert!(up_sets(&map).iter().flatten().all(|m| m.drive != lost));
}

/// Weights from a fixed LCG in `1000..=2500`: the report's clusters.
fn report_weights(count: usize, seed: u64) -> Vec<u64> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            1000 + (state >> 33) % 1501
        })
        .collect()
}

/// Goal: print the numbers quoted in `docs/placement.md` (balance, movement, drift). Run with
/// `cargo test -p basalt --lib placement_report -- --ignored --nocapture`.
#[test]
#[ignore = "report for docs/placement.md, not a check"]
fn placement_report() {
    for count in [3usize, 4, 5, 8, 16, 32, 64] {
        let weights = report_weights(count, count as u64);
        let pg_count = balance_pg_count(count);
        let started = std::time::Instant::now();
        let map = map_of(&cluster(&weights), pg_count);
        let encoded_bytes = postcard::to_allocvec(&map).unwrap().len();
        println!(
            "N={count:2} compute={:?} encoded_bytes={encoded_bytes}",
            started.elapsed()
        );
        let worst = worst_deviation(
            &replica_counts(&map, count),
            &ideal_counts(&weights, pg_count, 3),
        );
        let small = map_of(&cluster(&weights), 4096);
        let worst_small = worst_deviation(
            &replica_counts(&small, count),
            &ideal_counts(&weights, 4096, 3),
        );
        println!(
            "N={count:2} pgs= 4096 balance_worst={:5.2}%",
            worst_small * 100.0
        );
        let mut grown = weights.clone();
        grown.push(1750);
        let mut added = map.clone();
        added.update(&cluster(&grown)).unwrap();
        let total = f64::from(pg_count) * 3.0;
        let ideal_share = ideal_counts(&grown, pg_count, 3)[count] / total;
        let moved_share = moved(&map, &added) as f64 / total;
        let mut removed = map.clone();
        let mut shrunk = cluster(&weights);
        shrunk.nodes[0].state = NodeState::Out;
        let removed_update = removed.update(&shrunk).ok();
        let mut drifted = added.clone();
        drifted.update(&cluster(&weights)).unwrap();
        let drift = worst_deviation(
            &replica_counts(&drifted, count),
            &ideal_counts(&weights, pg_count, 3),
        );
        println!(
            "N={count:2} pgs={pg_count:5} balance_worst={:5.2}% add: moved={:.4} ideal={:.4} \
             ratio={:.2} moved*N={:.2} remove: {:?} after add+remove worst={:5.2}%",
            worst * 100.0,
            moved_share,
            ideal_share,
            moved_share / ideal_share,
            moved_share * count as f64,
            removed_update.map(|u| (u.changed_pgs, u.moved_replicas)),
            drift * 100.0,
        );
    }
}
