//! Prometheus metrics (DESIGN §8): one registry per node, served at `/metrics` on the API
//! listener in the OpenMetrics text format.
//!
//! Two kinds of series:
//! - **Counted on the data path** — per-volume requests ([`volume`]), device I/O per drive
//!   ([`drive::MeteredEngine`]), NBD connections ([`frontend`]), API requests ([`api`]),
//!   replica write latency (`peer::PeerStats`). Label handles are resolved when a volume,
//!   drive or connection opens, so the hot path does relaxed atomic adds and takes no lock.
//! - **Read at scrape time** from state that already exists — store counters, the Raft
//!   status, the replicated metadata state (node states, heartbeats, map epoch, PG health)
//!   — by collectors ([`drive::DriveMetrics`], [`cluster::ClusterCollector`]).
//!
//! Every name starts with `basalt_`, uses base units (seconds, bytes) and counters end in
//! `_total`. Label values are bounded by the cluster's size (volumes, nodes, drives, pools,
//! exports, API routes): nothing per request, chunk or offset. The catalogue is in
//! `docs/operations.md` ("Monitoring").

pub mod api;
pub mod cluster;
pub mod drive;
pub mod frontend;
pub mod histogram;
pub mod replication;
pub mod volume;

use std::sync::Arc;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use basalt::ids::NodeId;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

pub use histogram::{LATENCY_BUCKETS_SECONDS, LatencyHistogram};

/// Content type of the exposition (what Prometheus negotiates for OpenMetrics).
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Prefix of every metric name.
pub const PREFIX: &str = "basalt";

/// The node's metric families that the data path updates. Built before the drives open
/// (their engines measure into it); the [`Exporter`] adds the scrape-time collectors.
#[derive(Debug)]
pub struct Metrics {
    /// Per-volume request counters (through [`volume::Metered`]).
    pub volumes: volume::VolumeMetrics,
    /// Per-drive device I/O and store counters.
    pub drives: Arc<drive::DriveMetrics>,
    /// NBD frontend counters.
    pub nbd: frontend::NbdMetrics,
    /// HTTP API request counters.
    pub api: api::ApiMetrics,
}

impl Metrics {
    /// Empty families for node `node`.
    pub fn new(node: NodeId) -> Self {
        Self {
            volumes: volume::VolumeMetrics::default(),
            drives: Arc::new(drive::DriveMetrics::new(node)),
            nbd: frontend::NbdMetrics::new(),
            api: api::ApiMetrics::default(),
        }
    }
}

/// The registry and what a scrape must refresh first; serves `/metrics`.
#[derive(Debug)]
pub struct Exporter {
    registry: Registry,
    drives: Arc<drive::DriveMetrics>,
}

impl Exporter {
    /// The registry of `metrics` plus `collectors` (scrape-time sources).
    pub fn new(
        metrics: &Metrics,
        collectors: Vec<Box<dyn prometheus_client::collector::Collector>>,
    ) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        metrics.volumes.register(&mut registry);
        metrics.nbd.register(&mut registry);
        metrics.api.register(&mut registry);
        registry.register_collector(Box::new(Arc::clone(&metrics.drives)));
        for collector in collectors {
            registry.register_collector(collector);
        }
        Self {
            registry,
            drives: Arc::clone(&metrics.drives),
        }
    }

    /// Refreshes the drives' counters, then encodes every family.
    pub async fn render(&self) -> Result<String, std::fmt::Error> {
        self.drives.refresh().await;
        let mut text = String::with_capacity(64 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// A router serving `GET /metrics` (merged into the API router, which adds auth).
    pub fn router(self: Arc<Self>) -> Router {
        Router::new().route(
            crate::api::METRICS_PATH,
            get(move || {
                let exporter = Arc::clone(&self);
                async move { exporter.respond().await }
            }),
        )
    }

    async fn respond(&self) -> Response {
        match self.render().await {
            Ok(text) => ([(CONTENT_TYPE, CONTENT_TYPE_OPENMETRICS)], text).into_response(),
            Err(_) => {
                tracing::error!("encoding metrics failed");
                axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }
}

/// Encodes one gauge family from `(labels, value)` pairs. Nothing is written when `series`
/// is empty (a family without series would only be noise).
pub(crate) fn encode_gauges<L: EncodeLabelSet, V: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: Vec<(L, V)>,
) -> Result<(), std::fmt::Error> {
    if series.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Encodes one gauge without labels.
pub(crate) fn encode_gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: V,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

/// Encodes one counter without labels (`name` without `_total`).
pub(crate) fn encode_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

/// Encodes one counter family (`name` without `_total`; the encoder appends it).
pub(crate) fn encode_counters<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: Vec<(L, u64)>,
) -> Result<(), std::fmt::Error> {
    if series.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Encodes one histogram family.
pub(crate) fn encode_histograms<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: Vec<(L, LatencyHistogram)>,
) -> Result<(), std::fmt::Error> {
    if series.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, histogram) in series {
        histogram.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Encodes what `register` adds to a fresh `basalt`-prefixed registry (unit tests).
#[cfg(test)]
pub(crate) fn encode_for_test(register: impl FnOnce(&mut Registry)) -> String {
    let mut registry = Registry::with_prefix(PREFIX);
    register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    text
}
