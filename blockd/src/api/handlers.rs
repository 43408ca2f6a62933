//! The `/v1` handlers. Reads answer from the node's local copy of the state; writes become
//! commands proposed through the [`ControlPlane`]. Each handler's `#[utoipa::path]` is its
//! entry in the OpenAPI document.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use basalt::api::{
    ClusterInitRequest, ClusterReports, ClusterStatus, ExportView, NbdEndpointView, NodeList,
    NodeView, PgList, PgListQuery, ProblemType, ScrubStartResponse, ScrubStatus,
    VolumeCreateRequest, VolumeList, VolumeResizeRequest, VolumeView,
};
use basalt::ids::NodeId;
use basalt::meta::{
    CommandKind, MetaState, NodeRecord, Outcome, Volume, check_volume_size, is_valid_name,
};
use basalt::placement::NodeState;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{ApiJson, ApiPath, ApiQuery, idempotency_key};
use super::openapi::{
    ActionProblems, ApiDoc, CreateProblems, LookupProblems, ReadProblems, WriteProblems,
};
use super::{ApiError, ControlPlane};

/// What every handler gets.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) cp: Arc<dyn ControlPlane>,
    pub(crate) openapi: Arc<utoipa::openapi::OpenApi>,
}

impl AppState {
    /// Gets `kind` applied; a refusal or a failure to commit becomes a problem.
    async fn propose(&self, kind: CommandKind) -> Result<Outcome, ApiError> {
        Ok(self.cp.propose(kind).await??)
    }
}

/// Every route with its OpenAPI entry (routes sharing a path share a `routes!`).
pub(crate) fn api_routes() -> OpenApiRouter<AppState> {
    use utoipa::OpenApi;
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(openapi_json))
        .routes(routes!(list_volumes, create_volume))
        .routes(routes!(get_volume, delete_volume))
        .routes(routes!(resize_volume))
        .routes(routes!(list_nodes))
        .routes(routes!(get_node, remove_node))
        .routes(routes!(node_out))
        .routes(routes!(node_up))
        .routes(routes!(list_pgs))
        .routes(routes!(cluster_status))
        .routes(routes!(cluster_init))
        .routes(routes!(get_export))
        .routes(routes!(scrub_status, scrub_start))
}

/// A command answered with an outcome of another kind: a bug in the glue or state machine.
fn unexpected(outcome: &Outcome) -> ApiError {
    ApiError::new(
        ProblemType::Internal,
        format!("unexpected outcome {outcome:?}"),
    )
}

/// The live volume called `name` in `state`.
fn volume_named<'a>(state: &'a MetaState, name: &str) -> Result<&'a Volume, ApiError> {
    if !is_valid_name(name) {
        let shown: String = name.chars().take(80).collect();
        return Err(ApiError::new(
            ProblemType::InvalidName,
            format!("invalid volume name {shown:?}: must match [a-z0-9][a-z0-9._-]{{0,62}}"),
        ));
    }
    state.volume_by_name(name).ok_or_else(|| {
        ApiError::new(
            ProblemType::VolumeNotFound,
            format!("no volume named {name:?}"),
        )
    })
}

fn node_view(app: &AppState, node: NodeId) -> Result<NodeView, ApiError> {
    let state = app.cp.state();
    let record: &NodeRecord = state
        .node(node)
        .ok_or_else(|| ApiError::new(ProblemType::NodeNotFound, format!("{node} not found")))?;
    Ok(NodeView::new(record, app.cp.now_unix_ms()))
}

/// `GET /healthz` response.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct Healthz {
    /// Always `ok`: the process serves HTTP.
    status: String,
    /// The answering node.
    node_id: u64,
}

/// Liveness: the daemon is up and serving HTTP (no token needed).
#[utoipa::path(get, path = "/healthz", tag = "meta", security(()),
    responses((status = 200, description = "Serving", body = Healthz)))]
async fn healthz(State(app): State<AppState>) -> Json<Healthz> {
    Json(Healthz {
        status: "ok".to_owned(),
        node_id: app.cp.node_id().0,
    })
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta", security(("bearer" = [])),
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object),
        ReadProblems))]
