//! The Pingora `ProxyHttp` implementation: each phase calls its stages in order.
//!
//! This is the only module that touches Pingora's `Session`; the stages in [`crate::pipeline`]
//! work on request headers and the [`RequestCtx`].
//!
//! | Pingora phase             | stages                                                        |
//! |---------------------------|---------------------------------------------------------------|
//! | `new_ctx`                 | read the runtime config once                                  |
//! | `request_filter`          | request id → client address → host (400/421) → path (400) → route (404/405) → CORS preflight (204/403) → body length (413) → failed-auth and address limits (429) → credentials (401) → identity limits (429) → permissions (403); `builtin:echo` answers here |
//! | `request_body_filter`     | streamed body limit (413)                                     |
//! | `upstream_peer`           | round-robin target                                            |
//! | `fail_to_connect`         | next target on connect failure                                |
//! | `upstream_request_filter` | header hygiene, forwarding and identity headers, canonical path |
//! | `response_filter`         | request id, CORS and rate-limit headers on the response       |
//! | `fail_to_proxy`           | 502 / 504 / 413 as JSON                                       |
//! | `logging`                 | metrics, access log line, audit events                        |

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};

use crate::config::Runtime;
use crate::ctx::{CorsState, Exchange, RequestCtx};
use crate::error::{CorsRejection, GatewayError};
use crate::logs::access::AccessRecord;
use crate::logs::{audit, Logs};
use crate::metrics::METRICS;
use crate::pipeline::admit::{self, Routing};
use crate::pipeline::auth::AcceptedCredentials;
use crate::pipeline::cors::{self, CorsPolicy};
use crate::pipeline::ratelimit::Caller;
use crate::pipeline::route::AuthMode;
use crate::pipeline::upstream::Targets;
use crate::pipeline::{body, echo, forward, request_id};
use crate::tls::ClientCertificate;

/// What the request-header stages decided, when they did not refuse.
enum Admission {
    /// Proxy the request (or answer it with `builtin:echo`).
    Forward,
    /// A CORS preflight, answered with this response.
    Preflight(Box<ResponseHeader>),
    /// A plain request on a `redirect_https` listener: 308 to this URL.
    Redirect(HeaderValue),
}

/// The shared, swappable runtime configuration: each request reads it once.
pub type SharedRuntime = Arc<ArcSwap<Runtime>>;

/// The gateway, as served on one group of listeners.
pub struct Gateway {
    runtime: SharedRuntime,
    edge: Arc<ListenerEdge>,
    logs: Arc<Logs>,
}

/// What the listeners a service serves ask of their responses: fixed at start, like them.
#[derive(Debug, Default, Clone)]
pub struct ListenerEdge {
    /// Plain listeners with `redirect_https`: the https port to send clients to.
    pub redirect_to: Option<u16>,
    /// TLS listeners with `hsts`: the `Strict-Transport-Security` value.
    pub hsts: Option<HeaderValue>,
}

impl Gateway {
    /// A gateway serving whatever `runtime` points at, on listeners that ask for `edge`,
    /// writing its access and audit lines to `logs`.
    pub fn new(runtime: SharedRuntime, edge: ListenerEdge, logs: Arc<Logs>) -> Self {
        Gateway { runtime, edge: Arc::new(edge), logs }
    }

