//! API types: JSON shapes, problem codes and statuses, the error mapping, views built from a
//! state, and the OpenAPI schemas the daemon will serve.

use super::*;
use crate::ids::{ClusterId, DriveId, NodeId, VolumeId};
use crate::meta::{
    Command, CommandKind, DriveInfo, MetaError, MetaState, NodeAddresses, NodeRole, Outcome,
};
use crate::size::Size;
use serde_json::json;
use utoipa::OpenApi;

const T0: u64 = 1_700_000_000_000;

fn state_with_nodes(nodes: u64) -> MetaState {
    let mut state = MetaState::new();
    let request = ClusterInitRequest {
        pg_count: Some(16),
        ..ClusterInitRequest::default()
    };
    let init = request.to_command(uuid::Uuid::from_bytes([7; 16]));
    state.apply(&Command::new(T0, init)).unwrap();
    for node in 1..=nodes {
        let register = CommandKind::RegisterNode {
            node: NodeId(node),
            addresses: NodeAddresses {
                peer: format!("127.0.0.{node}:9641"),
                api: format!("127.0.0.{node}:9640"),
                nbd: None,
            },
            zone: None,
            role: NodeRole::Voter,
            drives: vec![DriveInfo {
                id: DriveId(uuid::Uuid::from_bytes([node as u8; 16])),
                capacity_bytes: 1 << 40,
            }],
        };
        state.apply(&Command::new(T0 + node, register)).unwrap();
    }
    state
}

#[test]
fn problem_codes_are_stable_and_distinct() {
    let mut codes: Vec<&str> = ProblemType::ALL.iter().map(|t| t.code()).collect();
    for problem_type in ProblemType::ALL {
        let json = serde_json::to_value(problem_type).unwrap();
        assert_eq!(json, json!(problem_type.code()));
        let back: ProblemType = serde_json::from_value(json).unwrap();
        assert_eq!(back, problem_type);
        assert!((400..=599).contains(&problem_type.status()));
        assert!(!problem_type.title().is_empty());
    }
    codes.sort_unstable();
    let count = codes.len();
    codes.dedup();
    assert_eq!(codes.len(), count);
    let expected = [
        ("volume-exists", 409),
        ("volume-not-found", 404),
        ("invalid-name", 400),
        ("invalid-size", 400),
        ("shrink-not-allowed", 409),
        ("too-many-replicas", 409),
        ("no-quorum", 503),
        ("unauthorized", 401),
        ("forbidden", 403),
        ("idempotency-conflict", 422),
        ("unsupported-media-type", 415),
        ("payload-too-large", 413),
        ("not-leader", 503),
        ("internal", 500),
    ];
    for (code, status) in expected {
        let problem_type = ProblemType::ALL.iter().find(|t| t.code() == code).unwrap();
        assert_eq!(problem_type.status(), status, "{code}");
    }
}

#[test]
fn problem_document_shape() {
    let problem = Problem::from(&MetaError::VolumeExists { name: "db".into() });
    let json = serde_json::to_value(&problem).unwrap();
    assert_eq!(
        json,
        json!({
            "type": "volume-exists",
            "title": "Volume exists",
            "status": 409,
            "detail": "a volume named \"db\" exists",
        })
    );
    let located = problem.with_instance("/v1/volumes");
    assert_eq!(
        serde_json::to_value(&located).unwrap()["instance"],
        "/v1/volumes"
    );
    assert_eq!(
        located.to_string(),
        "volume-exists (409): a volume named \"db\" exists"
    );
}

#[test]
fn state_machine_refusals_map_to_problems() {
    let cases = [
        (MetaError::NotInitialized, "not-initialized"),
        (MetaError::InvalidName { name: "X".into() }, "invalid-name"),
        (
            MetaError::InvalidSize {
                size_bytes: 1,
                reason: "x".into(),
            },
            "invalid-size",
        ),
        (
            MetaError::InvalidReplicas { replicas: 9 },
            "invalid-replicas",
        ),
        (
            MetaError::TooManyReplicas {
                replicas: 4,
                available: 3,
            },
            "too-many-replicas",
        ),
        (
            MetaError::ShrinkNotAllowed {
                current_bytes: 2,
                requested_bytes: 1,
            },
            "shrink-not-allowed",
        ),
        (
            MetaError::VolumeNotFound {
                volume: VolumeId(3),
            },
            "volume-not-found",
        ),
        (
            MetaError::NodeNotFound { node: NodeId(3) },
            "node-not-found",
        ),
        (
            MetaError::NotEnoughNodes {
                replicas: 3,
                available: 2,
            },
            "not-enough-nodes",
        ),
        (
            MetaError::IdempotencyConflict { key: "k".into() },
            "idempotency-conflict",
        ),
        (MetaError::InvalidIdempotencyKey, "invalid-idempotency-key"),
        (MetaError::TooManyVolumes { limit: 1 }, "limit-reached"),
        (MetaError::TokenExists { name: "t".into() }, "token-exists"),
        (
            MetaError::AlreadyInitialized {
                cluster_id: ClusterId(uuid::Uuid::nil()),
            },
            "already-initialized",
        ),
    ];
    for (error, code) in cases {
        let problem = Problem::from(&error);
        assert_eq!(problem.problem_type.code(), code, "{error}");
        assert_eq!(problem.detail.as_deref(), Some(error.to_string().as_str()));
    }
}