async fn openapi_json(State(app): State<AppState>) -> Json<utoipa::openapi::OpenApi> {
    Json(app.openapi.as_ref().clone())
}

/// Lists every volume.
#[utoipa::path(get, path = "/v1/volumes", tag = "volumes", security(("bearer" = [])),
    responses((status = 200, description = "Every live volume, by id", body = VolumeList),
        ReadProblems))]
async fn list_volumes(State(app): State<AppState>) -> Json<VolumeList> {
    let state = app.cp.state();
    Json(VolumeList {
        volumes: state.volumes().values().map(VolumeView::from).collect(),
    })
}

/// Creates a volume. With an `Idempotency-Key`, a repeat of the same request returns the first
/// result; the same key with another request is refused.
#[utoipa::path(post, path = "/v1/volumes", tag = "volumes", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes the create safe to retry: 1..=255 printable ASCII characters",
        min_length = 1, max_length = 255, pattern = "^[!-~]([ -~]{0,253}[!-~])?$")),
    request_body(content = VolumeCreateRequest, content_type = "application/json"),
    responses((status = 201, description = "Created (or the first result of this key)",
        body = VolumeView), CreateProblems))]
async fn create_volume(
    State(app): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<VolumeCreateRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    request.validate()?;
    let outcome = app.propose(request.to_command(key)).await?;
    let Outcome::Volume(volume) = &outcome else {
        return Err(unexpected(&outcome));
    };
    let view = VolumeView::from(volume);
    let location = format!("/v1/volumes/{}", view.name);
    Ok((StatusCode::CREATED, [(LOCATION, location)], Json(view)).into_response())
}

/// Shows one volume.
#[utoipa::path(get, path = "/v1/volumes/{name}", tag = "volumes", security(("bearer" = [])),
    params(("name" = String, Path, description = "Volume name",
        pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")),
    responses((status = 200, description = "The volume", body = VolumeView), LookupProblems))]
async fn get_volume(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<VolumeView>, ApiError> {
    let state = app.cp.state();
    Ok(Json(VolumeView::from(volume_named(&state, &name)?)))
}

/// Deletes a volume (its name is free again at once; its id is never reused).
#[utoipa::path(delete, path = "/v1/volumes/{name}", tag = "volumes", security(("bearer" = [])),
    params(("name" = String, Path, description = "Volume name",
        pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")),
    responses((status = 204, description = "Deleted"), ActionProblems))]
async fn delete_volume(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let volume = volume_named(&app.cp.state(), &name)?.id;
    match app.propose(CommandKind::DeleteVolume { volume }).await? {
        Outcome::VolumeDeleted { .. } => Ok(StatusCode::NO_CONTENT),
        outcome => Err(unexpected(&outcome)),
    }
}

/// Grows a volume (a smaller size is refused; the same size changes nothing).
#[utoipa::path(post, path = "/v1/volumes/{name}/resize", tag = "volumes",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Volume name",
        pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")),
    request_body(content = VolumeResizeRequest, content_type = "application/json"),
    responses((status = 200, description = "The volume after the resize", body = VolumeView),
        WriteProblems))]
async fn resize_volume(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<VolumeResizeRequest>,
) -> Result<Json<VolumeView>, ApiError> {
    let volume = volume_named(&app.cp.state(), &name)?.id;
    check_volume_size(request.size.bytes())?;
    match app.propose(request.to_command(volume)).await? {
        Outcome::Volume(volume) => Ok(Json(VolumeView::from(&volume))),
        outcome => Err(unexpected(&outcome)),
    }
}

/// Lists every node.
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", security(("bearer" = [])),
    responses((status = 200, description = "Every registered node, by id", body = NodeList),
        ReadProblems))]
async fn list_nodes(State(app): State<AppState>) -> Json<NodeList> {
    let state = app.cp.state();
    let now = app.cp.now_unix_ms();
    Json(NodeList {
        nodes: state
            .nodes()
            .values()
            .map(|record| NodeView::new(record, now))
            .collect(),
    })
}

