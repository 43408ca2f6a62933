//! Volume commands and idempotency keys.

use super::*;
use crate::ids::VolumeId;

fn create(name: &str, size_bytes: u64, replicas: Option<u8>, key: Option<&str>) -> CommandKind {
    CommandKind::CreateVolume {
        name: name.into(),
        size_bytes,
        replicas,
        idempotency_key: key.map(str::to_owned),
    }
}

fn volume_of(result: CommandResult) -> Volume {
    match result {
        Ok(Outcome::Volume(volume)) => volume,
        other => panic!("not a volume: {other:?}"),
    }
}

#[test]
fn create_resize_delete() {
    let mut state = cluster(3, 16);
    let volume = volume_of(run(&mut state, T0 + 10, create("db", GIB, None, None)));
    assert_eq!(volume.id, VolumeId(1));
    assert_eq!((volume.size_bytes, volume.replicas), (GIB, 3));
    assert_eq!(volume.pool, ClusterInfo::pool_for(3));
    assert_eq!(volume.created_unix_ms, T0 + 10);
    assert_eq!(state.volume_by_name("db"), Some(&volume));
    let grown = volume_of(run(
        &mut state,
        T0 + 11,
        CommandKind::ResizeVolume {
            volume: volume.id,
            size_bytes: 2 * GIB,
        },
    ));
    assert_eq!(grown.size_bytes, 2 * GIB);
    let same = CommandKind::ResizeVolume {
        volume: volume.id,
        size_bytes: 2 * GIB,
    };
    assert_eq!(
        volume_of(run(&mut state, T0 + 12, same)).size_bytes,
        2 * GIB
    );
    let shrink = CommandKind::ResizeVolume {
        volume: volume.id,
        size_bytes: GIB,
    };
    assert_eq!(
        run(&mut state, T0 + 13, shrink),
        Err(MetaError::ShrinkNotAllowed {
            current_bytes: 2 * GIB,
            requested_bytes: GIB
        })
    );
    let delete = CommandKind::DeleteVolume { volume: volume.id };
    assert_eq!(
        run(&mut state, T0 + 14, delete.clone()),
        Ok(Outcome::VolumeDeleted {
            volume: volume.id,
            name: "db".into()
        })
    );
    assert_eq!(
        run(&mut state, T0 + 15, delete),
        Err(MetaError::VolumeNotFound { volume: volume.id })
    );
    let resize_gone = CommandKind::ResizeVolume {
        volume: volume.id,
        size_bytes: 4 * GIB,
    };
    assert!(matches!(
        run(&mut state, T0 + 16, resize_gone),
        Err(MetaError::VolumeNotFound { .. })
    ));
    // The name is free again; the id is not.
    let again = volume_of(run(&mut state, T0 + 17, create("db", GIB, None, None)));
    assert_eq!(again.id, VolumeId(2));
}

#[test]
fn create_refuses_bad_input() {
    let mut state = cluster(3, 16);
    run(&mut state, T0 + 10, create("taken", GIB, None, None)).unwrap();
    let before = state.clone();
    for name in ["", "Upper", "-x", "a b", "a/b", &"a".repeat(64)] {
        let result = run(&mut state, T0 + 11, create(name, GIB, None, None));
        assert!(
            matches!(result, Err(MetaError::InvalidName { .. })),
            "{name}"
        );
    }
    for size in [0, 4095, 4097, VOLUME_SIZE_BYTES_MAX + 4096, u64::MAX] {
        let result = run(&mut state, T0 + 11, create("v", size, None, None));
        assert!(
            matches!(result, Err(MetaError::InvalidSize { .. })),
            "{size}"
        );
    }
    for replicas in [0, 6, 255] {
        let result = run(&mut state, T0 + 11, create("v", GIB, Some(replicas), None));
        assert_eq!(result, Err(MetaError::InvalidReplicas { replicas }));
    }
    assert_eq!(
        run(&mut state, T0 + 11, create("v", GIB, Some(4), None)),
        Err(MetaError::TooManyReplicas {
            replicas: 4,
            available: 3
        })
    );
    assert_eq!(
        run(&mut state, T0 + 11, create("taken", GIB, None, None)),
        Err(MetaError::VolumeExists {
            name: "taken".into()
        })
    );
    assert_eq!(state.volumes(), before.volumes());
    assert_eq!(state.map(), before.map());
    let resize = CommandKind::ResizeVolume {
        volume: VolumeId(1),
        size_bytes: 4095,
    };
    assert!(matches!(
        run(&mut state, T0 + 12, resize),
        Err(MetaError::InvalidSize { .. })
    ));
}

