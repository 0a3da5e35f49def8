//! The access log: one JSON line per request.
//!
//! ```json
//! {"log":"access","time":"2026-11-25T12:00:00.123Z","request_id":"…","client_ip":"192.0.2.7",
//!  "method":"GET","host":"api.example.com","path":"/api/v1/models?token=[REDACTED]",
//!  "protocol":"HTTP/1.1","tls":true,"route":"models-read","status":200,"bytes":512,
//!  "request_bytes":0,"duration_ms":1.234,"upstream":"registry","upstream_addr":"10.0.0.5:8000",
//!  "upstream_status":200,"upstream_ms":0.9,"auth_method":"api_key","key_id":"ci-bot",
//!  "subject":"service:ci"}
//! ```
//!
//! Refused requests add `error` (the JSON error code) and `reason` (its label; for a 401 the
//! authentication failure). No header value is logged but the host; the path and query are
//! redacted (see [`crate::redact`]).

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use super::exchange::Exchange;
use crate::error::GatewayError;
use crate::redact::{cut_at, redact, redact_target, redact_value};

/// The longest method logged: extension methods can be as long as a request head.
const MAX_LOGGED_METHOD: usize = 32;

/// One access log line.
#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    log: &'static str,
    time: String,
    request_id: Cow<'a, str>,
    client_ip: Option<IpAddr>,
    method: &'a str,
    host: String,
    path: String,
    protocol: &'static str,
    tls: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    route: &'a str,
    status: u16,
    bytes: usize,
    request_bytes: u64,
    duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_addr: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_method: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    issuer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

/// Milliseconds with microsecond precision.
fn millis(d: std::time::Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

impl<'a> AccessRecord<'a> {
    /// The line for a finished request.
    pub fn new(x: &'a Exchange<'a>) -> Self {
        let ctx = x.ctx;
        let target = x.request.uri.path_and_query().map_or("/", |p| p.as_str());
        let summary = x.principal().map(|p| ctx.runtime.auth.summary(p));
        let host = redact_value(&String::from_utf8_lossy(x.requested_host()));
        AccessRecord {
            log: "access",
            time: super::sink::timestamp(),
            request_id: redact(x.request_id()),
            client_ip: x.admission().map(|a| a.client_ip),
            method: cut_at(x.request.method.as_str(), MAX_LOGGED_METHOD),
            host,
            path: redact_target(target),
            protocol: x.protocol,
            tls: x.tls,
            route: x.route_name(),
            status: x.status,
            bytes: x.bytes_sent,
            request_bytes: ctx.body_bytes,
            duration_ms: millis(x.elapsed),
            upstream: x.upstream_name().filter(|_| ctx.upstream.started.is_some()),
            upstream_addr: ctx.upstream.target,
            upstream_status: ctx.upstream.status,
            upstream_ms: ctx.upstream.elapsed.map(millis),
            auth_method: summary.as_ref().map(|s| s.method),
            key_id: summary.as_ref().and_then(|s| s.key_id),
            subject: summary.as_ref().map(|s| redact_value(&String::from_utf8_lossy(s.subject))),
            issuer: summary.as_ref().and_then(|s| s.issuer),
            error: x.refusal().map(GatewayError::code),
            reason: x.refusal().map(|r| match r {
                GatewayError::AuthenticationFailed(failure) => failure.label(),
                other => other.metric_label(),
            }),
        }
    }
}
