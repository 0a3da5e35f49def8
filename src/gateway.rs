//! The Pingora `ProxyHttp` implementation: each phase reads what its stages need from the
//! `Session`, calls them, and writes what they decided.
//!
//! This is the only module that touches Pingora's `Session`; the decisions are made in
//! [`crate::pipeline`] (admission in [`crate::pipeline::admit`]) over request headers.
//!
//! | Pingora phase             | stages                                                        |
//! |---------------------------|---------------------------------------------------------------|
//! | `new_ctx`                 | read the runtime config once                                  |
//! | `request_filter`          | [`admit::route`]: request id → client address → host (400/421) → path (400) → route (404/405) → CORS preflight (204/403) → body length (413); [`admit::authorize`]: failed-auth and address limits (429) → credentials (401) → identity limits (429) → permissions (403); `builtin:echo` answers here |
//! | `request_body_filter`     | streamed body limit (413)                                     |
//! | `upstream_peer`           | round-robin target                                            |
//! | `fail_to_connect`         | next target on connect failure                                |
//! | `upstream_request_filter` | header hygiene, forwarding and identity headers, canonical path |
//! | `response_filter`         | request id, CORS and rate-limit headers on the response       |
//! | `fail_to_proxy`           | 502 / 504 / 413 as JSON                                       |
//! | `logging`                 | metrics, access log line, audit events                        |

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};

use crate::ctx::RequestCtx;
use crate::error::{classify, upstream_error_kind, GatewayError};
use crate::logs::exchange::{self, Exchange};
use crate::logs::Logs;
use crate::metrics::METRICS;
use crate::pipeline::admit::{self, Admission, Routing};
use crate::pipeline::ratelimit::unix_now;
use crate::pipeline::upstream::Targets;
use crate::pipeline::{body, echo, forward, respond, Runtime};
use crate::tls::ClientCertificate;

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

fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

impl Gateway {
    /// A gateway serving whatever `runtime` points at, on listeners that ask for `edge`,
    /// writing its access and audit lines to `logs`.
    pub fn new(runtime: SharedRuntime, edge: ListenerEdge, logs: Arc<Logs>) -> Self {
        Gateway { runtime, edge: Arc::new(edge), logs }
    }

    /// Runs admission over the session's request: how to go on, or the refusal.
    async fn admit(&self, session: &Session, ctx: &mut RequestCtx) -> Result<Routing, GatewayError> {
        let req = session.req_header();
        let tls = session.digest().and_then(|d| d.ssl_digest.as_ref());
        let peer =
            session.client_addr().and_then(|a| a.as_inet()).map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let RequestCtx { runtime, admission, response, .. } = ctx;
        let rt = &**runtime;
        let admission = admission.insert(Admission::arrive(rt, req, peer));
        let redirect_to = self.edge.redirect_to.filter(|_| tls.is_none());
        let routing = admit::route(rt, req, redirect_to, admission);
        // A redirect is the listener's, not an API response: no CORS on it.
        if !matches!(routing, Ok(Routing::Redirect(_))) {
            response.cors = admit::cors_state(rt, req, Some(admission));
        }
        match routing? {
            Routing::Request => {}
            other => return Ok(other),
        }
        let certificate = tls.and_then(|t| t.extension.get::<Arc<ClientCertificate>>());
        admit::authorize(rt, req, certificate, admission, &mut response.quota, unix_now).await?;
        Ok(Routing::Request)
    }

    /// Sets what every response carries ([`respond::decorate`]). The headers are edited in the
    /// `http` map, as the forward stage does with the request's (see
    /// [`forward::prepare_upstream_request`] for why).
    fn decorate(&self, resp: &mut ResponseHeader, tls: bool, ctx: &RequestCtx) -> Result<()> {
        // An upstream's own reason phrase is kept (allocated only when it is not the standard one).
        let reason = resp.get_reason_phrase().filter(|r| Some(*r) != resp.status.canonical_reason()).map(str::to_owned);
        let empty = ResponseHeader::from(http::Response::new(()).into_parts().0);
        let mut parts = http::response::Parts::from(std::mem::replace(resp, empty));
        let hsts = self.edge.hsts.as_ref().filter(|_| tls);
        respond::decorate(&ctx.runtime, &mut parts.headers, ctx.admission.as_ref(), &ctx.response, hsts, unix_now());
        *resp = ResponseHeader::from(parts);
        if reason.is_some() {
            resp.set_reason_phrase(reason.as_deref())?;
        }
        Ok(())
    }

