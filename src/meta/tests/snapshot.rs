//! Snapshots round-trip and refuse anything but an intact snapshot of this version.

use super::*;

fn busy_state() -> MetaState {
    let mut state = cluster(4, 16);
    let create = CommandKind::CreateVolume {
        name: "v".into(),
        size_bytes: GIB,
        replicas: None,
        idempotency_key: Some("key".into()),
    };
    run(&mut state, T0 + 10, create).unwrap();
    let token = CommandKind::AddToken {
        name: "t".into(),
        role: TokenRole::Admin,
        token_sha256: token_sha256("a-long-enough-token"),
    };
    run(&mut state, T0 + 11, token).unwrap();
    run(
        &mut state,
        T0 + 12,
        CommandKind::MarkNodeDown { node: NodeId(2) },
    )
    .unwrap();
    state
}

#[test]
fn round_trip_equals_state() {
    let state = busy_state();
    let bytes = state.to_snapshot();
    assert_eq!(&bytes[..8], &SNAPSHOT_MAGIC);
    assert_eq!(MetaState::from_snapshot(&bytes).unwrap(), state);
    let empty = MetaState::new();
    assert_eq!(
        MetaState::from_snapshot(&empty.to_snapshot()).unwrap(),
        empty
    );
}

#[test]
fn refuses_damaged_or_foreign_snapshots() {
    let bytes = busy_state().to_snapshot();
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(matches!(
        MetaState::from_snapshot(&flipped),
        Err(SnapshotError::Checksum)
    ));
    let mut magic = bytes.clone();
    magic[0] = b'X';
    assert!(matches!(
        MetaState::from_snapshot(&magic),
        Err(SnapshotError::Magic)
    ));
    let mut version = bytes.clone();
    let newer = SNAPSHOT_VERSION + 1;
    version[8..12].copy_from_slice(&newer.to_le_bytes());
    assert!(matches!(
        MetaState::from_snapshot(&version),
        Err(SnapshotError::UnsupportedVersion { version }) if version == newer
    ));
    assert!(matches!(
        MetaState::from_snapshot(&bytes[..bytes.len() - 1]),
        Err(SnapshotError::Length { .. })
    ));
    assert!(matches!(
        MetaState::from_snapshot(&bytes[..10]),
        Err(SnapshotError::Short { size_bytes: 10 })
    ));
}

/// Re-wraps `body` in a valid envelope, so only the body's content is wrong.
fn envelope(body: &[u8]) -> Vec<u8> {
    let mut out = SNAPSHOT_MAGIC.to_vec();
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

#[test]
fn refuses_bodies_that_are_garbage_long_or_invalid() {
    let bytes = busy_state().to_snapshot();
    let mut long = bytes[24..].to_vec();
    long.push(0);
    assert!(matches!(
        MetaState::from_snapshot(&envelope(&long)),
        Err(SnapshotError::TrailingBytes { count: 1 })
    ));
    assert!(matches!(
        MetaState::from_snapshot(&envelope(&[0xff; 7])),
        Err(SnapshotError::Decode(_))
    ));
    // A well-formed body whose volume index is out of step with the volumes.
    let mut broken = busy_state();
    broken.volume_names.clear();
    let body = postcard::to_allocvec(&broken).unwrap();
    assert!(matches!(
        MetaState::from_snapshot(&envelope(&body)),
        Err(SnapshotError::Invalid(_))
    ));
}

#[test]
fn commands_and_results_round_trip_through_postcard() {
    // The Raft glue stores commands in its log and hands results back with postcard.
    let commands = [
        init_kind(16),
        register_kind(3),
        CommandKind::RecordHeartbeats {
            beats: vec![(NodeId(1), T0)],
        },
        CommandKind::MarkNodeOut {
            node: NodeId(2),
            by_operator: true,
        },
        CommandKind::CreateVolume {
            name: "v".into(),
            size_bytes: GIB,
            replicas: Some(2),
            idempotency_key: Some("k".into()),
        },
        CommandKind::AddToken {
            name: "t".into(),
            role: TokenRole::ReadOnly,
            token_sha256: [9; 32],
        },
    ];
    let mut state = cluster(3, 16);
    for kind in commands {
        let command = Command::new(T0 + 50, kind);
        let bytes = postcard::to_allocvec(&command).unwrap();
        assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), command);
        let result = state.apply(&command);
        let bytes = postcard::to_allocvec(&result).unwrap();
        assert_eq!(
            postcard::from_bytes::<CommandResult>(&bytes).unwrap(),
            result
        );
    }
}
