//! Per-volume I/O metrics and [`Metered`], the [`VolumeBackend`] wrapper that counts them.
//!
//! Every frontend reaches volumes through `VolumeBackend`, so wrapping the backend counts
//! NBD (and later vhost-user-blk) requests in one place without touching the gateway. The
//! label handles are resolved once, when the volume is opened; a request then only does
//! relaxed atomic adds on its volume's own counters.

use std::time::Instant;

use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::histogram::LatencyHistogram;
use crate::frontends::{VolumeBackend, VolumeError, VolumeExtent, ZeroFlags};

/// Labels of per-volume series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeLabels {
    /// The volume (export) name.
    pub volume: String,
}

/// Labels of per-volume, per-operation series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeOpLabels {
    /// The volume (export) name.
    pub volume: String,
    /// `read`, `write`, `trim`, `zero` or `flush`.
    pub op: &'static str,
}

/// Labels of per-volume error counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeErrorLabels {
    /// The volume (export) name.
    pub volume: String,
    /// The [`VolumeError`] variant, in snake case.
    pub kind: &'static str,
}

/// A volume operation, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeOp {
    /// `read`.
    Read,
    /// `write`.
    Write,
    /// `trim`.
    Trim,
    /// `write_zeroes`.
    Zero,
    /// `flush`.
    Flush,
}

impl VolumeOp {
    /// Every operation, in label-handle order.
    pub const ALL: [VolumeOp; 5] = [Self::Read, Self::Write, Self::Trim, Self::Zero, Self::Flush];

    /// The `op` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Trim => "trim",
            Self::Zero => "zero",
            Self::Flush => "flush",
        }
    }
}

/// Every error kind, in label-handle order.
const ERROR_KINDS: [&str; 6] = [
    "io",
    "invalid",
    "no_space",
    "slow_zero",
    "read_only",
    "shutting_down",
];

fn error_index(error: &VolumeError) -> usize {
    match error {
        VolumeError::Io(_) => 0,
        VolumeError::Invalid(_) => 1,
        VolumeError::NoSpace => 2,
        VolumeError::SlowZero => 3,
        VolumeError::ReadOnly => 4,
        VolumeError::ShuttingDown => 5,
    }
}

/// The per-volume families. Cloning shares them.
#[derive(Clone, Debug, Default)]
pub struct VolumeMetrics {
    ops: Family<VolumeOpLabels, Counter>,
    bytes: Family<VolumeOpLabels, Counter>,
    latency: Family<VolumeOpLabels, LatencyHistogram>,
    in_flight: Family<VolumeLabels, Gauge>,
    errors: Family<VolumeErrorLabels, Counter>,
}

impl VolumeMetrics {
    /// Adds the families to `registry` (prefix `basalt_` comes from the registry).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "volume_ops",
            "Volume requests completed (successfully or not), by operation",
            self.ops.clone(),
        );
        registry.register(
            "volume_bytes",
            "Bytes read, written, trimmed or zeroed by successful volume requests",
            self.bytes.clone(),
        );
        registry.register(
            "volume_latency_seconds",
            "Volume request latency as the frontend sees it, by operation",
            self.latency.clone(),
        );
        registry.register(
            "volume_in_flight_requests",
            "Volume requests started and not yet completed",
            self.in_flight.clone(),
        );
        registry.register(
            "volume_errors",
            "Failed volume requests, by error kind",
            self.errors.clone(),
        );
    }

    /// Resolves (creating them at zero) every series of `volume`.
    pub fn handles(&self, volume: &str) -> VolumeHandles {
        let op = |op: VolumeOp| VolumeOpLabels {
            volume: volume.to_owned(),
            op: op.label(),
        };
        VolumeHandles {
            ops: VolumeOp::ALL.map(|o| self.ops.get_or_create_owned(&op(o))),
            bytes: VolumeOp::ALL.map(|o| self.bytes.get_or_create_owned(&op(o))),
            latency: VolumeOp::ALL.map(|o| self.latency.get_or_create_owned(&op(o))),
            in_flight: self.in_flight.get_or_create_owned(&VolumeLabels {
                volume: volume.to_owned(),
            }),
            errors: ERROR_KINDS.map(|kind| {
                self.errors.get_or_create_owned(&VolumeErrorLabels {
                    volume: volume.to_owned(),
                    kind,
                })
            }),
        }
    }
}

/// One volume's pre-resolved series: counting touches only these atomics.
#[derive(Clone, Debug)]
pub struct VolumeHandles {
    ops: [Counter; 5],
    bytes: [Counter; 5],
    latency: [LatencyHistogram; 5],
    in_flight: Gauge,
    errors: [Counter; 6],
}

