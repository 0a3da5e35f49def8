//! Admission: what the request-header stages decide, in the order a request meets them, for the
//! gateway and `portcullis explain` alike (so what `explain` prints is what the gateway does).
//!
//! Two steps, both over the [`Runtime`] and the request's parts, neither touching a socket:
//!
//! 1. [`route`] (synchronous): host (400/421), the `redirect_https` redirect, canonical path and
//!    query (400), route (404/405), CORS preflight (204/403), declared body length (413).
//! 2. [`authorize`] (async: a JWT may name a key its JWKS has not fetched yet): the failed-
//!    authentication and address-keyed limits (429), credentials (401), identity-keyed limits
//!    (429), permissions (403).
//!
//! Each step records what it learns in the request's [`Admission`] as it learns it, so a refusal
//! is logged with as much as was known: the route a 401 was for, the host a 404 asked.
//!
//! A preflight is governed by the route of the method it asks about, or, when no route serves
//! that method at this path, by the `OPTIONS` route. If that route has CORS on, the gateway
//! answers the preflight; if not, the `OPTIONS` is an ordinary request, credentials and all: an
//! upstream that answers its own preflights on a protected path needs an `OPTIONS` route with
//! `auth = "none"` and `cors = false`, said in its config.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};

use super::auth::{AcceptedCredentials, AuthMode, Presented, Principal};
use super::cors::{CorsPolicy, CorsState};
use super::ratelimit::{Caller, Quota};
use super::route::{RouteId, RouteTable};
use super::{body, path, request_id, Runtime};
use crate::error::{CorsRejection, GatewayError};
use crate::tls::ClientCertificate;

/// What admission learned of a request, each part once the stage that learns it has run.
#[derive(Debug)]
pub struct Admission {
    /// The request id, echoed on the response and sent upstream.
    pub request_id: HeaderValue,
    /// The TCP peer.
    pub peer: IpAddr,
    /// The client, as seen through trusted proxies.
    pub client_ip: IpAddr,
    /// The validated authority as the client wrote it, once the host was allowed.
    pub host: Option<HeaderValue>,
    /// The matched route (for a preflight, the route that governs it).
    pub route: Option<RouteId>,
    /// The canonical path, when it differs from the request's.
    pub canonical_path: Option<String>,
    /// The verified caller, once authenticated (`None` also for an anonymous caller).
    pub principal: Option<Principal>,
    /// The credential presented, when authentication failed: for the metrics and audit log of
    /// the failure.
    pub presented: Option<Presented>,
}

impl Admission {
    /// The first stages, which never refuse: the request id (the client's, when acceptable)
    /// and the client address (through trusted proxies) of a request from `peer`.
    pub fn arrive(rt: &Runtime, req: &RequestHeader, peer: IpAddr) -> Admission {
        Admission {
            request_id: request_id::request_id(&req.headers, &rt.request_id_header),
            peer,
            client_ip: rt.trusted_proxies.client_ip(peer, &req.headers),
            host: None,
            route: None,
            canonical_path: None,
            principal: None,
            presented: None,
        }
    }
}

/// What a request is, once routed.
#[derive(Debug)]
pub enum Routing {
    /// For the route in [`Admission::route`]: on to [`authorize`].
    Request,
    /// A CORS preflight the gateway answers with this 204, allowing `asked`.
    Preflight {
        /// The answer.
        answer: Box<ResponseHeader>,
        /// The method the preflight asked about.
        asked: Method,
    },
    /// A plain request on a `redirect_https` listener: this 308 to the https URL (the method
    /// and body are to be sent again there, not dropped).
    Redirect(Box<ResponseHeader>),
}