/// Shows one node.
#[utoipa::path(get, path = "/v1/nodes/{id}", tag = "nodes", security(("bearer" = [])),
    params(("id" = u64, Path, description = "Node id", minimum = 0)),
    responses((status = 200, description = "The node", body = NodeView), LookupProblems))]
async fn get_node(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<NodeView>, ApiError> {
    node_view(&app, NodeId(id)).map(Json)
}

/// Marks a node out (drains it): its replicas are reassigned to other nodes, and the failure
/// detector leaves it out until an operator marks it up.
#[utoipa::path(post, path = "/v1/nodes/{id}/out", tag = "nodes", security(("bearer" = [])),
    params(("id" = u64, Path, description = "Node id", minimum = 0)),
    responses((status = 200, description = "The node afterwards", body = NodeView),
        ActionProblems))]
async fn node_out(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<NodeView>, ApiError> {
    let node = NodeId(id);
    let kind = CommandKind::MarkNodeOut {
        node,
        by_operator: true,
    };
    match app.propose(kind).await? {
        Outcome::Node { .. } => node_view(&app, node).map(Json),
        outcome => Err(unexpected(&outcome)),
    }
}

/// Removes an out node that no PG lists any more: it leaves the node table at once and the
/// metadata service's membership shortly after (the leader reconciles Raft membership); its
/// id is retired. Idempotent.
#[utoipa::path(delete, path = "/v1/nodes/{id}", tag = "nodes", security(("bearer" = [])),
    params(("id" = u64, Path, description = "Node id", minimum = 0)),
    responses((status = 204, description = "Removed (or removed before)"), ActionProblems))]
async fn remove_node(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<u64>,
) -> Result<StatusCode, ApiError> {
    match app
        .propose(CommandKind::RemoveNode { node: NodeId(id) })
        .await?
    {
        Outcome::NodeRemoved { .. } => Ok(StatusCode::NO_CONTENT),
        outcome => Err(unexpected(&outcome)),
    }
}

/// Marks a down or out node up: it rejoins placement (undoes an operator's out).
#[utoipa::path(post, path = "/v1/nodes/{id}/up", tag = "nodes", security(("bearer" = [])),
    params(("id" = u64, Path, description = "Node id", minimum = 0)),
    responses((status = 200, description = "The node afterwards", body = NodeView),
        ActionProblems))]
async fn node_up(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<NodeView>, ApiError> {
    let node = NodeId(id);
    match app.propose(CommandKind::MarkNodeUp { node }).await? {
        Outcome::Node { .. } => node_view(&app, node).map(Json),
        outcome => Err(unexpected(&outcome)),
    }
}

/// The answering node's scrub: whether a pass runs, what the passes and read repair found
/// and fixed on the PGs this node leads.
#[utoipa::path(get, path = "/v1/scrub", tag = "cluster", security(("bearer" = [])),
    responses((status = 200, description = "This node's scrub", body = ScrubStatus),
        LookupProblems))]
async fn scrub_status(State(app): State<AppState>) -> Result<Json<ScrubStatus>, ApiError> {
    app.cp.scrub_status().map(Json).ok_or_else(no_scrub)
}

/// Starts a scrub pass on the answering node now (over the PGs it leads); a pass already
/// running is left alone (`started` false). Admin token.
#[utoipa::path(post, path = "/v1/scrub", tag = "cluster", security(("bearer" = [])),
    responses((status = 202, description = "Pass requested", body = ScrubStartResponse),
        ActionProblems))]
async fn scrub_start(
    State(app): State<AppState>,
) -> Result<(StatusCode, Json<ScrubStartResponse>), ApiError> {
    let started = app.cp.scrub_start().ok_or_else(no_scrub)?;
    let status = app.cp.scrub_status().ok_or_else(no_scrub)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ScrubStartResponse { started, status }),
    ))
}

fn no_scrub() -> ApiError {
    ApiError::new(
        ProblemType::NotFound,
        "this node runs no replication service (no drives), so no scrub",
    )
}