    /// Writes a response the gateway made: the head (decorated), then its body, except to a
    /// HEAD request, where the head (`Content-Length` included) ends the stream (HTTP/2 treats
    /// DATA frames after a HEAD as a protocol error). `close`: the request's body may be unread,
    /// so the connection is not reused.
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        mut resp: ResponseHeader,
        body: Option<bytes::Bytes>,
        close: bool,
    ) -> Result<()> {
        self.decorate(&mut resp, is_tls(session), ctx)?;
        if close && !session.as_downstream_mut().is_body_done() {
            session.set_keepalive(None);
        }
        let head = session.req_header().method == Method::HEAD;
        let end = head || body.is_none();
        session.write_response_header(Box::new(resp), end).await?;
        match body {
            Some(body) if !head => session.write_response_body(Some(body), true).await,
            _ => Ok(()),
        }
    }

    /// Answers with `error` as JSON, and records it as this request's outcome.
    async fn refuse(&self, session: &mut Session, ctx: &mut RequestCtx, error: GatewayError) -> Result<()> {
        let request_id = respond::request_id(ctx.admission.as_ref());
        let answer = error.to_response(&ctx.runtime.request_id_header, request_id);
        ctx.response.refusal = Some(error);
        let (resp, body) = answer?;
        // An unread request body would have to be drained before the connection can be reused:
        // close instead of reading what was refused.
        self.answer(session, ctx, resp, Some(body), true).await
    }

    /// `builtin:echo`: reads the body (within the limit) and answers with the request as the
    /// upstream would receive it.
    async fn echo(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let max = ctx.runtime.max_body_size;
        while let Some(chunk) = session.read_request_body().await? {
            if let Err(e) = body::count_chunk(&mut ctx.body_bytes, chunk.len(), max) {
                return self.refuse(session, ctx, e).await;
            }
        }
        let mut upstream_request = session.req_header().clone();
        if let Err(e) = Self::prepare_upstream(session, ctx, &mut upstream_request) {
            return self.refuse(session, ctx, e).await;
        }
        let body = echo::describe(&upstream_request, ctx.body_bytes);
        let request_id = respond::request_id(ctx.admission.as_ref());
        let resp =
            crate::error::json_response(http::StatusCode::OK, body.len(), &ctx.runtime.request_id_header, request_id)?;
        self.answer(session, ctx, resp, Some(body), false).await
    }

    fn prepare_upstream(
        session: &Session,
        ctx: &RequestCtx,
        upstream_request: &mut RequestHeader,
    ) -> Result<(), GatewayError> {
        let admission = ctx.admission.as_ref().ok_or(GatewayError::Internal)?;
        let scheme = if is_tls(session) { "https" } else { "http" };
        let fwd = forward::Forwarding::of(&ctx.runtime, admission, scheme)?;
        forward::prepare_upstream_request(upstream_request, &ctx.runtime.trusted_proxies, &fwd)
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
            Ok(Routing::Request) => {}
            Ok(Routing::Redirect(answer) | Routing::Preflight { answer, .. }) => {
                self.answer(session, ctx, *answer, None, true).await?;
                return Ok(true);
            }
            Err(refusal) => {
                self.refuse(session, ctx, refusal).await?;
                return Ok(true);
            }
        }
        if let Some(upstream) = ctx.upstream() {
            if matches!(upstream.targets, Targets::Echo) {
                self.echo(session, ctx).await?;
                return Ok(true);
            }
            ctx.upstream.rotation_start = upstream.rotation_start();
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
            ctx.response.refusal = Some(refusal);
            return Error::e_explain(ErrorType::HTTPStatus(413), "request body over max_body_size");
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let exchange = &ctx.upstream;
        let peer = ctx.upstream().and_then(|u| u.peer(exchange.rotation_start, exchange.attempts));
        let exchange = &mut ctx.upstream;
        exchange.attempts += 1;
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
        if let Some(upstream) = ctx.upstream() {
            METRICS.upstream_errors.with_label_values(&[&upstream.name, upstream_error_kind(&e)]).inc();
        }
        // Nothing was sent yet: the next target may take the request.
        if ctx.upstream().is_some_and(|u| ctx.upstream.attempts < u.attempts()) {
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
            if let Some(upstream) = ctx.upstream() {
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
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.decorate(resp, is_tls(session), ctx)
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        let exchange = Exchange {
            ctx,
            request: session.req_header(),
            // Nothing was sent: the client left first (nginx's 499).
            status: session.response_written().map_or(499, |r| r.status.as_u16()),
            bytes_sent: session.body_bytes_sent(),
            elapsed: ctx.started.elapsed(),
            tls: is_tls(session),
            protocol: if session.is_http2() { "HTTP/2" } else { "HTTP/1.1" },
            error,
        };
        self.logs.record(&exchange);
    }

    /// What Pingora's own error log lines say about a request.
    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        exchange::summary(session.req_header(), ctx.admission.as_ref())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        // Ours (a body over the limit), else what the upstream's failure means; none: the
        // client is gone.
        let ours = ctx.response.refusal.take();
        let recorded = ours.is_some();
        let Some(refusal) = ours.or_else(|| classify(e)) else {
            return FailToProxy { error_code: 0, can_reuse_downstream: false };
        };
        let status = refusal.status().as_u16();
        if session.response_written().is_none() {
            // The request may be half-read (a body cut off at the limit): never reuse.
            session.set_keepalive(None);
            if let Err(write_error) = self.refuse(session, ctx, refusal).await {
                tracing::debug!(error = %write_error, "could not send the error response");
            }
        } else if recorded {
            ctx.response.refusal = Some(refusal);
        }
        FailToProxy { error_code: status, can_reuse_downstream: false }
    }
}
