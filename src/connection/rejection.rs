//! Why a connection was closed before a request was served, as counted and answered.

use crate::metrics::METRICS;

/// Why a connection was closed before a request was served: the `reason` label of
/// `portcullis_connections_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Over `server.max_connections`.
    MaxConnections,
    /// Over `server.max_connections_per_client`.
    MaxConnectionsPerClient,
    /// A request head slower than `server.header_timeout` (408).
    HeaderTimeout,
    /// A request head over `server.max_header_size` (431).
    HeaderTooLarge,
    /// On a TLS listener, bytes that are not a TLS ClientHello, or one over 16 KiB.
    BadClientHello,
}

impl Rejection {
    /// Every reason, for the metric's zero values.
    pub const ALL: [Rejection; 5] = [
        Rejection::MaxConnections,
        Rejection::MaxConnectionsPerClient,
        Rejection::HeaderTimeout,
        Rejection::HeaderTooLarge,
        Rejection::BadClientHello,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::MaxConnections => "max_connections",
            Rejection::MaxConnectionsPerClient => "max_connections_per_client",
            Rejection::HeaderTimeout => "header_timeout",
            Rejection::HeaderTooLarge => "header_too_large",
            Rejection::BadClientHello => "bad_client_hello",
        }
    }

    pub(super) fn count(self) {
        METRICS.connections_rejected.with_label_values(&[self.label()]).inc();
    }
}