    /// The request-header stages: forward, answer a preflight, or `Err`, the refusal to
    /// answer with.
    async fn admit(&self, session: &Session, ctx: &mut RequestCtx) -> Result<Admission, GatewayError> {
        let rt = &*ctx.runtime;
        let req = session.req_header();
        ctx.request_id = request_id::request_id(&req.headers, &rt.request_id_header);
        ctx.peer =
            session.client_addr().and_then(|a| a.as_inet()).map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        ctx.client_ip = rt.trusted_proxies.client_ip(ctx.peer, &req.headers);
        let preflight = rt.cors.as_ref().and_then(|_| CorsPolicy::preflight_method(req));
        ctx.cors = match (&rt.cors, &preflight) {
            (None, _) => CorsState::Off,
            (Some(_), Some(_)) => CorsState::Preflight,
            (Some(cors), None) => CorsState::Actual(cors.allow_origin(req)),
        };

        let tls = session.digest().and_then(|d| d.ssl_digest.as_ref());
        // Before anything can refuse: every response over TLS carries HSTS, errors included.
        if tls.is_some() {
            ctx.hsts = self.edge.hsts.clone();
        }
        let host = rt.hosts.check(req)?;
        ctx.host = host.authority;
        if let (Some(port), None) = (self.edge.redirect_to, tls) {
            return Ok(Admission::Redirect(https_location(host.name.as_str(), port, req)?));
        }
        let certificate = tls.and_then(|t| t.extension.get::<Arc<ClientCertificate>>()).cloned();

        let routed = admit::route(&rt.routes, rt.cors.as_ref(), host.name.as_str(), req)?;
        let route_id = match routed.routing {
            Routing::Preflight { route, asked } => {
                ctx.route = Some(route);
                let cors = rt.cors.as_ref().ok_or(GatewayError::Internal)?;
                let asked = asked.ok_or(GatewayError::CorsRejected(CorsRejection::Method))?;
                return Ok(Admission::Preflight(Box::new(cors.answer_preflight(req, &asked)?)));
            }
            Routing::Request { route } => route,
        };
        ctx.route = Some(route_id);
        let route = rt.routes.get(route_id);
        if !route.cors {
            ctx.cors = CorsState::Off;
        }
        if let Cow::Owned(p) = routed.canonical {
            ctx.canonical_path = Some(p);
        }

        body::check_declared_length(&req.headers, rt.max_body_size)?;

        // Address-keyed limits, and the failed-authentication limit, cut floods before any
        // signature is checked.
        ctx.now = unix_now();
        let guessing = route.auth != AuthMode::None && rt.auth.presents_credential(&req.headers);
        if guessing {
            rt.limits.check_auth_failures(ctx.client_ip, ctx.now, &mut ctx.quota)?;
        }
        let mut caller = Caller { client: ctx.client_ip, headers: &req.headers, identity: None };
        rt.limits.check(&route.limits_before_auth, &caller, ctx.now, &mut ctx.quota)?;
        let authenticated = rt.auth.authenticate(route.auth, &req.headers, certificate.as_ref()).await;
        // Verification may have waited for a JWKS refresh: windows and headers use the time now.
        ctx.now = unix_now();
        ctx.principal = match authenticated {
            Ok(principal) => AcceptedCredentials::ambient(route.credentials.as_ref(), route.auth, principal),
            Err(refusal) => {
                if let GatewayError::AuthenticationFailed(failure) = &refusal {
                    if guessing && failure.is_guess() {
                        rt.limits.record_auth_failure(ctx.client_ip, ctx.now);
                    }
                }
                return Err(refusal);
            }
        };
        // The address-keyed policies keep this request even if these refuse it: they count
        // every request that reaches them, as they do one that fails authentication.
        if !route.limits_after_auth.is_empty() {
            caller.identity = ctx.principal.as_ref().map(|p| rt.auth.limit_identity(p));
            rt.limits.check(&route.limits_after_auth, &caller, ctx.now, &mut ctx.quota)?;
        }
        rt.auth.authorize(ctx.principal.as_ref(), route.credentials.as_ref(), &route.permissions)?;
        Ok(Admission::Forward)
    }

