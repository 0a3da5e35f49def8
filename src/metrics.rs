//! Every Prometheus metric the gateway exports, in one registry served on the admin listener.
//!
//! Names follow Prometheus conventions: the `portcullis_` prefix, base units (seconds, bytes),
//! `_total` on counters. Labels take only bounded values: route, upstream, policy and issuer
//! names from the configuration, status codes, method names (unknown methods become `OTHER`) and
//! the reason enums of [`crate::error::GatewayError`] and
//! [`crate::pipeline::auth::AuthFailure`]; never paths, addresses, user agents or key ids a
//! client made up. Per-request metrics are recorded once, in the `logging` phase.
//!
//! The registry is process-wide: a configuration reload keeps the counts.

use http::Method;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;

/// Latency buckets in seconds: 0.5 ms (a locally answered request) to 30 s (a slow upstream).
const LATENCY_BUCKETS: [f64; 15] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    /// `portcullis_requests_total{route,method,status}`.
    pub requests: IntCounterVec,
    /// `portcullis_request_duration_seconds{route}`.
    pub request_duration: HistogramVec,
    /// `portcullis_requests_in_flight`.
    pub requests_in_flight: IntGauge,
    /// `portcullis_upstream_duration_seconds{upstream}`.
    pub upstream_duration: HistogramVec,
    /// `portcullis_upstream_errors_total{upstream,kind}`.
    pub upstream_errors: IntCounterVec,
    /// `portcullis_upstream_healthy_targets{upstream}`.
    pub upstream_healthy_targets: IntGaugeVec,
    /// `portcullis_upstream_health_checks_total{upstream,result}`.
    pub upstream_health_checks: IntCounterVec,
    /// `portcullis_auth_decisions_total{method,result,reason}`.
    pub auth_decisions: IntCounterVec,
    /// `portcullis_rate_limited_total{policy}`.
    pub rate_limited: IntCounterVec,
    /// `portcullis_cors_rejected_total`.
    pub cors_rejected: IntCounter,
    /// `portcullis_host_rejected_total`.
    pub host_rejected: IntCounter,
    /// `portcullis_jwks_refresh_total{issuer,result}`.
    pub jwks_refresh: IntCounterVec,
    /// `portcullis_config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
    /// `portcullis_build_info{version}`.
    pub build_info: IntGaugeVec,
    /// `portcullis_connections_active{listener}`.
    pub connections_active: IntGaugeVec,
    /// `portcullis_connections_total{listener}`.
    pub connections: IntCounterVec,
    /// `portcullis_connections_rejected_total{reason}`.
    pub connections_rejected: IntCounterVec,
    /// `portcullis_log_lines_dropped_total{log,reason}`.
    pub log_lines_dropped: IntCounterVec,
}

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

#[allow(clippy::expect_used)] // constant names and labels: valid by construction, covered by tests
fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    registry.register(Box::new(c.clone())).expect("registered once");
    c
}

#[allow(clippy::expect_used)]
fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
    registry.register(Box::new(g.clone())).expect("registered once");
    g
}

#[allow(clippy::expect_used)]
fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    let h = HistogramVec::new(opts, labels).expect("valid histogram");
    registry.register(Box::new(h.clone())).expect("registered once");
    h
}

#[allow(clippy::expect_used)]
fn scalar_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid counter");
    registry.register(Box::new(c.clone())).expect("registered once");
    c
}

