//! NBD frontend metrics: live connections per export, handshake failures by reason, protocol
//! errors per export. Updated once per connection, never per request.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of per-export series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExportLabels {
    /// The export (volume) name.
    pub export: String,
}

/// Labels of handshake failures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// Why the handshake failed.
    pub reason: &'static str,
}

/// Why a connection ended before transmission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client broke the handshake protocol.
    Protocol,
    /// The client did not finish the handshake in time.
    Timeout,
    /// The export the client chose was removed during the handshake.
    ExportGone,
}

impl HandshakeFailure {
    const ALL: [HandshakeFailure; 3] = [Self::Protocol, Self::Timeout, Self::ExportGone];

    fn label(self) -> &'static str {
        match self {
            Self::Protocol => "protocol",
            Self::Timeout => "timeout",
            Self::ExportGone => "export_gone",
        }
    }
}

/// The NBD families. Cloning shares them.
#[derive(Clone, Debug, Default)]
pub struct NbdMetrics {
    connections: Family<ExportLabels, Gauge>,
    handshake_failures: Family<HandshakeLabels, Counter>,
    protocol_errors: Family<ExportLabels, Counter>,
}

impl NbdMetrics {
    /// The families, with every handshake-failure reason at zero.
    pub fn new() -> Self {
        let metrics = Self::default();
        for reason in HandshakeFailure::ALL {
            let _ = metrics
                .handshake_failures
                .get_or_create_owned(&HandshakeLabels {
                    reason: reason.label(),
                });
        }
        metrics
    }

    /// Adds the families to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "nbd_connections",
            "NBD connections in transmission, by export",
            self.connections.clone(),
        );
        registry.register(
            "nbd_handshake_failures",
            "NBD connections that ended before transmission started, by reason",
            self.handshake_failures.clone(),
        );
        registry.register(
            "nbd_protocol_errors",
            "NBD connections closed because the client broke the protocol, by export",
            self.protocol_errors.clone(),
        );
    }

    /// A connection entered transmission on `export`: counted until the guard drops.
    pub fn connection(&self, export: &str) -> NbdConnection {
        let labels = ExportLabels {
            export: export.to_owned(),
        };
        let gauge = self.connections.get_or_create_owned(&labels);
        gauge.inc();
        NbdConnection {
            gauge,
            protocol_errors: self.protocol_errors.get_or_create_owned(&labels),
        }
    }

    /// A connection ended during its handshake.
    pub fn handshake_failed(&self, why: HandshakeFailure) {
        self.handshake_failures
            .get_or_create(&HandshakeLabels {
                reason: why.label(),
            })
            .inc();
    }
}

/// One connection in transmission; dropping it stops counting it.
#[derive(Debug)]
pub struct NbdConnection {
    gauge: Gauge,
    protocol_errors: Counter,
}

impl NbdConnection {
    /// The client broke the protocol during transmission.
    pub fn protocol_error(&self) {
        self.protocol_errors.inc();
    }
}

impl Drop for NbdConnection {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::encode_for_test;

    /// Goal: the gauge follows live connections, errors count per export, and every
    /// handshake-failure reason has a series from the start.
    #[test]
    fn connections_and_failures() {
        let metrics = NbdMetrics::new();
        let a = metrics.connection("a");
        let b = metrics.connection("a");
        a.protocol_error();
        drop(a);
        metrics.handshake_failed(HandshakeFailure::Timeout);
        let text = encode_for_test(|registry| metrics.register(registry));
        for line in [
            r#"basalt_nbd_connections{export="a"} 1"#,
            r#"basalt_nbd_protocol_errors_total{export="a"} 1"#,
            r#"basalt_nbd_handshake_failures_total{reason="timeout"} 1"#,
            r#"basalt_nbd_handshake_failures_total{reason="protocol"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        drop(b);
    }
}