    /// Sets what every response carries: the request id, the CORS headers of an actual
    /// request (or the `Vary` of a preflight), the rate-limit headers of a limited route.
    ///
    /// The headers are edited in the `http` map, as the forward stage does with the request's
    /// (see [`forward::prepare_upstream_request`] for why).
    fn decorate(resp: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
        let rt = &*ctx.runtime;
        // An upstream's own reason phrase is kept (allocated only when it is not the standard one).
        let reason = resp.get_reason_phrase().filter(|r| Some(*r) != resp.status.canonical_reason()).map(str::to_owned);
        let empty = ResponseHeader::from(http::Response::new(()).into_parts().0);
        let mut parts = http::response::Parts::from(std::mem::replace(resp, empty));
        let headers = &mut parts.headers;
        headers.reserve(10);
        headers.insert(rt.request_id_header.clone(), ctx.request_id.clone());
        if let Some(hsts) = &ctx.hsts {
            headers.insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        match (&ctx.cors, &rt.cors) {
            (CorsState::Actual(origin), Some(cors)) => cors.decorate(headers, origin.as_ref()),
            (CorsState::Preflight, _) => cors::add_vary(headers, cors::preflight_vary()),
            _ => {}
        }
        let policy_header = ctx.route.and_then(|id| rt.routes.get(id).ratelimit_policy.as_ref());
        if ctx.quota.is_some() || policy_header.is_some() {
            // `t=` counts from now: a slow upstream's response says how long is left after it.
            rt.limits.decorate(headers, ctx.quota.as_ref(), policy_header, unix_now());
        }
        *resp = ResponseHeader::from(parts);
        if reason.is_some() {
            resp.set_reason_phrase(reason.as_deref())?;
        }
        Ok(())
    }

    /// 308 to the https URL: the method and body are to be sent again there, not dropped.
    async fn redirect(session: &mut Session, ctx: &RequestCtx, location: HeaderValue) -> Result<()> {
        let mut resp = ResponseHeader::build_no_case(http::StatusCode::PERMANENT_REDIRECT, Some(4))?;
        resp.insert_header(http::header::LOCATION, location)?;
        resp.insert_header(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"))?;
        resp.insert_header(ctx.runtime.request_id_header.clone(), ctx.request_id.clone())?;
        if !session.as_downstream_mut().is_body_done() {
            session.set_keepalive(None);
        }
        session.write_response_header(Box::new(resp), true).await
    }

    /// Writes a response the gateway made, with its body, except to a HEAD request: there the
    /// headers (`Content-Length` included) end the stream. HTTP/2 treats DATA frames after a
    /// HEAD as a protocol error.
    async fn write_answer(session: &mut Session, resp: ResponseHeader, body: bytes::Bytes) -> Result<()> {
        let head = session.req_header().method == Method::HEAD;
        session.write_response_header(Box::new(resp), head).await?;
        if head {
            return Ok(());
        }
        session.write_response_body(Some(body), true).await
    }

    /// Answers a preflight that `[cors]` allows: 204, no body.
    async fn answer_preflight(session: &mut Session, ctx: &RequestCtx, mut resp: Box<ResponseHeader>) -> Result<()> {
        Self::decorate(&mut resp, ctx)?;
        if !session.as_downstream_mut().is_body_done() {
            session.set_keepalive(None);
        }
        session.write_response_header(resp, true).await
    }

    /// Answers with `error` as JSON, and records it as this request's outcome.
    async fn refuse(session: &mut Session, ctx: &mut RequestCtx, error: GatewayError) -> Result<()> {
        let (mut resp, body) = error.to_response(&ctx.runtime.request_id_header, &ctx.request_id)?;
        Self::decorate(&mut resp, ctx)?;
        // An unread request body would have to be drained before the connection can be reused:
        // close instead of reading what was refused.
        if !session.as_downstream_mut().is_body_done() {
            session.set_keepalive(None);
        }
        ctx.refusal = Some(error);
        Self::write_answer(session, resp, body).await
    }

    /// `builtin:echo`: reads the body (within the limit) and answers with the request as the
    /// upstream would receive it.
    async fn echo(session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let max = ctx.runtime.max_body_size;
        while let Some(chunk) = session.read_request_body().await? {
            if let Err(e) = body::count_chunk(&mut ctx.body_bytes, chunk.len(), max) {
                return Self::refuse(session, ctx, e).await;
            }
        }
        let mut upstream_request = session.req_header().clone();
        if let Err(e) = Self::prepare_upstream(session, ctx, &mut upstream_request) {
            return Self::refuse(session, ctx, e).await;
        }
        let body = echo::describe(&upstream_request, ctx.body_bytes);
        let mut resp = crate::error::json_response(
            http::StatusCode::OK,
            body.len(),
            &ctx.runtime.request_id_header,
            &ctx.request_id,
        )?;
        Self::decorate(&mut resp, ctx)?;
        Self::write_answer(session, resp, body).await
    }

    fn prepare_upstream(
        session: &Session,
        ctx: &RequestCtx,
        upstream_request: &mut RequestHeader,
    ) -> Result<(), GatewayError> {
        let is_tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let fwd = forward::Forwarding {
            peer: ctx.peer,
            scheme: if is_tls { "https" } else { "http" },
            host: &ctx.host,
            canonical_path: ctx.canonical_path.as_deref(),
            request_id: (&ctx.runtime.request_id_header, &ctx.request_id),
            identity: ctx.principal.as_ref().map(|p| ctx.runtime.auth.identity(p)),
            strip_credentials: (!ctx.runtime.auth.forward_credentials).then_some(&ctx.runtime.auth.api_key_headers[..]),
        };
        forward::prepare_upstream_request(upstream_request, &ctx.runtime.trusted_proxies, &fwd)
    }

    fn upstream_of(ctx: &RequestCtx) -> Option<&crate::pipeline::upstream::Upstream> {
        let route = ctx.runtime.routes.get(ctx.route?);
        ctx.runtime.upstreams.get(route.upstream)
    }
}

/// `https://host[:port]/path?query` for a request on a `redirect_https` listener.
fn https_location(host: &str, port: u16, req: &RequestHeader) -> Result<HeaderValue, GatewayError> {
    // Origin-form targets only: `OPTIONS *` and the like go to the root.
    let target = req.uri.path_and_query().map(|p| p.as_str()).filter(|t| t.starts_with('/')).unwrap_or("/");
    let location = match port {
        443 => format!("https://{host}{target}"),
        port => format!("https://{host}:{port}{target}"),
    };
    HeaderValue::from_str(&location).map_err(|_| GatewayError::BadRequest("malformed request target"))
}

/// Seconds since the epoch: the clock rate-limit windows are aligned to.
fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The `kind` label of `portcullis_upstream_errors_total`.
pub fn upstream_error_kind(e: &Error) -> &'static str {
    match e.etype() {
        ErrorType::ConnectTimedout => "connect_timeout",
        ErrorType::ConnectRefused => "connect_refused",
        ErrorType::ConnectNoRoute | ErrorType::ConnectError | ErrorType::BindError | ErrorType::SocketError => {
            "connect_error"
        }
        ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError
        | ErrorType::TLSWantX509Lookup => "tls",
        ErrorType::ReadTimedout => "read_timeout",
        ErrorType::WriteTimedout => "write_timeout",
        ErrorType::ConnectionClosed => "connection_closed",
        ErrorType::InvalidHTTPHeader | ErrorType::H1Error | ErrorType::H2Error | ErrorType::InvalidH2 => {
            "protocol_error"
        }
        ErrorType::ReadError => "read_error",
        ErrorType::WriteError => "write_error",
        _ => "other",
    }
}

/// Maps a Pingora error to the refusal the client sees; `None` when the client is gone.
fn classify(e: &Error) -> Option<GatewayError> {
    match (e.esource(), e.etype()) {
        (ErrorSource::Upstream, ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout) => {
            Some(GatewayError::UpstreamTimeout)
        }
        (ErrorSource::Upstream, _) => Some(GatewayError::UpstreamUnavailable),
        (ErrorSource::Downstream, ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed) => None,
        (ErrorSource::Downstream, ErrorType::ReadTimedout | ErrorType::WriteTimedout) => None,
        (ErrorSource::Downstream, _) => Some(GatewayError::BadRequest("malformed request")),
        _ => Some(GatewayError::Internal),
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.runtime.load_full())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        match self.admit(session, ctx).await {
            Ok(Admission::Forward) => {}
            Ok(Admission::Redirect(location)) => {
                Self::redirect(session, ctx, location).await?;
                return Ok(true);
            }
            Ok(Admission::Preflight(resp)) => {
                Self::answer_preflight(session, ctx, resp).await?;
                return Ok(true);
            }
            Err(refusal) => {
                Self::refuse(session, ctx, refusal).await?;
                return Ok(true);
            }
        }
        if let Some(upstream) = Self::upstream_of(ctx) {
            if matches!(upstream.targets, Targets::Echo) {
                Self::echo(session, ctx).await?;
                return Ok(true);
            }
            ctx.rotation_start = upstream.rotation_start();
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        chunk: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let len = chunk.as_ref().map_or(0, bytes::Bytes::len);
        if let Err(refusal) = body::count_chunk(&mut ctx.body_bytes, len, ctx.runtime.max_body_size) {
            ctx.refusal = Some(refusal);
            return Error::e_explain(ErrorType::HTTPStatus(413), "request body over max_body_size");
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let peer = Self::upstream_of(ctx).and_then(|u| u.peer(ctx.rotation_start, ctx.attempts));
        ctx.attempts += 1;
        let exchange = &mut ctx.upstream;
        exchange.started.get_or_insert_with(std::time::Instant::now);
        exchange.target = peer.as_ref().and_then(|p| p._address.as_inet().copied());
        // A retry replays the buffered body through request_body_filter: count it afresh.
        ctx.body_bytes = 0;
        peer.ok_or_else(|| Error::explain(ErrorType::InternalError, "route has no upstream target"))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(upstream) = Self::upstream_of(ctx) {
            METRICS.upstream_errors.with_label_values(&[&upstream.name, upstream_error_kind(&e)]).inc();
        }
        // Nothing was sent yet: the next target may take the request.
        if Self::upstream_of(ctx).is_some_and(|u| ctx.attempts < u.attempts()) {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        // Every failure after a connection was made, retried or not (connect failures are
        // counted in fail_to_connect).
        if *e.esource() == ErrorSource::Upstream {
            if let Some(upstream) = Self::upstream_of(ctx) {
                METRICS.upstream_errors.with_label_values(&[&upstream.name, upstream_error_kind(&e)]).inc();
            }
        }
        // Pingora's default: an idempotent request whose body is still buffered may be retried
        // on a fresh connection when a reused one failed.
        let mut e = e.more_context(format!("Peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        Self::prepare_upstream(session, ctx, upstream_request)
            .map_err(|_| Error::explain(ErrorType::InternalError, "cannot prepare the upstream request"))
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream.status = Some(upstream_response.status.as_u16());
        ctx.upstream.elapsed = ctx.upstream.started.map(|t| t.elapsed());
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        Self::decorate(resp, ctx)
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        let exchange = Exchange {
            ctx,
            request: session.req_header(),
            // Nothing was sent: the client left first (nginx's 499).
            status: session.response_written().map_or(499, |r| r.status.as_u16()),
            bytes_sent: session.body_bytes_sent(),
            elapsed: ctx.started.elapsed(),
            tls: session.digest().is_some_and(|d| d.ssl_digest.is_some()),
            protocol: if session.is_http2() { "HTTP/2" } else { "HTTP/1.1" },
            error,
        };
        METRICS.record_exchange(&exchange);
        if let Some(access) = &self.logs.access {
            access.write(&AccessRecord::new(&exchange));
        }
        if let Some(sink) = &self.logs.audit {
            audit::record(&exchange, sink);
        }
    }

    /// What Pingora's own error log lines say about a request: no query values, no headers but
    /// the host, redacted.
    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        let req = session.req_header();
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        format!(
            "{} {}, host: {}, request id: {}",
            crate::metrics::method_label(&req.method),
            crate::redact::redact_target(target),
            crate::redact::redact_value(&String::from_utf8_lossy(ctx.host.as_bytes())),
            crate::redact::redact(ctx.request_id.to_str().unwrap_or(""))
        )
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        let refusal = match (ctx.refusal.clone(), classify(e)) {
            (Some(ours), _) => Some(ours),
            (None, theirs) => theirs,
        };
        let Some(refusal) = refusal else {
            return FailToProxy { error_code: 0, can_reuse_downstream: false };
        };
        let status = refusal.status().as_u16();
        if session.response_written().is_none() {
            // The request may be half-read (a body cut off at the limit): never reuse.
            session.set_keepalive(None);
            let response = refusal.to_response(&ctx.runtime.request_id_header, &ctx.request_id);
            ctx.refusal = Some(refusal);
            let written = async {
                let (mut resp, body) = response?;
                Self::decorate(&mut resp, ctx)?;
                Self::write_answer(session, resp, body).await
            };
            if let Err(write_error) = written.await {
                tracing::debug!(error = %write_error, "could not send the error response");
            }
        }
        FailToProxy { error_code: status, can_reuse_downstream: false }
    }
}
