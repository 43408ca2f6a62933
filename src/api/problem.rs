//! RFC 9457 problem documents: every API error is one, with a stable `type` code.
//!
//! The `type` member is a short code (`volume-exists`), a relative URI reference as RFC 9457
//! allows; the codes, their HTTP status and their meaning are listed in `docs/api.md` and never
//! change meaning once shipped. Clients branch on `type`, never on `title` or `detail`.

use crate::meta::MetaError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The media type of a problem document.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// A problem's stable code and its HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ProblemType {
    /// 400: the body is not valid JSON for the call, or a parameter is malformed.
    BadRequest,
    /// 400: a volume name does not match `[a-z0-9][a-z0-9._-]{0,62}`.
    InvalidName,
    /// 400: a size is zero, not a multiple of 4 KiB, above 1 PiB, or unparsable.
    InvalidSize,
    /// 400: a replica count outside 1..=5.
    InvalidReplicas,
    /// 400: an `Idempotency-Key` that is empty, too long or not printable ASCII.
    InvalidIdempotencyKey,
    /// 400: another parameter out of range (cluster parameters, node fields, token names).
    InvalidParameter,
    /// 401: no bearer token, or one the cluster does not know.
    Unauthorized,
    /// 403: a read-only token on a call that changes something.
    Forbidden,
    /// 404: no such route.
    NotFound,
    /// 404: no such volume.
    VolumeNotFound,
    /// 404: no such node.
    NodeNotFound,
    /// 404: no such token.
    TokenNotFound,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 409: a volume with this name exists.
    VolumeExists,
    /// 409: a token with this name (or secret) exists.
    TokenExists,
    /// 409: a resize to a smaller size.
    ShrinkNotAllowed,
    /// 409: more replicas than the cluster has nodes with drives.
    TooManyReplicas,
    /// 409: the change would leave a pool with fewer nodes than its replica count.
    NotEnoughNodes,
    /// 409: a drive is registered to another node.
    DriveInUse,
    /// 409: the node cannot be removed yet (not out, or a PG still lists it).
    NodeInUse,
    /// 409: the node was removed from the cluster; its id is retired.
    NodeRemoved,
    /// 409: the cluster is initialized already (with another id).
    AlreadyInitialized,
    /// 409: the cluster is not initialized yet (`basalt cluster init`).
    NotInitialized,
    /// 409: a cluster-wide limit (volumes, tokens) is reached.
    LimitReached,
    /// 413: the request body is too large.
    PayloadTooLarge,
    /// 415: the request body is not `application/json`.
    UnsupportedMediaType,
    /// 422: the `Idempotency-Key` was used before with a different request.
    IdempotencyConflict,
    /// 500: a bug; the detail says what failed.
    Internal,
    /// 503: this node cannot reach the Raft leader to forward a write; retry.
    NotLeader,
    /// 503: the metadata service has no quorum; retry later.
    NoQuorum,
}

impl ProblemType {
    /// Every problem type (for documentation and tests).
    pub const ALL: [ProblemType; 30] = [
        ProblemType::BadRequest,
        ProblemType::InvalidName,
        ProblemType::InvalidSize,
        ProblemType::InvalidReplicas,
        ProblemType::InvalidIdempotencyKey,
        ProblemType::InvalidParameter,
        ProblemType::Unauthorized,
        ProblemType::Forbidden,
        ProblemType::NotFound,
        ProblemType::VolumeNotFound,
        ProblemType::NodeNotFound,
        ProblemType::TokenNotFound,
        ProblemType::MethodNotAllowed,
        ProblemType::VolumeExists,
        ProblemType::TokenExists,
        ProblemType::ShrinkNotAllowed,
        ProblemType::TooManyReplicas,
        ProblemType::NotEnoughNodes,
        ProblemType::DriveInUse,
        ProblemType::NodeInUse,
        ProblemType::NodeRemoved,
        ProblemType::AlreadyInitialized,
        ProblemType::NotInitialized,
        ProblemType::LimitReached,
        ProblemType::PayloadTooLarge,
        ProblemType::UnsupportedMediaType,
        ProblemType::IdempotencyConflict,
        ProblemType::Internal,
        ProblemType::NotLeader,
        ProblemType::NoQuorum,
    ];

