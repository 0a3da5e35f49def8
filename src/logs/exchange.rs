//! A finished request as the `logging` phase sees it, and what it records of it: the request
//! metrics (the access and audit lines are [`super::access`] and [`super::audit`]).

use std::time::Duration;

use pingora::http::RequestHeader;

use crate::ctx::RequestCtx;
use crate::error::GatewayError;
use crate::metrics::METRICS;
use crate::pipeline::admit::Admission;
use crate::pipeline::auth::Principal;

/// A finished request, as the `logging` phase sees it: what metrics and logs record.
pub struct Exchange<'a> {
    /// Its context.
    pub ctx: &'a RequestCtx,
    /// The request as the client sent it.
    pub request: &'a RequestHeader,
    /// The status sent; 499 when the client left before any response.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes_sent: usize,
    /// Time since the headers were read.
    pub elapsed: Duration,
    /// Whether the request came over TLS.
    pub tls: bool,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// The error that ended the request, if one did.
    pub error: Option<&'a pingora::Error>,
}

impl Exchange<'_> {
    /// The matched route's name; empty before a route matched.
    pub fn route_name(&self) -> &str {
        self.ctx.route().map_or("", |r| &r.name)
    }

    /// What admission learned, if it ran.
    pub fn admission(&self) -> Option<&Admission> {
        self.ctx.admission.as_ref()
    }

    /// The verified caller.
    pub fn principal(&self) -> Option<&Principal> {
        self.admission()?.principal.as_ref()
    }

    /// The refusal the gateway answered with.
    pub fn refusal(&self) -> Option<&GatewayError> {
        self.ctx.response.refusal.as_ref()
    }

    /// The request id ("" when admission never ran; redact before logging).
    pub fn request_id(&self) -> &str {
        self.admission().and_then(|a| a.request_id.to_str().ok()).unwrap_or("")
    }

    /// The host the client asked for: the validated authority, or for a request refused
    /// before that, the raw `:authority` or `Host` (redact before logging).
    pub fn requested_host(&self) -> &[u8] {
        if let Some(host) = self.admission().and_then(|a| a.host.as_ref()) {
            return host.as_bytes();
        }
        match self.request.uri.authority() {
            Some(authority) => authority.as_str().as_bytes(),
            None => self.request.headers.get(http::header::HOST).map_or(&b""[..], |h| h.as_bytes()),
        }
    }

    /// The matched route's upstream's name, when the request was routed.
    pub fn upstream_name(&self) -> Option<&str> {
        self.ctx.upstream().map(|u| &*u.name)
    }
}

/// Records a finished request: its count and duration, the upstream's time and errors,
/// the authentication decision, and the refusals counted on their own.
pub fn record_metrics(x: &Exchange<'_>) {
    let ctx = x.ctx;
    METRICS.record_request(x.route_name(), &x.request.method, x.status, x.elapsed.as_secs_f64());
    // (Upstream errors are counted where they happen: fail_to_connect, error_while_proxy.)
    if let (Some(upstream), Some(elapsed)) = (x.upstream_name(), ctx.upstream.elapsed) {
        METRICS.upstream_duration.with_label_values(&[upstream]).observe(elapsed.as_secs_f64());
    }
    let auth = &ctx.runtime.auth;
    let decision = match (x.principal(), x.refusal()) {
        (Some(p), Some(GatewayError::PermissionDenied { .. })) => {
            Some((auth.summary(p).method, "denied", "permission"))
        }
        (Some(p), Some(GatewayError::CredentialNotAccepted)) => Some((auth.summary(p).method, "denied", "credential")),
        (Some(p), _) => Some((auth.summary(p).method, "success", "ok")),
        (None, Some(GatewayError::AuthenticationFailed(failure))) => {
            let presented = x.admission().and_then(|a| a.presented.as_ref());
            Some((presented.map_or("unknown", |p| p.method), "failure", failure.label()))
        }
        _ => None,
    };
    if let Some((method, result, reason)) = decision {
        METRICS.auth_decisions.with_label_values(&[method, result, reason]).inc();
    }
    match x.refusal() {
        Some(GatewayError::RateLimited { policy, .. }) => METRICS.rate_limited.with_label_values(&[policy]).inc(),
        Some(GatewayError::CorsRejected(_)) => METRICS.cors_rejected.inc(),
        Some(GatewayError::HostNotAllowed) => METRICS.host_rejected.inc(),
        _ => {}
    }
}

/// What Pingora's own error log lines say about a request: no query values, no headers but
/// the host, redacted.
pub fn summary(req: &RequestHeader, admission: Option<&Admission>) -> String {
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let host = admission.and_then(|a| a.host.as_ref()).map_or(&b""[..], |h| h.as_bytes());
    let request_id = admission.and_then(|a| a.request_id.to_str().ok()).unwrap_or("");
    format!(
        "{} {}, host: {}, request id: {}",
        crate::metrics::method_label(&req.method),
        crate::redact::redact_target(target),
        crate::redact::redact_value(&String::from_utf8_lossy(host)),
        crate::redact::redact(request_id)
    )
}