/// Step 1: host, redirect, path, route, preflight, declared body length.
///
/// `redirect_to` is the https port of a plain `redirect_https` listener (`None` on others).
pub fn route(
    rt: &Runtime,
    req: &RequestHeader,
    redirect_to: Option<u16>,
    admission: &mut Admission,
) -> Result<Routing, GatewayError> {
    let host = rt.hosts.check(req)?;
    admission.host = Some(host.authority);
    if let Some(port) = redirect_to {
        let location = https_location(host.name.as_str(), port, req)?;
        let redirect = || {
            let mut resp = ResponseHeader::build_no_case(http::StatusCode::PERMANENT_REDIRECT, Some(4))?;
            resp.insert_header(http::header::LOCATION, location)?;
            resp.insert_header(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"))?;
            Ok::<_, Box<pingora::Error>>(Box::new(resp))
        };
        return redirect().map(Routing::Redirect).map_err(|_| GatewayError::Internal);
    }
    let matched = match_route(&rt.routes, rt.cors.as_ref(), host.name.as_str(), req)?;
    if let Cow::Owned(p) = matched.canonical {
        admission.canonical_path = Some(p);
    }
    match matched.kind {
        Matched::Preflight { route, asked } => {
            admission.route = Some(route);
            let cors = rt.cors.as_ref().ok_or(GatewayError::Internal)?;
            let asked = asked.ok_or(GatewayError::CorsRejected(CorsRejection::Method))?;
            let answer = Box::new(cors.answer_preflight(req, &asked)?);
            Ok(Routing::Preflight { answer, asked })
        }
        Matched::Request { route } => {
            admission.route = Some(route);
            body::check_declared_length(&req.headers, rt.max_body_size)?;
            Ok(Routing::Request)
        }
    }
}

/// Step 2, for a routed request: address-keyed limits and the failed-authentication limit
/// (which cut floods before any signature is checked), credentials, identity-keyed limits,
/// permissions. `certificate` is the client certificate the TLS handshake verified, if any;
/// `quota` receives the tightest rate-limit standing, for the response headers; `now` is the
/// clock rate-limit windows are aligned to (seconds since the epoch).
pub async fn authorize(
    rt: &Runtime,
    req: &RequestHeader,
    certificate: Option<&Arc<ClientCertificate>>,
    admission: &mut Admission,
    quota: &mut Option<Quota>,
    now: fn() -> u64,
) -> Result<(), GatewayError> {
    let route = rt.routes.get(admission.route.ok_or(GatewayError::Internal)?);
    let client = admission.client_ip;
    let guessing = route.auth != AuthMode::None && rt.auth.presents_credential(&req.headers);
    let arrived = now();
    if guessing {
        rt.limits.check_auth_failures(client, arrived, quota)?;
    }
    let mut caller = Caller { client, headers: &req.headers, identity: None };
    rt.limits.check(&route.limits_before_auth, &caller, arrived, quota)?;
    let authenticated = rt.auth.authenticate(route.auth, &req.headers, certificate).await;
    // Verification may have waited for a JWKS refresh: windows use the time now.
    let verified = now();
    admission.principal = match authenticated {
        Ok(principal) => AcceptedCredentials::ambient(route.credentials.as_ref(), route.auth, principal),
        Err(refusal) => {
            if let GatewayError::AuthenticationFailed(failure) = &refusal {
                if guessing && failure.is_guess() {
                    rt.limits.record_auth_failure(client, verified);
                }
                admission.presented = Some(rt.auth.presented(&req.headers));
            }
            return Err(refusal);
        }
    };
    // The address-keyed policies keep this request even if these refuse it: they count every
    // request that reaches them, as they do one that fails authentication.
    if !route.limits_after_auth.is_empty() {
        caller.identity = admission.principal.as_ref().map(|p| rt.auth.limit_identity(p));
        rt.limits.check(&route.limits_after_auth, &caller, verified, quota)?;
    }
    let authorized = rt.auth.authorize(admission.principal.as_ref(), route.credentials.as_ref(), &route.permissions);
    // An anonymous caller where the route needs one is a failed authentication too: say what
    // was presented (nothing, or an unaccepted certificate's absence of a token).
    if let Err(GatewayError::AuthenticationFailed(_)) = &authorized {
        admission.presented = Some(rt.auth.presented(&req.headers));
    }
    authorized
}

/// What CORS does to the response of a request: nothing without `[cors]` or on a route that
/// turned it off; a preflight's response (answered or refused) is never decorated as an actual
/// response, only varied by what it asked; otherwise the `Access-Control-Allow-Origin` of an
/// allowed origin. Decided once, after [`route`], with what it learned.
pub fn cors_state(rt: &Runtime, req: &RequestHeader, admission: Option<&Admission>) -> CorsState {
    let Some(cors) = &rt.cors else { return CorsState::Off };
    let route = admission.and_then(|a| a.route).map(|id| rt.routes.get(id));
    if route.is_some_and(|r| !r.cors) {
        return CorsState::Off;
    }
    if CorsPolicy::preflight_method(req).is_some() {
        return CorsState::Preflight;
    }
    CorsState::Actual(cors.allow_origin(req))
}

/// A routed request: its canonical path (borrowed when the request's is already canonical)
/// and what it is.
#[derive(Debug)]
struct RouteMatch<'r> {
    canonical: Cow<'r, str>,
    kind: Matched,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Matched {
    /// A CORS preflight the gateway answers, governed by `route`, asking for `asked` (`None`:
    /// an `Access-Control-Request-Method` that is not one method, refused with 403).
    Preflight { route: RouteId, asked: Option<Method> },
    /// A request for `route`.
    Request { route: RouteId },
}

/// Path and query checks, then the route of `req` for the allowed host `host` (normalised), with
/// `cors` the `[cors]` policy if any: 400 for a path or query the gateway will not pass on,
/// 404/405 for no route, 403 `CORS_REJECTED` for a preflight no route with CORS governs.
fn match_route<'r>(
    routes: &RouteTable,
    cors: Option<&CorsPolicy>,
    host: &str,
    req: &'r RequestHeader,
) -> Result<RouteMatch<'r>, GatewayError> {
    let canonical = path::normalize(req.uri.path())?;
    path::check_query(req.uri.query())?;
    let route_for = |method: &Method| -> Result<RouteId, GatewayError> {
        let id = routes.lookup(host, &canonical, method)?;
        routes.check_unambiguous(host, &canonical, id)?;
        Ok(id)
    };
    let preflight = cors.and_then(|_| CorsPolicy::preflight_method(req));
    if let Some(asked) = preflight {
        let governing = match &asked {
            Some(method) => match route_for(method) {
                Err(GatewayError::MethodNotAllowed { .. }) => route_for(&req.method).ok(),
                other => Some(other?),
            },
            None => route_for(&req.method).ok(),
        };
        match governing {
            // CORS off on the governing route: an ordinary OPTIONS request, below.
            Some(id) if !routes.get(id).cors => {}
            Some(id) => return Ok(RouteMatch { canonical, kind: Matched::Preflight { route: id, asked } }),
            None => return Err(GatewayError::CorsRejected(CorsRejection::Method)),
        }
    }
    let route = route_for(&req.method)?;
    Ok(RouteMatch { canonical, kind: Matched::Request { route } })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::AuthFailure;

    fn route<'r>(rt: &Runtime, host: &str, req: &'r RequestHeader) -> Result<RouteMatch<'r>, GatewayError> {
        match_route(&rt.routes, rt.cors.as_ref(), host, req)
    }

    fn runtime(extra: &str) -> std::sync::Arc<Runtime> {
        let text = format!(
            r#"
[server]
allowed_hosts = ["localhost"]
[[listener]]
address = "127.0.0.1:8080"
[[upstream]]
name = "api"
targets = ["builtin:echo"]
[[route]]
name = "models"
path = "/models"
methods = ["GET", "POST"]
upstream = "api"
[[route]]
name = "own-cors"
path = "/own"
upstream = "api"
cors = false
{extra}
"#
        );
        crate::config::load_str(&text).unwrap().runtime
    }

    fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build(method, target.as_bytes(), None).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    const PREFLIGHT: [(&str, &str); 2] = [("Origin", "https://app.example"), ("Access-Control-Request-Method", "POST")];

    #[test]
    fn a_preflight_is_governed_by_the_route_of_the_method_it_asks_about() {
        let rt = runtime("[cors]\nallowed_origins = [\"https://app.example\"]");
        let models = rt.routes.routes().iter().position(|r| &*r.name == "models").unwrap();
        let routing = |rt: &Runtime, req: RequestHeader| route(rt, "localhost", &req).map(|r| r.kind);
        assert_eq!(
            routing(&rt, request("OPTIONS", "/models", &PREFLIGHT)),
            Ok(Matched::Preflight { route: models, asked: Some(Method::POST) })
        );
        // The route leaves CORS to its upstream: an ordinary OPTIONS request.
        let own = rt.routes.routes().iter().position(|r| &*r.name == "own-cors").unwrap();
        assert_eq!(routing(&rt, request("OPTIONS", "/own", &PREFLIGHT)), Ok(Matched::Request { route: own }));
        // No route serves the asked method or OPTIONS here: refused, not forwarded.
        let asked_delete = [PREFLIGHT[0], ("Access-Control-Request-Method", "DELETE")];
        let refused = routing(&rt, request("OPTIONS", "/models", &asked_delete));
        assert_eq!(refused, Err(GatewayError::CorsRejected(CorsRejection::Method)));
        // Without [cors], the same OPTIONS is an ordinary request (here, no OPTIONS route: 405).
        let rt = runtime("");
        let plain = routing(&rt, request("OPTIONS", "/models", &PREFLIGHT));
        assert!(matches!(plain, Err(GatewayError::MethodNotAllowed { .. })), "{plain:?}");
    }

    #[test]
    fn paths_and_queries_are_checked_before_any_route() {
        let rt = runtime("");
        let req = request("GET", "/x/../models/7", &[]);
        assert_eq!(route(&rt, "localhost", &req).unwrap().canonical, "/models/7");
        for target in ["/models%2f7", "/models?_method=DELETE", "/%252e%252e/models"] {
            let req = request("GET", target, &[]);
            let refused = route(&rt, "localhost", &req).map(|r| r.kind);
            assert!(matches!(refused, Err(GatewayError::BadPath(_) | GatewayError::BadRequest(_))), "{target}");
        }
        let req = request("GET", "/other", &[]);
        assert_eq!(route(&rt, "localhost", &req).map(|r| r.kind), Err(GatewayError::RouteNotFound));
    }

    /// The gateway's whole admission over a request, as `request_filter` runs it, without a
    /// socket: the routing step, then (for a request) the authorisation step at `now`.
    fn admit(rt: &Runtime, req: &RequestHeader, now: fn() -> u64) -> (Admission, Result<(), GatewayError>) {
        let mut admission = Admission::arrive(rt, req, "192.0.2.7".parse().unwrap());
        let outcome = match super::route(rt, req, None, &mut admission) {
            Ok(Routing::Request) => {
                let mut quota = None;
                let check = authorize(rt, req, None, &mut admission, &mut quota, now);
                tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(check)
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        (admission, outcome)
    }

    fn at_noon() -> u64 {
        1_800_000_000
    }

    const KEYED: &str = r#"
[server]
allowed_hosts = ["localhost"]
auth_failure_limit = "2/minute"
max_body_size = "1KiB"
[[listener]]
address = "127.0.0.1:8080"
[[upstream]]
name = "api"
targets = ["builtin:echo"]
[[rate_limit]]
name = "two-per-client"
key = "client"
limit = "2/minute"
[[route]]
name = "models"
path = "/models"
upstream = "api"
permissions = ["read_models"]
[[route]]
name = "train"
path = "/train"
upstream = "api"
permissions = ["write_models"]
[[route]]
name = "limited"
path = "/limited"
upstream = "api"
auth = "none"
rate_limits = ["two-per-client"]
[[route]]
name = "limited-keyed"
path = "/limited-keyed"
upstream = "api"
rate_limits = ["two-per-client"]
[[route]]
name = "optional"
path = "/optional"
upstream = "api"
auth = "optional"
permissions = ["read_models"]
"#;

    fn keyed() -> std::sync::Arc<Runtime> {
        let key = crate::pipeline::auth::apikey::hash_line("pcs_the-right-key");
        let text = format!("{KEYED}[[auth.api_key]]\nid = \"ci\"\nhash = \"{key}\"\npermissions = [\"read_models\"]\n");
        crate::config::load_str(&text).unwrap().runtime
    }

    #[test]
    fn each_step_records_what_it_learned_before_it_refuses() {
        let rt = keyed();
        // Host refused: nothing past it is known.
        let (admission, outcome) = admit(&rt, &request("GET", "/models", &[("Host", "evil.example")]), at_noon);
        assert_eq!(outcome, Err(GatewayError::HostNotAllowed));
        assert_eq!((admission.host.is_none(), admission.route), (true, None));
        assert_eq!(admission.client_ip.to_string(), "192.0.2.7");
        assert!(!admission.request_id.is_empty());
        // No credential: 401 on the route, which the refusal is logged with.
        let (admission, outcome) = admit(&rt, &request("GET", "/x/../models", &[("Host", "localhost")]), at_noon);
        assert!(matches!(outcome, Err(GatewayError::AuthenticationFailed(AuthFailure::Missing))), "{outcome:?}");
        assert_eq!(admission.host.as_ref().map(|h| h.to_str().unwrap()), Some("localhost"));
        assert_eq!(admission.canonical_path.as_deref(), Some("/models"));
        assert_eq!(admission.route.map(|r| &*rt.routes.get(r).name), Some("models"));
        // A declared body over the limit: 413 on its route, before any credential is read.
        let big = [("Host", "localhost"), ("Content-Length", "4096"), ("X-API-Key", "pcs_the-right-key")];
        let (admission, outcome) = admit(&rt, &request("POST", "/models", &big), at_noon);
        assert!(matches!(outcome, Err(GatewayError::PayloadTooLarge { .. })), "{outcome:?}");
        assert!(admission.route.is_some() && admission.principal.is_none());
        // A plain request on a redirect_https listener: 308 to the https URL, once the host is allowed.
        let req = request("GET", "/models?a=1", &[("Host", "localhost")]);
        let mut admission = Admission::arrive(&rt, &req, "192.0.2.7".parse().unwrap());
        match super::route(&rt, &req, Some(8443), &mut admission) {
            Ok(Routing::Redirect(resp)) => {
                assert_eq!(resp.status, 308);
                assert_eq!(resp.headers["location"], "https://localhost:8443/models?a=1");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn credentials_then_permissions_are_checked_and_the_caller_kept() {
        let rt = keyed();
        let with_key = |path: &str, key: &str| request("GET", path, &[("Host", "localhost"), ("X-API-Key", key)]);
        let (admission, outcome) = admit(&rt, &with_key("/models", "pcs_the-right-key"), at_noon);
        assert_eq!(outcome, Ok(()));
        let who = admission.principal.as_ref().map(|p| rt.auth.summary(p).key_id);
        assert_eq!(who, Some(Some("ci")));
        assert!(admission.presented.is_none());
        // The right key without the route's permission: 403 naming it, the caller still known.
        let (admission, outcome) = admit(&rt, &with_key("/train", "pcs_the-right-key"), at_noon);
        assert_eq!(outcome, Err(GatewayError::PermissionDenied { missing: "write_models".into() }));
        assert!(admission.principal.is_some());
        // A wrong key: 401, with what was presented kept for the audit log (its kind, no secret).
        let (admission, outcome) = admit(&rt, &with_key("/models", "pcs_a-wrong-key-of-some-length"), at_noon);
        assert_eq!(outcome, Err(GatewayError::AuthenticationFailed(AuthFailure::UnknownKey)));
        let presented = admission.presented.unwrap();
        assert_eq!((presented.method, presented.key_prefix.as_deref()), ("api_key", Some("pcs_")));
    }

    #[test]
    fn only_guesses_count_toward_the_failed_authentication_limit() {
        let rt = keyed();
        let attempt = |headers: &[(&str, &str)]| {
            let mut all = vec![("Host", "localhost")];
            all.extend_from_slice(headers);
            admit(&rt, &request("GET", "/models", &all), at_noon).1
        };
        // No credential is no guess: any number of them leaves the limit alone.
        for _ in 0..5 {
            assert!(matches!(attempt(&[]), Err(GatewayError::AuthenticationFailed(AuthFailure::Missing))));
        }
        // Two wrong keys (the limit is 2/minute) are guesses: the third attempt, even with the
        // right key, is refused before it is checked.
        for _ in 0..2 {
            let outcome = attempt(&[("X-API-Key", "pcs_wrong")]);
            assert_eq!(outcome, Err(GatewayError::AuthenticationFailed(AuthFailure::UnknownKey)));
        }
        let outcome = attempt(&[("X-API-Key", "pcs_the-right-key")]);
        assert!(
            matches!(&outcome, Err(GatewayError::RateLimited { policy, .. }) if &**policy == "auth_failures"),
            "{outcome:?}"
        );
        // A later window starts afresh.
        let (_, outcome) = admit(
            &rt,
            &request("GET", "/models", &[("Host", "localhost"), ("X-API-Key", "pcs_the-right-key")]),
            || at_noon() + 120,
        );
        assert_eq!(outcome, Ok(()));
    }

    #[test]
    fn address_limits_refuse_before_credentials_and_count_refused_requests() {
        let rt = keyed();
        let req = request("GET", "/limited", &[("Host", "localhost")]);
        assert_eq!(admit(&rt, &req, at_noon).1, Ok(()));
        assert_eq!(admit(&rt, &req, at_noon).1, Ok(()));
        let third = admit(&rt, &req, at_noon).1;
        assert!(
            matches!(&third, Err(GatewayError::RateLimited { policy, .. }) if &**policy == "two-per-client"),
            "{third:?}"
        );
        // On a route that needs a caller: two refused for want of a credential use the budget
        // up (no guesses, so the failed-authentication limit is not what refuses), then even the
        // right key is refused by the limit, before it is checked.
        let rt = keyed();
        let keyed_req = |key: &str| request("GET", "/limited-keyed", &[("Host", "localhost"), ("X-API-Key", key)]);
        for _ in 0..2 {
            let outcome = admit(&rt, &request("GET", "/limited-keyed", &[("Host", "localhost")]), at_noon).1;
            assert_eq!(outcome, Err(GatewayError::AuthenticationFailed(AuthFailure::Missing)));
        }
        let (admission, third) = admit(&rt, &keyed_req("pcs_the-right-key"), at_noon);
        assert!(
            matches!(&third, Err(GatewayError::RateLimited { policy, .. }) if &**policy == "two-per-client"),
            "{third:?}"
        );
        assert!(admission.principal.is_none(), "the credential was checked past the limit");
    }

    #[test]
    fn an_anonymous_caller_refused_for_permissions_is_a_missing_credential() {
        let rt = keyed();
        let (admission, outcome) = admit(&rt, &request("GET", "/optional", &[("Host", "localhost")]), at_noon);
        assert_eq!(outcome, Err(GatewayError::AuthenticationFailed(AuthFailure::Missing)));
        assert_eq!(admission.presented.map(|p| p.method), Some("none"));
    }

    #[test]
    fn cors_is_decided_once_from_the_route() {
        let rt = runtime("[cors]\nallowed_origins = [\"https://app.example\"]");
        let req = request("GET", "/models", &[("Host", "localhost"), ("Origin", "https://app.example")]);
        let mut admission = Admission::arrive(&rt, &req, "192.0.2.7".parse().unwrap());
        // Before routing (a refused host, say), an allowed origin still reads the error.
        let allowed = CorsState::Actual(Some(http::HeaderValue::from_static("https://app.example")));
        assert_eq!(cors_state(&rt, &req, Some(&admission)), allowed);
        assert!(matches!(super::route(&rt, &req, None, &mut admission), Ok(Routing::Request)));
        assert_eq!(cors_state(&rt, &req, Some(&admission)), allowed);
        // A preflight, answered or refused (here: an origin not allowed), only varies.
        let asked =
            [("Host", "localhost"), ("Origin", "https://evil.example"), ("Access-Control-Request-Method", "POST")];
        let preflight = request("OPTIONS", "/models", &asked);
        let mut admission = Admission::arrive(&rt, &preflight, "192.0.2.7".parse().unwrap());
        assert!(super::route(&rt, &preflight, None, &mut admission).is_err());
        assert_eq!(cors_state(&rt, &preflight, Some(&admission)), CorsState::Preflight);
        let own = request("GET", "/own", &[("Host", "localhost"), ("Origin", "https://app.example")]);
        let mut admission = Admission::arrive(&rt, &own, "192.0.2.7".parse().unwrap());
        assert!(matches!(super::route(&rt, &own, None, &mut admission), Ok(Routing::Request)));
        assert_eq!(cors_state(&rt, &own, Some(&admission)), CorsState::Off);
        assert_eq!(cors_state(&runtime(""), &req, None), CorsState::Off);
    }
}