#[test]
fn volume_create_accepts_bytes_or_text_and_refuses_unknown_fields() {
    let text: VolumeCreateRequest =
        serde_json::from_value(json!({"name": "db", "size": "10G"})).unwrap();
    assert_eq!(text.size, Size(10 << 30));
    assert_eq!(text.replicas, None);
    let bytes: VolumeCreateRequest =
        serde_json::from_value(json!({"name": "db", "size": 4096, "replicas": 2})).unwrap();
    assert_eq!((bytes.size, bytes.replicas), (Size(4096), Some(2)));
    for bad in [
        json!({"name": "db", "size": "10G", "colour": "red"}),
        json!({"name": "db"}),
        json!({"name": "db", "size": -1}),
        json!({"name": "db", "size": "10 furlongs"}),
        json!({"name": "db", "size": 4096, "replicas": 300}),
    ] {
        assert!(
            serde_json::from_value::<VolumeCreateRequest>(bad.clone()).is_err(),
            "{bad}"
        );
    }
    let command = text.to_command(Some("key".into()));
    assert_eq!(
        command,
        CommandKind::CreateVolume {
            name: "db".into(),
            size_bytes: 10 << 30,
            replicas: None,
            idempotency_key: Some("key".into()),
        }
    );
}

#[test]
fn volume_create_prevalidation_matches_the_state_machine() {
    let request = |name: &str, size: u64, replicas: Option<u8>| VolumeCreateRequest {
        name: name.into(),
        size: Size(size),
        replicas,
    };
    assert!(request("ok", 4096, Some(5)).validate().is_ok());
    assert!(matches!(
        request("Bad", 4096, None).validate(),
        Err(MetaError::InvalidName { .. })
    ));
    assert!(matches!(
        request("ok", 100, None).validate(),
        Err(MetaError::InvalidSize { .. })
    ));
    assert_eq!(
        request("ok", 4096, Some(0)).validate(),
        Err(MetaError::InvalidReplicas { replicas: 0 })
    );
    let resize: VolumeResizeRequest = serde_json::from_value(json!({"size": "20G"})).unwrap();
    assert_eq!(
        resize.to_command(VolumeId(4)),
        CommandKind::ResizeVolume {
            volume: VolumeId(4),
            size_bytes: 20 << 30
        }
    );
}

#[test]
fn views_from_state() {
    let mut state = state_with_nodes(3);
    let create = VolumeCreateRequest {
        name: "db".into(),
        size: Size(1 << 30),
        replicas: None,
    };
    let outcome = state
        .apply(&Command::new(T0 + 100, create.to_command(None)))
        .unwrap();
    let Outcome::Volume(volume) = outcome else {
        panic!("{outcome:?}")
    };
    let view = VolumeView::from(&volume);
    assert_eq!(
        serde_json::to_value(&view).unwrap(),
        json!({
            "id": 1, "name": "db", "size_bytes": 1u64 << 30, "replicas": 3,
            "state": "available", "created_at": "2023-11-14T22:13:20.100Z",
        })
    );
    let node = NodeView::new(state.node(NodeId(2)).unwrap(), T0 + 1_002);
    assert_eq!(node.last_heartbeat_age_ms, 1_000);
    assert_eq!(node.state, NodeStatus::Up);
    let json = serde_json::to_value(&node).unwrap();
    assert_eq!(json["role"], "voter");
    assert!(json.get("zone").is_none());
    let pgs = PgList::new(&state);
    assert_eq!(pgs.pgs.len(), 16);
    assert!(
        pgs.pgs
            .iter()
            .all(|pg| pg.acting.len() == 3 && pg.state == PgStatus::Active)
    );
}