    /// The HTTP status the problem is answered with.
    pub fn status(self) -> u16 {
        use ProblemType as P;
        match self {
            P::BadRequest
            | P::InvalidName
            | P::InvalidSize
            | P::InvalidReplicas
            | P::InvalidIdempotencyKey
            | P::InvalidParameter => 400,
            P::Unauthorized => 401,
            P::Forbidden => 403,
            P::NotFound | P::VolumeNotFound | P::NodeNotFound | P::TokenNotFound => 404,
            P::MethodNotAllowed => 405,
            P::VolumeExists
            | P::TokenExists
            | P::ShrinkNotAllowed
            | P::TooManyReplicas
            | P::NotEnoughNodes
            | P::DriveInUse
            | P::NodeInUse
            | P::NodeRemoved
            | P::AlreadyInitialized
            | P::NotInitialized
            | P::LimitReached => 409,
            P::PayloadTooLarge => 413,
            P::UnsupportedMediaType => 415,
            P::IdempotencyConflict => 422,
            P::Internal => 500,
            P::NotLeader | P::NoQuorum => 503,
        }
    }

    /// The stable code, as it appears in `type`.
    pub fn code(self) -> &'static str {
        use ProblemType as P;
        match self {
            P::BadRequest => "bad-request",
            P::InvalidName => "invalid-name",
            P::InvalidSize => "invalid-size",
            P::InvalidReplicas => "invalid-replicas",
            P::InvalidIdempotencyKey => "invalid-idempotency-key",
            P::InvalidParameter => "invalid-parameter",
            P::Unauthorized => "unauthorized",
            P::Forbidden => "forbidden",
            P::NotFound => "not-found",
            P::VolumeNotFound => "volume-not-found",
            P::NodeNotFound => "node-not-found",
            P::TokenNotFound => "token-not-found",
            P::MethodNotAllowed => "method-not-allowed",
            P::VolumeExists => "volume-exists",
            P::TokenExists => "token-exists",
            P::ShrinkNotAllowed => "shrink-not-allowed",
            P::TooManyReplicas => "too-many-replicas",
            P::NotEnoughNodes => "not-enough-nodes",
            P::DriveInUse => "drive-in-use",
            P::NodeInUse => "node-in-use",
            P::NodeRemoved => "node-removed",
            P::AlreadyInitialized => "already-initialized",
            P::NotInitialized => "not-initialized",
            P::LimitReached => "limit-reached",
            P::PayloadTooLarge => "payload-too-large",
            P::UnsupportedMediaType => "unsupported-media-type",
            P::IdempotencyConflict => "idempotency-conflict",
            P::Internal => "internal",
            P::NotLeader => "not-leader",
            P::NoQuorum => "no-quorum",
        }
    }

    /// A short, fixed, human summary (RFC 9457 `title`).
    pub fn title(self) -> &'static str {
        use ProblemType as P;
        match self {
            P::BadRequest => "Bad request",
            P::InvalidName => "Invalid name",
            P::InvalidSize => "Invalid size",
            P::InvalidReplicas => "Invalid replica count",
            P::InvalidIdempotencyKey => "Invalid idempotency key",
            P::InvalidParameter => "Invalid parameter",
            P::Unauthorized => "Missing or unknown bearer token",
            P::Forbidden => "Token not allowed to do this",
            P::NotFound => "Not found",
            P::VolumeNotFound => "Volume not found",
            P::NodeNotFound => "Node not found",
            P::TokenNotFound => "Token not found",
            P::MethodNotAllowed => "Method not allowed",
            P::VolumeExists => "Volume exists",
            P::TokenExists => "Token exists",
            P::ShrinkNotAllowed => "Volumes cannot shrink",
            P::TooManyReplicas => "Too many replicas for this cluster",
            P::NotEnoughNodes => "Not enough nodes",
            P::DriveInUse => "Drive registered to another node",
            P::NodeInUse => "Node still in use",
            P::NodeRemoved => "Node removed",
            P::AlreadyInitialized => "Cluster already initialized",
            P::NotInitialized => "Cluster not initialized",
            P::LimitReached => "Limit reached",
            P::PayloadTooLarge => "Payload too large",
            P::UnsupportedMediaType => "Unsupported media type",
            P::IdempotencyConflict => "Idempotency key reused with a different request",
            P::Internal => "Internal error",
            P::NotLeader => "Leader unreachable",
            P::NoQuorum => "No quorum",
        }
    }
}

