//! Routing a request: canonical path, the query's method override, the route, and which route
//! governs a CORS preflight. The gateway and `portcullis explain` both call [`route`], so what
//! `explain` prints is what the gateway does.
//!
//! A preflight is governed by the route of the method it asks about, or, when no route serves
//! that method at this path, by the `OPTIONS` route. If that route has CORS on, the gateway
//! answers the preflight; if not, the `OPTIONS` is an ordinary request, credentials and all: an
//! upstream that answers its own preflights on a protected path needs an `OPTIONS` route with
//! `auth = "none"` and `cors = false`, said in its config.

use std::borrow::Cow;

use http::Method;
use pingora::http::RequestHeader;

use crate::error::{CorsRejection, GatewayError};
use crate::pipeline::cors::CorsPolicy;
use crate::pipeline::path;
use crate::pipeline::route::{RouteId, RouteTable};

/// What a request is, once routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing {
    /// A CORS preflight the gateway answers, governed by `route`, asking for `asked` (`None`:
    /// an `Access-Control-Request-Method` that is not one method, refused with 403).
    Preflight {
        /// The governing route.
        route: RouteId,
        /// The method the preflight asks about.
        asked: Option<Method>,
    },
    /// A request for `route`: through the rest of the pipeline to its upstream.
    Request {
        /// The matched route.
        route: RouteId,
    },
}

/// A routed request: its canonical path (borrowed when the request's is already canonical)
/// and what it is.
#[derive(Debug)]
pub struct Routed<'r> {
    /// The canonical path, for route matching and the upstream.
    pub canonical: Cow<'r, str>,
    /// A preflight or a request, and its route.
    pub routing: Routing,
}

/// Routes `req` for the allowed host `host` (normalised) among `routes`, with `cors` the
/// `[cors]` policy if any: 400 for a path or query the gateway will not pass on, 404/405 for no
/// route, 403 `CORS_REJECTED` for a preflight no route with CORS governs.
pub fn route<'r>(
    routes: &RouteTable,
    cors: Option<&CorsPolicy>,
    host: &str,
    req: &'r RequestHeader,
) -> Result<Routed<'r>, GatewayError> {
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
            Some(id) => return Ok(Routed { canonical, routing: Routing::Preflight { route: id, asked } }),
            None => return Err(GatewayError::CorsRejected(CorsRejection::Method)),
        }
    }
    let route = route_for(&req.method)?;
    Ok(Routed { canonical, routing: Routing::Request { route } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Runtime;

    fn route<'r>(rt: &Runtime, host: &str, req: &'r RequestHeader) -> Result<Routed<'r>, GatewayError> {
        super::route(&rt.routes, rt.cors.as_ref(), host, req)
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
        let routing = |rt: &Runtime, req: RequestHeader| route(rt, "localhost", &req).map(|r| r.routing);
        assert_eq!(
            routing(&rt, request("OPTIONS", "/models", &PREFLIGHT)),
            Ok(Routing::Preflight { route: models, asked: Some(Method::POST) })
        );
        // The route leaves CORS to its upstream: an ordinary OPTIONS request.
        let own = rt.routes.routes().iter().position(|r| &*r.name == "own-cors").unwrap();
        assert_eq!(routing(&rt, request("OPTIONS", "/own", &PREFLIGHT)), Ok(Routing::Request { route: own }));
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
            let refused = route(&rt, "localhost", &req).map(|r| r.routing);
            assert!(matches!(refused, Err(GatewayError::BadPath(_) | GatewayError::BadRequest(_))), "{target}");
        }
        let req = request("GET", "/other", &[]);
        assert_eq!(route(&rt, "localhost", &req).map(|r| r.routing), Err(GatewayError::RouteNotFound));
    }
}
