//! The gateway: the volume client every frontend uses (DESIGN §2, §4).
//!
//! A frontend calls a [`GatewayVolume`] through [`crate::frontends::VolumeBackend`]. Each
//! request is cut at chunk boundaries and then at [`GatewayConfig::piece_size_bytes_max`]
//! (at most the wire's `IO_SIZE_BYTES_MAX`); each piece is routed to its PG's primary in the
//! current [`ClusterView`] and sent over the peer transport ([`crate::peer::Peers`]) tagged
//! with the map's epoch. Pieces run concurrently; the request completes when every piece has,
//! and fails with the first piece that fails.
//!
//! Retries (the table in `retry.rs`): a `STALE_EPOCH` reply waits for the map with the
//! responder's epoch and re-routes; `NOT_PRIMARY`, `BUSY`, `TIMEOUT`, an unroutable map and
//! connection failures back off (doubling from [`GatewayConfig::retry_delay_min`], cut short
//! when a newer map arrives) and re-route. Everything the gateway sends is idempotent (a block
//! write of the same bytes, a trim, a zeroing, a read), so a request whose outcome is unknown
//! is simply sent again. A request whose PG the map shows with fewer than `min_size` acting
//! members fails with `VolumeError::Io` naming the last error once
//! [`GatewayConfig::request_timeout`] has passed both since it started and since the PG was
//! seen below `min_size`. While the map gives the PG at least `min_size`
//! members the PG is only between primaries (failover, peering, a lease wait), so the request
//! keeps retrying up to [`GatewayConfig::failover_timeout`]: the client sees a pause, not an
//! error. A mutation that failed may still have been applied, as on a disk.
//!
//! Memory and load are bounded per gateway by two semaphores, on pieces in flight and on data
//! bytes in flight (write payloads and read replies), held from admission until the piece
//! completes (retries included); one request keeps at most
//! [`GatewayConfig::pieces_per_request_max`] pieces running.
//!
//! Layout: `view.rs` (map source boundary), `plan.rs` (pure splitting and routing),
//! `retry.rs` (pure retry decisions), `volume.rs` (the async shell).

mod plan;
mod retry;
mod view;
mod volume;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use basalt::ids::VolumeId;
use basalt::placement::PoolId;
use basalt::units::SECTOR_SIZE_BYTES;
use basalt::wire::IO_SIZE_BYTES_MAX;
use tokio::sync::Semaphore;

pub use view::{ClusterView, MapPublisher, MapWatch, map_channel};
pub use volume::{Gateway, GatewayVolume};

/// Tunables of one [`Gateway`]. [`GatewayConfig::default`] suits a production node; tests
/// shorten the timeouts and shrink the bounds.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Longest a request may take, retries and waits for the map included, while its PG has
    /// fewer than `min_size` acting members; then it fails with an I/O error.
    pub request_timeout: Duration,
    /// Longest a request may take while the map gives its PG at least `min_size` acting
    /// members (a failover in progress): at least `request_timeout`. Clients with their own
    /// shorter timeout (the kernel's NBD `timeout`) give up first and re-send.
    pub failover_timeout: Duration,
    /// Longest one attempt (connect and call) may take, within what is left of the request.
    pub attempt_timeout: Duration,
    /// First back-off after a retryable failure.
    pub retry_delay_min: Duration,
    /// Largest back-off (doubling from the minimum).
    pub retry_delay_max: Duration,
    /// Largest data range of one READ or WRITE piece: a multiple of 512 in
    /// `512 ..= IO_SIZE_BYTES_MAX`. TRIM and WRITE_ZEROES pieces are cut at chunks only.
    pub piece_size_bytes_max: u32,
    /// Pieces in flight across every volume of the gateway.
    pub pieces_in_flight_max: usize,
    /// Data bytes in flight (write payloads, read replies) across every volume of the
    /// gateway; at least `piece_size_bytes_max`, so every piece can be admitted.
    pub bytes_in_flight_max: usize,
    /// Pieces one request runs at once (a 64-bit trim may span many thousand chunks).
    pub pieces_per_request_max: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            request_timeout: Duration::from_secs(30),
            failover_timeout: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(10),
            retry_delay_min: Duration::from_millis(5),
            retry_delay_max: Duration::from_secs(1),
            piece_size_bytes_max: IO_SIZE_BYTES_MAX,
            pieces_in_flight_max: 1024,
            bytes_in_flight_max: 256 << 20,
            pieces_per_request_max: 32,
        }
    }
}