#[test]
fn cluster_status_health() {
    let mut state = state_with_nodes(3);
    let status = ClusterStatus::new(&state, Some(NodeId(1)));
    assert_eq!(status.health, Health::Ok);
    assert_eq!((status.nodes.up, status.pgs.active), (3, 16));
    assert_eq!(ClusterStatus::new(&state, None).health, Health::Unavailable);
    let down = CommandKind::MarkNodeDown { node: NodeId(3) };
    state.apply(&Command::new(T0 + 10, down)).unwrap();
    let status = ClusterStatus::new(&state, Some(NodeId(1)));
    assert_eq!(status.health, Health::Degraded);
    assert_eq!((status.nodes.down, status.pgs.degraded), (1, 16));
    let down = CommandKind::MarkNodeDown { node: NodeId(2) };
    state.apply(&Command::new(T0 + 11, down)).unwrap();
    assert_eq!(
        ClusterStatus::new(&state, Some(NodeId(1))).health,
        Health::Unavailable
    );
    let empty = ClusterStatus::new(&MetaState::new(), None);
    assert_eq!(
        serde_json::to_value(&empty).unwrap().get("cluster_id"),
        None
    );
}

/// Goal: `GET /v1/pgs` filters by state and pages; the cluster status counts the states the
/// primaries report and sums what recovery has left.
#[test]
fn pg_list_query_and_recovery_status() {
    let state = state_with_nodes(3);
    let pool = &state.map().pools()[0];
    let primary = pool.pgs()[5].primary().unwrap().node;
    let mut reports = ClusterReports::default();
    reports.add(NodePgReport {
        node: primary.0,
        pgs: vec![PgReport {
            pool: pool.spec().id.0,
            pg: 5,
            engine: PgEngineState::Recovering,
            recovery: vec![MemberRecovery {
                node: 9,
                objects: 4,
                bytes: 4 << 20,
                backfill: false,
            }],
        }],
        recovered_bytes: 1,
        recovered_objects: 1,
    });
    reports.add_unreachable(NodeId(7));
    let recovering = PgListQuery {
        state: Some(PgStatus::Recovering),
        ..PgListQuery::default()
    };
    let list = PgList::query(&state, &reports, &recovering);
    assert_eq!((list.total, list.pgs.len()), (1, 1));
    assert_eq!((list.pgs[0].id, list.pgs[0].remaining_objects), (5, 4));
    assert!(list.pgs[0].reported);
    assert_eq!(list.unreachable_nodes, [7]);
    let page = PgListQuery {
        offset: Some(10),
        limit: Some(4),
        ..PgListQuery::default()
    };
    let list = PgList::query(&state, &reports, &page);
    assert_eq!(
        (list.total, list.pgs.len(), list.next_offset),
        (16, 4, Some(14))
    );
    let last = PgListQuery {
        offset: Some(14),
        ..page
    };
    assert_eq!(PgList::query(&state, &reports, &last).next_offset, None);

    let status = ClusterStatus::with_reports(&state, Some(NodeId(1)), &reports);
    assert_eq!((status.pgs.active, status.pgs.recovering), (15, 1));
    assert_eq!(status.health, Health::Degraded);
    let recovery = status.recovery.unwrap();
    assert_eq!(
        (recovery.remaining_objects, recovery.remaining_bytes),
        (4, 4 << 20)
    );
    assert_eq!(recovery.unreachable_nodes, [7]);
}

#[test]
fn times_never_fail_to_format() {
    assert_eq!(unix_ms_to_rfc3339(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(unix_ms_to_rfc3339(u64::MAX), "9999-12-31T23:59:59.999Z");
}

#[derive(OpenApi)]
#[openapi(components(schemas(
    VolumeCreateRequest,
    VolumeResizeRequest,
    VolumeView,
    VolumeList,
    NodeView,
    NodeList,
    PgList,
    ClusterStatus,
    ClusterInitRequest,
    Problem,
    ProblemType,
)))]
struct Doc;

#[test]
fn openapi_schemas_generate() {
    let json: serde_json::Value = serde_json::from_str(&Doc::openapi().to_json().unwrap()).unwrap();
    let schemas = &json["components"]["schemas"];
    let size = &schemas["VolumeCreateRequest"]["properties"]["size"];
    assert_eq!(size["$ref"], "#/components/schemas/Size");
    assert!(schemas["Size"]["oneOf"].is_array(), "{}", schemas["Size"]);
    let codes = schemas["ProblemType"]["enum"].as_array().unwrap();
    assert_eq!(codes.len(), ProblemType::ALL.len());
    assert!(codes.contains(&json!("volume-exists")));
    assert_eq!(
        schemas["VolumeCreateRequest"]["additionalProperties"],
        json!(false)
    );
}
