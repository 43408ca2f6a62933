//! The scrub of one node (`GET /v1/scrub`, `POST /v1/scrub`): the background pass that
//! verifies every block of the PGs the node leads against its checksum and the other copies,
//! and what it and read repair found and fixed.

use serde::{Deserialize, Serialize};

/// Figures of one scrub pass (or totals over several).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScrubFigures {
    /// Chunks compared.
    pub chunks: u64,
    /// Allocated blocks read and verified on this node.
    pub blocks: u64,
    /// Bad block copies found (corrupt or differing from the good copy), on any member.
    pub errors: u64,
    /// Block copies rewritten with the good content.
    pub repairs: u64,
    /// Bad block copies left as they were (no good copy, or the chunk kept changing).
    pub unrepaired: u64,
    /// Chunks not fully compared (a member unreachable or at another label).
    pub skipped_chunks: u64,
}

/// The last completed pass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScrubPassView {
    /// When it finished (RFC 3339).
    pub finished: String,
    /// When it finished (Unix ms).
    pub finished_unix_ms: u64,
    /// What it found and did.
    pub figures: ScrubFigures,
}

/// One node's scrub.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScrubStatus {
    /// The node answering.
    pub node: u64,
    /// A pass is running.
    pub running: bool,
    /// Passes completed since the node started.
    pub passes: u64,
    /// Chunks the running pass has done.
    pub chunks_done: u64,
    /// Chunks the running pass covers (0 between passes).
    pub chunks_total: u64,
    /// The running pass so far (the last pass's figures between passes).
    pub current: ScrubFigures,
    /// Totals since the node started.
    pub total: ScrubFigures,
    /// The last completed pass, if any since the node started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pass: Option<ScrubPassView>,
    /// Blocks rewritten because a client read met them corrupt (read repair).
    pub read_repairs: u64,
    /// Client reads answered from another member because the local copy was corrupt.
    pub reads_repaired: u64,
}

/// The answer to `POST /v1/scrub`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScrubStartResponse {
    /// A new pass was started (false: one was already running).
    pub started: bool,
    /// The scrub's state.
    pub status: ScrubStatus,
}