impl GatewayConfig {
    /// Checks the fields; a bad value is a configuration bug, refused before any I/O.
    pub fn validate(&self) -> Result<(), GatewayError> {
        let bad = |field: &'static str| Err(GatewayError::Config { field });
        if self.request_timeout.is_zero() {
            return bad("request_timeout");
        }
        if self.failover_timeout < self.request_timeout {
            return bad("failover_timeout");
        }
        if self.attempt_timeout.is_zero() {
            return bad("attempt_timeout");
        }
        if self.retry_delay_min.is_zero() || self.retry_delay_min > self.retry_delay_max {
            return bad("retry_delay_min");
        }
        let piece = self.piece_size_bytes_max;
        if piece == 0 || piece > IO_SIZE_BYTES_MAX || !piece.is_multiple_of(SECTOR_SIZE_BYTES) {
            return bad("piece_size_bytes_max");
        }
        if !(1..=Semaphore::MAX_PERMITS).contains(&self.pieces_in_flight_max) {
            return bad("pieces_in_flight_max");
        }
        if !(piece as usize..=Semaphore::MAX_PERMITS).contains(&self.bytes_in_flight_max) {
            return bad("bytes_in_flight_max");
        }
        if self.pieces_per_request_max == 0 {
            return bad("pieces_per_request_max");
        }
        Ok(())
    }
}

/// Errors setting up a gateway (request errors are [`crate::frontends::VolumeError`]s).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// A [`GatewayConfig`] field is out of range.
    #[error("invalid gateway configuration: {field}")]
    Config {
        /// The field.
        field: &'static str,
    },
    /// A [`VolumeSpec`] the gateway cannot serve.
    #[error("invalid volume {volume}: {why}")]
    Volume {
        /// The volume.
        volume: VolumeId,
        /// What is wrong.
        why: &'static str,
    },
}

/// What the gateway needs to know about one volume (from the metadata service's volume
/// table; the map itself does not list volumes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeSpec {
    /// The volume's id: with the chunk index, it selects the PG.
    pub id: VolumeId,
    /// The pool its chunks are placed in.
    pub pool: PoolId,
    /// Size in bytes, a non-zero multiple of 512.
    pub size_bytes: u64,
    /// Refuse writes, trims and zeroing.
    pub read_only: bool,
}

/// Counters of one gateway, for metrics and tests.
#[derive(Debug, Default)]
pub struct GatewayStats {
    requests: AtomicU64,
    pieces: AtomicU64,
    retries_stale_epoch: AtomicU64,
    retries_backoff: AtomicU64,
    failures: AtomicU64,
}

/// A copy of [`GatewayStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayStatsSnapshot {
    /// Volume requests started.
    pub requests: u64,
    /// Pieces admitted.
    pub pieces: u64,
    /// Resends after a `STALE_EPOCH` reply (each waited for a newer map).
    pub retries_stale_epoch: u64,
    /// Resends after a back-off (not primary, busy, timeout, no route, connection failure).
    pub retries_backoff: u64,
    /// Pieces that failed (each fails its request).
    pub failures: u64,
}

impl GatewayStats {
    /// The counters now.
    pub fn snapshot(&self) -> GatewayStatsSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        GatewayStatsSnapshot {
            requests: load(&self.requests),
            pieces: load(&self.pieces),
            retries_stale_epoch: load(&self.retries_stale_epoch),
            retries_backoff: load(&self.retries_backoff),
            failures: load(&self.failures),
        }
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the defaults pass and each out-of-range field is refused by name.
    #[test]
    fn config_is_checked() {
        GatewayConfig::default()
            .validate()
            .expect("defaults are valid");
        type Edit = fn(&mut GatewayConfig);
        let cases: [(&str, Edit); 7] = [
            ("request_timeout", |c| c.request_timeout = Duration::ZERO),
            ("retry_delay_min", |c| {
                c.retry_delay_min = c.retry_delay_max * 2
            }),
            ("piece_size_bytes_max", |c| c.piece_size_bytes_max = 1000),
            ("piece_size_bytes_max", |c| {
                c.piece_size_bytes_max = IO_SIZE_BYTES_MAX + 512
            }),
            ("pieces_in_flight_max", |c| c.pieces_in_flight_max = 0),
            ("bytes_in_flight_max", |c| c.bytes_in_flight_max = 4096),
            ("pieces_per_request_max", |c| c.pieces_per_request_max = 0),
        ];
        for (field, edit) in cases {
            let mut config = GatewayConfig::default();
            edit(&mut config);
            match config.validate() {
                Err(GatewayError::Config { field: found }) => assert_eq!(found, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