#[allow(clippy::expect_used)]
fn scalar_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid gauge");
    registry.register(Box::new(g.clone())).expect("registered once");
    g
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        {
            // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
            let _ = r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        }
        let m = Metrics {
            requests: counter(
                &r,
                "portcullis_requests_total",
                "Requests answered, by route (empty before a route matched), method and status code.",
                &["route", "method", "status"],
            ),
            request_duration: histogram(
                &r,
                "portcullis_request_duration_seconds",
                "Time from the request's arrival to the end of its response, by route.",
                &["route"],
            ),
            requests_in_flight: scalar_gauge(&r, "portcullis_requests_in_flight", "Requests being served now."),
            upstream_duration: histogram(
                &r,
                "portcullis_upstream_duration_seconds",
                "Time from the first connection attempt to the upstream's response header, by upstream.",
                &["upstream"],
            ),
            upstream_errors: counter(
                &r,
                "portcullis_upstream_errors_total",
                "Failed upstream connection attempts and exchanges, by upstream and kind.",
                &["upstream", "kind"],
            ),
            upstream_healthy_targets: gauge(
                &r,
                "portcullis_upstream_healthy_targets",
                "Targets of an upstream that pass its health check (all of them when it has none).",
                &["upstream"],
            ),
            upstream_health_checks: counter(
                &r,
                "portcullis_upstream_health_checks_total",
                "Health check probes, by upstream and result (success or failure).",
                &["upstream", "result"],
            ),
            auth_decisions: counter(
                &r,
                "portcullis_auth_decisions_total",
                "Authentication and authorization outcomes, by credential method, result and reason.",
                &["method", "result", "reason"],
            ),
            rate_limited: counter(
                &r,
                "portcullis_rate_limited_total",
                "Requests refused with 429, by the policy that refused them.",
                &["policy"],
            ),
            cors_rejected: scalar_counter(
                &r,
                "portcullis_cors_rejected_total",
                "CORS preflights refused with 403 CORS_REJECTED.",
            ),
            host_rejected: scalar_counter(
                &r,
                "portcullis_host_rejected_total",
                "Requests refused because their host is not in server.allowed_hosts.",
            ),
            jwks_refresh: counter(
                &r,
                "portcullis_jwks_refresh_total",
                "JWKS fetches, by issuer and result (updated, unchanged or failure).",
                &["issuer", "result"],
            ),
            config_reloads: counter(
                &r,
                "portcullis_config_reloads_total",
                "Configuration reloads, by result (success or failure).",
                &["result"],
            ),
            build_info: gauge(
                &r,
                "portcullis_build_info",
                "Always 1; the version label says which build is running.",
                &["version"],
            ),
            connections_active: gauge(
                &r,
                "portcullis_connections_active",
                "Client connections open now, by listener address.",
                &["listener"],
            ),
            connections: counter(
                &r,
                "portcullis_connections_total",
                "Client connections accepted (after the TLS handshake on TLS listeners), by listener address.",
                &["listener"],
            ),
            connections_rejected: counter(
                &r,
                "portcullis_connections_rejected_total",
                "Client connections closed by the gateway before a request was served, by reason: \
                 max_connections, max_connections_per_client (at accept), header_timeout (408), \
                 header_too_large (431), bad_client_hello (not a TLS ClientHello).",
                &["reason"],
            ),
            log_lines_dropped: counter(
                &r,
                "portcullis_log_lines_dropped_total",
                "Log lines dropped, by log and reason: access and audit lines (queue_full or write_error), \
                 error lines any client can cause past one a second (rate_limited).",
                &["log", "reason"],
            ),
            registry: r,
        };
        m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for result in ["success", "failure"] {
            m.config_reloads.with_label_values(&[result]).inc_by(0);
        }
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding gathered families into a Vec cannot fail; an empty scrape is the fallback.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// Records one answered request.
    pub fn record_request(&self, route: &str, method: &Method, status: u16, seconds: f64) {
        self.requests.with_label_values(&[route, method_label(method), status_label(status)]).inc();
        self.request_duration.with_label_values(&[route]).observe(seconds);
    }
}

/// The method as a bounded label: the standard methods by name, anything else `OTHER`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// "100" to "599", rendered once.
static STATUS_LABELS: LazyLock<Vec<String>> = LazyLock::new(|| (100..600u16).map(|c| c.to_string()).collect());

/// The status code as a label, without formatting on the request path.
fn status_label(status: u16) -> &'static str {
    STATUS_LABELS.get(usize::from(status).wrapping_sub(100)).map_or("other", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_has_the_documented_names() {
        METRICS.record_request("r", &Method::from_bytes(b"BREW").unwrap(), 418, 0.002);
        METRICS.rate_limited.with_label_values(&["per-client"]).inc();
        let text = String::from_utf8(METRICS.render()).unwrap();
        assert!(text.contains(r#"portcullis_requests_total{method="OTHER",route="r",status="418"} 1"#), "{text}");
        assert!(text.contains(r#"portcullis_request_duration_seconds_bucket{route="r",le="0.0025"} 1"#));
        assert!(text.contains(r#"portcullis_build_info{version=""#));
        assert!(text.contains(r#"portcullis_config_reloads_total{result="failure"} 0"#));
        assert!(text.contains("# TYPE portcullis_cors_rejected_total counter"));
    }
}