impl fmt::Display for ProblemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl From<&MetaError> for ProblemType {
    fn from(error: &MetaError) -> Self {
        use ProblemType as P;
        match error {
            MetaError::NotInitialized => P::NotInitialized,
            MetaError::AlreadyInitialized { .. } => P::AlreadyInitialized,
            MetaError::InvalidClusterParams { .. }
            | MetaError::InvalidNode { .. }
            | MetaError::InvalidTokenName { .. } => P::InvalidParameter,
            MetaError::NodeNotFound { .. } => P::NodeNotFound,
            MetaError::NodeRemoved { .. } => P::NodeRemoved,
            MetaError::NodeInUse { .. } => P::NodeInUse,
            MetaError::DriveInUse { .. } => P::DriveInUse,
            MetaError::NotEnoughNodes { .. } => P::NotEnoughNodes,
            MetaError::InvalidName { .. } => P::InvalidName,
            MetaError::InvalidSize { .. } => P::InvalidSize,
            MetaError::InvalidReplicas { .. } => P::InvalidReplicas,
            MetaError::TooManyReplicas { .. } => P::TooManyReplicas,
            MetaError::VolumeExists { .. } => P::VolumeExists,
            MetaError::VolumeNotFound { .. } => P::VolumeNotFound,
            MetaError::ShrinkNotAllowed { .. } => P::ShrinkNotAllowed,
            MetaError::TooManyVolumes { .. } | MetaError::TooManyTokens { .. } => P::LimitReached,
            MetaError::TokenExists { .. } => P::TokenExists,
            MetaError::TokenNotFound { .. } => P::TokenNotFound,
            MetaError::IdempotencyConflict { .. } => P::IdempotencyConflict,
            MetaError::InvalidIdempotencyKey => P::InvalidIdempotencyKey,
            MetaError::CommandTooLarge { .. } => P::PayloadTooLarge,
            // A placement refusal that is not "too few nodes" means a limit or a bug.
            MetaError::Placement(_) => P::Internal,
        }
    }
}

/// An RFC 9457 problem document (`application/problem+json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// Stable code; clients branch on it.
    #[serde(rename = "type")]
    pub problem_type: ProblemType,
    /// Fixed summary of the type.
    pub title: String,
    /// HTTP status, repeated for clients that lose it.
    pub status: u16,
    /// What happened in this occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The request path this occurrence is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

impl Problem {
    /// A problem of `problem_type` with an occurrence-specific `detail`.
    pub fn new(problem_type: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            problem_type,
            title: problem_type.title().to_owned(),
            status: problem_type.status(),
            detail: Some(detail.into()),
            instance: None,
        }
    }

    /// The same problem, about `instance` (the request path).
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }
}

impl From<&MetaError> for Problem {
    fn from(error: &MetaError) -> Self {
        Problem::new(ProblemType::from(error), error.to_string())
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let detail = self.detail.as_deref().unwrap_or(&self.title);
        write!(f, "{} ({}): {detail}", self.problem_type, self.status)
    }
}
