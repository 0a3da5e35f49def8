//! On the way back: what every response carries, the upstream's and the gateway's own alike
//! (refusals, preflights, redirects, `builtin:echo`): the request id, HSTS on a TLS listener that
//! asks for it, the CORS headers of an actual request (or the `Vary` of a preflight), and the
//! rate-limit headers of a limited route.

use http::{HeaderMap, HeaderValue};

use super::admit::Admission;
use super::cors::{self, CorsState};
use super::ratelimit::Quota;
use super::Runtime;
use crate::error::GatewayError;

/// The response side of a request: what the stages decided the response is, or adds to it.
#[derive(Debug, Default)]
pub struct ResponseState {
    /// The refusal the gateway answered with, if any.
    pub refusal: Option<GatewayError>,
    /// The tightest rate-limit standing of the route's policies, once checked.
    pub quota: Option<Quota>,
    /// What CORS does to the response, decided once the request was routed.
    pub cors: CorsState,
}

/// The request id of a response to a request that admission never saw.
static NO_REQUEST_ID: HeaderValue = HeaderValue::from_static("");

/// The request id to answer with: the admitted request's, or none.
pub fn request_id(admission: Option<&Admission>) -> &HeaderValue {
    admission.map_or(&NO_REQUEST_ID, |a| &a.request_id)
}

/// Sets the headers every response carries. `hsts` is the listener's `Strict-Transport-Security`
/// when the request came over TLS; `now` (seconds since the epoch) dates the rate-limit reset,
/// so a slow upstream's response says how long is left after it.
pub fn decorate(
    rt: &Runtime,
    headers: &mut HeaderMap,
    admission: Option<&Admission>,
    state: &ResponseState,
    hsts: Option<&HeaderValue>,
    now: u64,
) {
    headers.reserve(10);
    headers.insert(rt.request_id_header.clone(), request_id(admission).clone());
    // Every response over TLS carries HSTS, errors included.
    if let Some(hsts) = hsts {
        headers.insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    match (&state.cors, &rt.cors) {
        (CorsState::Actual(origin), Some(cors)) => cors.decorate(headers, origin.as_ref()),
        (CorsState::Preflight, _) => cors::add_vary(headers, cors::preflight_vary()),
        _ => {}
    }
    let route = admission.and_then(|a| a.route).map(|id| rt.routes.get(id));
    let policy_header = route.and_then(|r| r.ratelimit_policy.as_ref());
    if state.quota.is_some() || policy_header.is_some() {
        rt.limits.decorate(headers, state.quota.as_ref(), policy_header, now);
    }
}
