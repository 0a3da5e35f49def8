//! The request pipeline, one module per stage, in the order a request meets them:
//!
//! 1. [`request_id`]: keep the client's request id or make one.
//! 2. [`host`]: the host allow-list (400 / 421).
//! 3. [`path`]: one canonical path (400 `BAD_PATH`).
//! 4. [`route`]: host, longest path prefix, method (404 / 405); a CORS preflight is routed by the
//!    method it asks about.
//! 5. [`cors`]: preflights answered at the edge (204 / 403 `CORS_REJECTED`).
//! 6. [`body`]: request body limits (413).
//! 7. [`client`]: the client address, through trusted proxies.
//! 8. [`ratelimit`]: the route's address- and header-keyed limits (429), before any credential
//!    is looked at; then the failed-authentication limit per address (429).
//! 9. [`auth`]: credentials (401); then the identity-keyed limits (429); then the route's
//!    permissions (403).
//! 10. [`upstream`]: target choice, or [`echo`] for `builtin:echo` (502 / 504).
//! 11. [`forward`]: header hygiene, forwarding and identity headers.
//!
//! [`admit`] runs stages 1 to 9 in this order, for the gateway and `portcullis explain` alike:
//! `admit::route` (1-6) and `admit::authorize` (8-9), over the [`Runtime`] they all read.
//!
//! On the way back, every response (the upstream's or the gateway's own) gets the request id,
//! the CORS headers ([`cors`]) and the rate-limit headers ([`ratelimit`]): [`respond`].

pub mod admit;
pub mod auth;
pub mod body;
pub mod client;
pub mod cors;
pub mod echo;
pub mod forward;
pub mod host;
pub mod path;
pub mod ratelimit;
pub mod request_id;
pub mod respond;
pub mod route;
pub mod upstream;

use http::HeaderName;

use auth::Authenticator;
use client::TrustedProxies;
use cors::CorsPolicy;
use host::HostAllowList;
use ratelimit::RateLimiter;
use route::RouteTable;
use upstream::Upstream;

/// The state each request reads, swapped whole on reload.
#[derive(Debug)]
pub struct Runtime {
    /// Host allow-list.
    pub hosts: HostAllowList,
    /// Trusted proxies.
    pub trusted_proxies: TrustedProxies,
    /// Largest request body in bytes.
    pub max_body_size: u64,
    /// Request id header name.
    pub request_id_header: HeaderName,
    /// API keys and how credentials are read.
    pub auth: Authenticator,
    /// `[cors]`, when configured.
    pub cors: Option<CorsPolicy>,
    /// Rate-limit policies and their counters, and the failed-authentication limit.
    pub limits: RateLimiter,
    /// Routes.
    pub routes: RouteTable,
    /// Upstreams, indexed by `Route::upstream`.
    pub upstreams: Vec<Upstream>,
}