/// Decrements the in-flight gauge when the request ends, also if its future is dropped.
struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl VolumeHandles {
    fn start(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    fn finish<T>(
        &self,
        op: VolumeOp,
        bytes: u64,
        started: Instant,
        result: &Result<T, VolumeError>,
    ) {
        let index = op as usize;
        self.ops[index].inc();
        self.latency[index].observe(started.elapsed());
        match result {
            Ok(_) => {
                if bytes > 0 {
                    self.bytes[index].inc_by(bytes);
                }
            }
            Err(error) => {
                self.errors[error_index(error)].inc();
            }
        }
    }
}

/// A volume backend that counts what passes through it. Without handles (metrics disabled)
/// it only forwards.
#[derive(Debug)]
pub struct Metered<V> {
    inner: V,
    handles: Option<VolumeHandles>,
}

impl<V> Metered<V> {
    /// Wraps `inner`, counting into `handles` if given.
    pub fn new(inner: V, handles: Option<VolumeHandles>) -> Self {
        Self { inner, handles }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &V {
        &self.inner
    }
}

impl<V: VolumeBackend> Metered<V> {
    async fn count<T>(
        &self,
        op: VolumeOp,
        bytes: u64,
        request: impl Future<Output = Result<T, VolumeError>>,
    ) -> Result<T, VolumeError> {
        let Some(handles) = &self.handles else {
            return request.await;
        };
        let _in_flight = handles.start();
        let started = Instant::now();
        let result = request.await;
        handles.finish(op, bytes, started, &result);
        result
    }
}

impl<V: VolumeBackend> VolumeBackend for Metered<V> {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    fn read_only(&self) -> bool {
        self.inner.read_only()
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, VolumeError> {
        let request = self.inner.read(offset, len);
        self.count(VolumeOp::Read, u64::from(len), request).await
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), VolumeError> {
        let len = data.len() as u64;
        let request = self.inner.write(offset, data, fua);
        self.count(VolumeOp::Write, len, request).await
    }

    async fn trim(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        let request = self.inner.trim(offset, len);
        self.count(VolumeOp::Trim, len, request).await
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: ZeroFlags,
    ) -> Result<(), VolumeError> {
        let request = self.inner.write_zeroes(offset, len, flags);
        self.count(VolumeOp::Zero, len, request).await
    }

    async fn flush(&self) -> Result<(), VolumeError> {
        let request = self.inner.flush();
        self.count(VolumeOp::Flush, 0, request).await
    }

    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<VolumeExtent>, VolumeError> {
        self.inner.block_status(offset, len).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::encode_for_test;

    /// A backend that succeeds at reads and fails writes with `NoSpace`.
    struct Fake;

    impl VolumeBackend for Fake {
        fn size_bytes(&self) -> u64 {
            1 << 20
        }
        async fn read(&self, _offset: u64, len: u32) -> Result<Bytes, VolumeError> {
            Ok(Bytes::from(vec![0; len as usize]))
        }
        async fn write(&self, _: u64, _: Bytes, _: bool) -> Result<(), VolumeError> {
            Err(VolumeError::NoSpace)
        }
        async fn trim(&self, _: u64, _: u64) -> Result<(), VolumeError> {
            Ok(())
        }
        async fn write_zeroes(&self, _: u64, _: u64, _: ZeroFlags) -> Result<(), VolumeError> {
            Ok(())
        }
        async fn flush(&self) -> Result<(), VolumeError> {
            Ok(())
        }
        async fn block_status(&self, _: u64, len: u64) -> Result<Vec<VolumeExtent>, VolumeError> {
            Ok(vec![VolumeExtent {
                len,
                hole: true,
                zero: true,
            }])
        }
    }

    /// Goal: a read counts one op, its bytes and one latency sample; a failed write counts an
    /// op and its error kind but no bytes; nothing stays in flight.
    #[tokio::test]
    async fn counts_ops_bytes_latency_and_errors() {
        let metrics = VolumeMetrics::default();
        let volume = Metered::new(Fake, Some(metrics.handles("vol-a")));
        volume.read(0, 4096).await.unwrap();
        assert!(matches!(
            volume.write(0, Bytes::from_static(&[0; 512]), false).await,
            Err(VolumeError::NoSpace)
        ));
        let text = encode_for_test(|registry| metrics.register(registry));
        for line in [
            r#"basalt_volume_ops_total{volume="vol-a",op="read"} 1"#,
            r#"basalt_volume_ops_total{volume="vol-a",op="write"} 1"#,
            r#"basalt_volume_bytes_total{volume="vol-a",op="read"} 4096"#,
            r#"basalt_volume_bytes_total{volume="vol-a",op="write"} 0"#,
            r#"basalt_volume_errors_total{volume="vol-a",kind="no_space"} 1"#,
            r#"basalt_volume_errors_total{volume="vol-a",kind="io"} 0"#,
            r#"basalt_volume_latency_seconds_count{volume="vol-a",op="read"} 1"#,
            r#"basalt_volume_in_flight_requests{volume="vol-a"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }

    /// Goal: without handles the wrapper only forwards and creates no series.
    #[tokio::test]
    async fn disabled_wrapper_only_forwards() {
        let metrics = VolumeMetrics::default();
        let volume = Metered::new(Fake, None);
        assert_eq!(volume.read(0, 512).await.unwrap().len(), 512);
        let text = encode_for_test(|registry| metrics.register(registry));
        assert!(!text.contains("volume=\""), "{text}");
    }
}
