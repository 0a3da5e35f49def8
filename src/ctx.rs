//! Per-request context: what the stages learned about a request, carried between Pingora's
//! phases.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use pingora::http::RequestHeader;

use crate::config::Runtime;
use crate::error::GatewayError;
use crate::pipeline::auth::Principal;
use crate::pipeline::ratelimit::Quota;
use crate::pipeline::route::RouteId;

/// The state of one request.
pub struct RequestCtx {
    /// The configuration this request is served under, read once when it arrived: a reload
    /// swaps the shared pointer without changing the rules under a request in flight.
    pub runtime: Arc<Runtime>,
    /// The request id, echoed on the response and sent upstream.
    pub request_id: HeaderValue,
    /// The validated authority as the client wrote it.
    pub host: HeaderValue,
    /// The canonical path, when it differs from the request's.
    pub canonical_path: Option<String>,
    /// The matched route.
    pub route: Option<RouteId>,
    /// The verified caller; `None` when anonymous.
    pub principal: Option<Principal>,
    /// The TCP peer.
    pub peer: IpAddr,
    /// The client, as seen through trusted proxies.
    pub client_ip: IpAddr,
    /// Request body bytes received so far.
    pub body_bytes: u64,
    /// Where the upstream rotation starts for this request.
    pub rotation_start: usize,
    /// Upstream connection attempts made.
    pub attempts: usize,
    /// The refusal the gateway answered with, if any.
    pub refusal: Option<GatewayError>,
    /// What CORS does to the response.
    pub cors: CorsState,
    /// The tightest rate-limit standing of the route's policies, once checked.
    pub quota: Option<Quota>,
    /// When the request arrived, in seconds since the epoch (rate-limit windows).
    pub now: u64,
    /// `Strict-Transport-Security` for the response (a TLS listener with `hsts`).
    pub hsts: Option<HeaderValue>,
    /// When the request's headers had been read.
    pub started: Instant,
    /// The upstream exchange, once one was attempted.
    pub upstream: UpstreamExchange,
    /// Counts this request in `portcullis_requests_in_flight` while it lives.
    _in_flight: InFlight,
}

/// What happened between the gateway and the upstream.
#[derive(Debug, Default)]
pub struct UpstreamExchange {
    /// When the first connection attempt started.
    pub started: Option<Instant>,
    /// The target of the last attempt.
    pub target: Option<SocketAddr>,
    /// The upstream's status code.
    pub status: Option<u16>,
    /// Time from the first attempt to the upstream's response header.
    pub elapsed: Option<Duration>,
}

/// `portcullis_requests_in_flight`, up while the guard lives.
struct InFlight;

impl InFlight {
    fn new() -> Self {
        crate::metrics::METRICS.requests_in_flight.inc();
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        crate::metrics::METRICS.requests_in_flight.dec();
    }
}

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
        self.ctx.route.map_or("", |id| &self.ctx.runtime.routes.get(id).name)
    }

    /// The host the client asked for: the validated authority, or for a request refused
    /// before that, the raw `:authority` or `Host` (redact before logging).
    pub fn requested_host(&self) -> &[u8] {
        if !self.ctx.host.is_empty() {
            return self.ctx.host.as_bytes();
        }
        match self.request.uri.authority() {
            Some(authority) => authority.as_str().as_bytes(),
            None => self.request.headers.get(http::header::HOST).map_or(&b""[..], |h| h.as_bytes()),
        }
    }

    /// The matched route's upstream's name, when the request was routed.
    pub fn upstream_name(&self) -> Option<&str> {
        let route = self.ctx.runtime.routes.get(self.ctx.route?);
        self.ctx.runtime.upstreams.get(route.upstream).map(|u| &*u.name)
    }
}

/// What CORS does to a request's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsState {
    /// Nothing: no `[cors]`, or a route with `cors = false`.
    Off,
    /// A preflight: answered by the gateway, never decorated as an actual response.
    Preflight,
    /// An actual request: the `Access-Control-Allow-Origin` value when its origin is allowed.
    Actual(Option<HeaderValue>),
}

impl RequestCtx {
    /// A context for a request arriving under `runtime`.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        RequestCtx {
            runtime,
            request_id: HeaderValue::from_static(""),
            host: HeaderValue::from_static(""),
            canonical_path: None,
            route: None,
            principal: None,
            peer: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            body_bytes: 0,
            rotation_start: 0,
            attempts: 0,
            refusal: None,
            cors: CorsState::Off,
            quota: None,
            now: 0,
            hsts: None,
            started: Instant::now(),
            upstream: UpstreamExchange::default(),
            _in_flight: InFlight::new(),
        }
    }
}
