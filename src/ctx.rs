//! Per-request context: what the stages learned about a request, carried between Pingora's
//! phases. Each part exists once it is known: the [`Admission`] from the request filter on, the
//! upstream exchange once one was tried; the response side is apart from the request side.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::pipeline::admit::Admission;
use crate::pipeline::respond::ResponseState;
use crate::pipeline::Runtime;

/// The state of one request.
pub struct RequestCtx {
    /// The configuration this request is served under, read once when it arrived: a reload
    /// swaps the shared pointer without changing the rules under a request in flight.
    pub runtime: Arc<Runtime>,
    /// When the request's headers had been read.
    pub started: Instant,
    /// What admission learned; `None` until the request filter ran.
    pub admission: Option<Admission>,
    /// What the gateway adds to the response, or answered instead of the upstream.
    pub response: ResponseState,
    /// Request body bytes received so far.
    pub body_bytes: u64,
    /// The upstream exchange, once one was attempted.
    pub upstream: UpstreamExchange,
    /// Counts this request in `portcullis_requests_in_flight` while it lives.
    _in_flight: InFlight,
}

/// What happened between the gateway and the upstream.
#[derive(Debug, Default)]
pub struct UpstreamExchange {
    /// Where the upstream rotation starts for this request.
    pub rotation_start: usize,
    /// Connection attempts made.
    pub attempts: usize,
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

impl RequestCtx {
    /// A context for a request arriving under `runtime`.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        RequestCtx {
            runtime,
            started: Instant::now(),
            admission: None,
            response: ResponseState::default(),
            body_bytes: 0,
            upstream: UpstreamExchange::default(),
            _in_flight: InFlight::new(),
        }
    }

    /// The matched route, once routed.
    pub fn route(&self) -> Option<&crate::pipeline::route::Route> {
        Some(self.runtime.routes.get(self.admission.as_ref()?.route?))
    }

    /// The matched route's upstream.
    pub fn upstream(&self) -> Option<&crate::pipeline::upstream::Upstream> {
        self.runtime.upstreams.get(self.route()?.upstream)
    }
}
