//! Types of the HTTP provisioning API (`/v1`, DESIGN §8): request and response bodies, RFC 9457
//! problem documents and the mapping from state-machine refusals to them.
//!
//! Shared by the daemon's handlers (which derive the OpenAPI document from these types with
//! `utoipa`) and the `basalt` CLI (which deserialises the same types), so the two cannot drift.
//! [`client`] (feature `client`, on by default) is the one module that does I/O: a typed HTTP
//! client of the API.
//! Views are built from a node's local copy of [`crate::meta::MetaState`]; requests turn into
//! [`crate::meta::CommandKind`]s for the leader. Conventions (sizes, times, codes) are in
//! `docs/api.md`.

#[cfg(feature = "client")]
pub mod client;
mod cluster;
mod pg_status;
mod problem;
mod scrub;
#[cfg(test)]
mod tests;
mod volumes;

pub use cluster::{
    ClusterInitRequest, ClusterStatus, DriveView, Health, NodeAddressesView, NodeCounts, NodeList,
    NodeStatus, NodeView, PgCounts, PgList, PgMemberView, PgStatus, PgView, RaftRole, RaftView,
    RecoveryView,
};
pub use pg_status::{
    ClusterReports, MemberRecovery, NodePgReport, PG_LIST_LIMIT_MAX, PgEngineState, PgListQuery,
    PgReport, classify_pg, pg_state_of,
};
pub use problem::{PROBLEM_CONTENT_TYPE, Problem, ProblemType};
pub use scrub::{ScrubFigures, ScrubPassView, ScrubStartResponse, ScrubStatus};
pub use volumes::{
    ExportView, NbdEndpointView, VolumeCreateRequest, VolumeList, VolumeResizeRequest,
    VolumeStatus, VolumeView,
};

/// Name of the header that makes a creating call idempotent.
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";

/// Last millisecond RFC 3339 can write (9999-12-31T23:59:59.999Z).
const RFC3339_UNIX_MS_MAX: u64 = 253_402_300_799_999;

/// A Unix time in ms as RFC 3339 UTC with milliseconds (`2026-01-02T03:04:05.678Z`). Pure: it
/// formats a given instant, it does not read the clock. Times past year 9999 (a peer's broken
/// clock) are shown as the last representable instant rather than failing.
pub fn unix_ms_to_rfc3339(unix_ms: u64) -> String {
    let clamped = unix_ms.min(RFC3339_UNIX_MS_MAX);
    let instant = std::time::UNIX_EPOCH + std::time::Duration::from_millis(clamped);
    humantime::format_rfc3339_millis(instant).to_string()
}
