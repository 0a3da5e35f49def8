//! The admin listener: `GET /metrics`, `/healthz` and `/readyz`, for operators and their
//! orchestrators only.
//!
//! It is a separate Pingora service on its own address (`[admin] address`, loopback by
//! default), never one of the public listeners: validation refuses an address a public listener
//! uses. It serves nothing else: no config, no keys, no target addresses.
//!
//! - `/healthz`: 200 while the process serves requests (liveness).
//! - `/readyz`: 200 when the configuration is loaded and every upstream has at least one
//!   healthy target; 503 with the reason otherwise (readiness: take the instance out of the
//!   load balancer). Upstreams without a `health_check` count all their targets healthy. From
//!   `SIGTERM` on, 503 `draining` (see [`crate::shutdown`]).
//! - `/metrics`: the Prometheus text exposition of [`crate::metrics`].

use async_trait::async_trait;
use http::{header, Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Serialize;

use crate::gateway::SharedRuntime;
use crate::metrics::METRICS;

/// The admin endpoints, over the live runtime configuration.
pub struct AdminApp {
    runtime: SharedRuntime,
}

impl AdminApp {
    /// Serves readiness from whatever `runtime` points at.
    pub fn new(runtime: SharedRuntime) -> Self {
        AdminApp { runtime }
    }
}

#[derive(Serialize)]
struct UpstreamReadiness<'a> {
    name: &'a str,
    healthy_targets: usize,
    targets: usize,
    health_check: bool,
}

#[derive(Serialize)]
struct Readiness<'a> {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    upstreams: Vec<UpstreamReadiness<'a>>,
}

fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::CACHE_CONTROL, "no-store");
    if status == StatusCode::METHOD_NOT_ALLOWED {
        builder = builder.header(header::ALLOW, "GET, HEAD");
    }
    // Every part is a valid constant or a number: building cannot fail.
    builder.body(body).unwrap_or_default()
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Vec<u8>> {
    let body = serde_json::json!({"error": {"code": code, "message": message, "details": null, "request_id": ""}});
    respond(status, "application/json", body.to_string().into_bytes())
}

impl AdminApp {
    fn readiness(&self) -> Response<Vec<u8>> {
        let runtime = self.runtime.load();
        let upstreams: Vec<UpstreamReadiness<'_>> = runtime
            .upstreams
            .iter()
            .map(|u| UpstreamReadiness {
                name: &u.name,
                healthy_targets: u.healthy_targets(),
                targets: u.target_count(),
                health_check: u.health_check.is_some(),
            })
            .collect();
        let down: Vec<&str> = upstreams.iter().filter(|u| u.healthy_targets == 0).map(|u| u.name).collect();
        let (status, readiness) = if crate::shutdown::is_draining() {
            let reason = Some("stopping: the gateway received SIGTERM".to_string());
            (StatusCode::SERVICE_UNAVAILABLE, Readiness { status: "draining", reason, upstreams })
        } else if down.is_empty() {
            (StatusCode::OK, Readiness { status: "ready", reason: None, upstreams })
        } else {
            let reason = format!("no healthy target in upstream(s): {}", down.join(", "));
            (StatusCode::SERVICE_UNAVAILABLE, Readiness { status: "not_ready", reason: Some(reason), upstreams })
        };
        respond(status, "application/json", serde_json::to_vec(&readiness).unwrap_or_default())
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let has_body = req.headers.contains_key(header::TRANSFER_ENCODING)
            || req.headers.get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
        let head = req.method == Method::HEAD;
        let response = if req.method != Method::GET && !head {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", "the admin endpoints answer GET")
        } else {
            match req.uri.path() {
                "/metrics" => respond(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", METRICS.render()),
                "/healthz" => respond(StatusCode::OK, "application/json", br#"{"status":"ok"}"#.to_vec()),
                "/readyz" => self.readiness(),
                _ => json_error(
                    StatusCode::NOT_FOUND,
                    "ROUTE_NOT_FOUND",
                    "the admin listener serves /metrics, /healthz and /readyz",
                ),
            }
        };
        if has_body {
            // The body was not read: the connection cannot carry another request.
            session.set_keepalive(None);
        }
        if head {
            let (parts, _) = response.into_parts();
            return Response::from_parts(parts, Vec::new());
        }
        response
    }
}
