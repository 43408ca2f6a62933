//! A lock-free latency histogram.
//!
//! `prometheus_client`'s own histogram takes a mutex per observation; a volume's latency
//! histogram is updated by every request of every connection, so here each bucket, the count
//! and the sum are plain atomics and an observation is three relaxed adds. Encoding reads the
//! buckets one by one: a scrape racing an observation may see it in a bucket and not yet in
//! the sum, which Prometheus tolerates (the count is derived from the buckets, so `_count`
//! always equals the `+Inf` bucket).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds (seconds) of the latency buckets: 50 µs to 5 s, roughly 1-2.5-5 per decade.
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// The same bounds in nanoseconds, for integer comparisons on the hot path.
const LATENCY_BUCKETS_NANOS: [u64; 16] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
];

/// Buckets including `+Inf`.
const SLOTS: usize = LATENCY_BUCKETS_NANOS.len() + 1;

#[derive(Debug, Default)]
struct Inner {
    buckets: [AtomicU64; SLOTS],
    sum_nanos: AtomicU64,
}

/// A latency histogram with the fixed buckets [`LATENCY_BUCKETS_SECONDS`]. Cloning shares
/// the counts (a pre-resolved handle).
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram {
    inner: Arc<Inner>,
}

impl LatencyHistogram {
    /// Records one duration.
    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let slot = LATENCY_BUCKETS_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(SLOTS - 1);
        self.inner.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }

    /// Sum of the observations, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// `(upper bound in seconds, observations in that bucket alone)`, `+Inf` last.
    fn buckets(&self) -> Vec<(f64, u64)> {
        LATENCY_BUCKETS_SECONDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.inner.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect()
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets = self.buckets();
        let count = buckets.iter().map(|(_, n)| n).sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum_seconds(), count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the nanosecond bounds match the advertised second bounds, in increasing order.
    #[test]
    fn bounds_agree_and_increase() {
        for (seconds, nanos) in LATENCY_BUCKETS_SECONDS.iter().zip(LATENCY_BUCKETS_NANOS) {
            assert_eq!((seconds * 1e9).round() as u64, nanos);
        }
        assert!(LATENCY_BUCKETS_NANOS.windows(2).all(|w| w[0] < w[1]));
    }

    /// Goal: an observation lands in the first bucket whose bound it does not exceed, with
    /// the overflow bucket for anything past 5 s; count and sum follow.
    #[test]
    fn observations_land_in_their_buckets() {
        let histogram = LatencyHistogram::default();
        histogram.observe(Duration::from_micros(50));
        histogram.observe(Duration::from_micros(51));
        histogram.observe(Duration::from_secs(60));
        let buckets = histogram.buckets();
        assert_eq!(buckets[0], (0.000_05, 1));
        assert_eq!(buckets[1], (0.000_1, 1));
        assert_eq!(buckets[SLOTS - 1], (f64::INFINITY, 1));
        assert_eq!(histogram.count(), 3);
        assert!((histogram.sum_seconds() - 60.000_101).abs() < 1e-9);
    }
}
