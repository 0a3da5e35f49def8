//! Per-request context: what the stages learned about a request, carried between Pingora's
//! phases.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use http::HeaderValue;

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
        }
    }
}