#[test]
fn other_replica_counts_get_their_own_pool() {
    let mut state = cluster(3, 16);
    let epoch = state.epoch();
    let volume = volume_of(run(&mut state, T0 + 10, create("pair", GIB, Some(2), None)));
    assert_eq!(volume.pool, ClusterInfo::pool_for(2));
    assert!(state.epoch() > epoch);
    let pool = state.map().pool(volume.pool).unwrap();
    assert_eq!((pool.spec().replicas, pool.spec().min_size), (2, 2));
    let single = volume_of(run(&mut state, T0 + 11, create("one", GIB, Some(1), None)));
    let pool = state.map().pool(single.pool).unwrap();
    assert_eq!((pool.spec().replicas, pool.spec().min_size), (1, 1));
}

#[test]
fn idempotent_create_returns_the_first_result() {
    let mut state = cluster(3, 16);
    let first = run(&mut state, T0 + 10, create("a", GIB, None, Some("k1")));
    let volume = volume_of(first.clone());
    let repeat = run(&mut state, T0 + 20, create("a", GIB, None, Some("k1")));
    assert_eq!(repeat, first);
    assert_eq!(state.volumes().len(), 1);
    // Even after a delete, the key still answers with the first result.
    run(
        &mut state,
        T0 + 30,
        CommandKind::DeleteVolume { volume: volume.id },
    )
    .unwrap();
    assert_eq!(
        run(&mut state, T0 + 40, create("a", GIB, None, Some("k1"))),
        first
    );
    assert!(state.volumes().is_empty());
    assert_eq!(
        run(&mut state, T0 + 50, create("a", 2 * GIB, None, Some("k1"))),
        Err(MetaError::IdempotencyConflict { key: "k1".into() })
    );
    for key in ["", "tab\there", &"k".repeat(256)] {
        assert_eq!(
            run(&mut state, T0 + 60, create("b", GIB, None, Some(key))),
            Err(MetaError::InvalidIdempotencyKey)
        );
    }
}

#[test]
fn idempotency_keys_expire_and_failures_are_not_recorded() {
    let mut state = cluster(3, 16);
    run(&mut state, T0 + 10, create("a", GIB, None, Some("k"))).unwrap();
    let later = T0 + 10 + IDEMPOTENCY_RETENTION_MS;
    // Expired: the retry runs again and meets the existing volume.
    assert_eq!(
        run(&mut state, later, create("a", GIB, None, Some("k"))),
        Err(MetaError::VolumeExists { name: "a".into() })
    );
    // That refusal was not recorded: the key is free for another request.
    let other = run(&mut state, later + 1, create("b", GIB, None, Some("k")));
    assert_eq!(volume_of(other).name, "b");
}

#[test]
fn idempotency_store_is_capped() {
    let mut store = super::super::idempotency::IdempotencyStore::default();
    let outcome = Outcome::TokenAdded { name: "x".into() };
    for index in 0..=IDEMPOTENCY_KEYS_MAX {
        store.record(&format!("key-{index}"), [0; 32], outcome.clone(), T0);
    }
    assert_eq!(store.len(), IDEMPOTENCY_KEYS_MAX);
    assert_eq!(store.lookup("key-0", &[0; 32]), Ok(None));
    assert_eq!(store.lookup("key-1", &[0; 32]), Ok(Some(outcome)));
    assert!(store.is_consistent());
    store.prune(T0 + IDEMPOTENCY_RETENTION_MS);
    assert!(store.is_empty());
}