/// Lists placement groups with their acting sets and states (every PG, or those in one
/// state), a page at a time. States combine the map with what every up node reports about
/// the PGs it leads; nodes that do not answer in time are listed in `unreachable_nodes`.
#[utoipa::path(get, path = "/v1/pgs", tag = "cluster", security(("bearer" = [])),
    params(PgListQuery),
    responses((status = 200, description = "The PGs asked for", body = PgList),
        LookupProblems))]
async fn list_pgs(
    State(app): State<AppState>,
    ApiQuery(query): ApiQuery<PgListQuery>,
) -> Result<Json<PgList>, ApiError> {
    if let Some(reason) = query.invalid() {
        return Err(ApiError::new(ProblemType::InvalidParameter, reason));
    }
    let reports = app.cp.pg_reports().await;
    Ok(Json(PgList::query(&app.cp.state(), &reports, &query)))
}

fn status_of(app: &AppState, reports: Option<&ClusterReports>) -> ClusterStatus {
    let leader = app.cp.leader().map(|leader| leader.node);
    let state = app.cp.state();
    let mut status = match reports {
        Some(reports) => ClusterStatus::with_reports(&state, leader, reports),
        None => ClusterStatus::new(&state, leader),
    };
    status.raft = Some(app.cp.raft_status());
    status
}

/// Cluster health: nodes by state, PGs by state, recovery left, the leader and the map epoch.
#[utoipa::path(get, path = "/v1/cluster", tag = "cluster", security(("bearer" = [])),
    responses((status = 200, description = "Cluster status", body = ClusterStatus),
        ReadProblems))]
async fn cluster_status(State(app): State<AppState>) -> Json<ClusterStatus> {
    let reports = app.cp.pg_reports().await;
    Json(status_of(&app, Some(&reports)))
}

/// Creates the cluster (`basalt cluster init`). Repeating it with the same `cluster_id` is a
/// no-op (200); another id once a cluster exists is refused (`already-initialized`).
#[utoipa::path(post, path = "/v1/cluster/init", tag = "cluster", security(("bearer" = [])),
    request_body(content = ClusterInitRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Cluster created", body = ClusterStatus),
        (status = 200, description = "The cluster already had this id", body = ClusterStatus),
        WriteProblems))]
async fn cluster_init(
    State(app): State<AppState>,
    ApiJson(request): ApiJson<ClusterInitRequest>,
) -> Result<(StatusCode, Json<ClusterStatus>), ApiError> {
    let kind = request.to_command(uuid::Uuid::new_v4());
    match app.propose(kind).await? {
        Outcome::ClusterInitialized { created, .. } => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(status_of(&app, None))))
        }
        outcome => Err(unexpected(&outcome)),
    }
}

/// Where a host connects to a volume over NBD: every up node's NBD address (all serve every
/// volume), the answering node first.
#[utoipa::path(get, path = "/v1/exports/{volume}", tag = "exports", security(("bearer" = [])),
    params(("volume" = String, Path, description = "Volume name",
        pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")),
    responses((status = 200, description = "The volume's NBD endpoints", body = ExportView),
        LookupProblems))]
async fn get_export(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ExportView>, ApiError> {
    let state = app.cp.state();
    let volume = volume_named(&state, &name)?;
    let local = app.cp.node_id();
    let mut endpoints: Vec<NbdEndpointView> = state
        .nodes()
        .values()
        .filter(|record| record.state == NodeState::Up)
        .filter_map(|record| {
            record
                .addresses
                .nbd
                .as_ref()
                .map(|address| NbdEndpointView {
                    node: record.id.0,
                    address: address.clone(),
                    local: record.id == local,
                })
        })
        .collect();
    // Stable: nodes come by id, the local one moves to the front.
    endpoints.sort_by_key(|endpoint| !endpoint.local);
    Ok(Json(ExportView {
        volume: volume.name.clone(),
        export_name: volume.name.clone(),
        size_bytes: volume.size_bytes,
        endpoints,
    }))
}
