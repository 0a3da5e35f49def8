//! Route matching: host, segment-aware longest path prefix, then method.
//!
//! Routes are indexed by path at load time. A lookup walks the canonical request path from the
//! longest prefix to `/` at segment boundaries (`/api/v1/models/7`, `/api/v1/models`, `/api/v1`,
//! `/api`, `/`), so `/api` matches `/api`, `/api/` and `/api/x` but never `/apix`, and the cost
//! is one hash lookup per segment whatever the number of routes.
//!
//! At the longest path that has routes for the request's host, routes naming that host shadow
//! routes without a host. If none of them allows the method the answer is 405 with `Allow`; the
//! gateway does not fall back to a shorter prefix, which would hand the request to a route whose
//! rules were not written for it.

use std::collections::HashMap;

use http::{HeaderValue, Method};

use crate::error::GatewayError;
use crate::pipeline::host::HostPattern;

/// Index of a route in [`RouteTable::routes`].
pub type RouteId = usize;

/// How a route authenticates requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// A valid credential is needed (the default: deny unless configured otherwise).
    Required,
    /// A credential is checked when sent; anonymous requests pass.
    Optional,
    /// No credential is looked at.
    None,
}

/// One validated `[[route]]`.
#[derive(Debug)]
pub struct Route {
    /// Name for logs and metrics.
    pub name: Box<str>,
    /// Only requests for this host, when set.
    pub host: Option<HostPattern>,
    /// Canonical path prefix.
    pub path: Box<str>,
    /// Allowed methods; `None` allows all.
    pub methods: Option<Vec<Method>>,
    /// Index of the upstream in the runtime's upstream list.
    pub upstream: usize,
    /// Authentication mode.
    pub auth: AuthMode,
    /// Permissions a caller needs, all of them.
    pub permissions: Vec<Box<str>>,
}

impl Route {
    fn allows(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }
}

/// All routes, indexed by path prefix.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Path → routes at that path, host-specific ones first.
    by_path: HashMap<Box<str>, Vec<RouteId>>,
}

impl RouteTable {
    /// Indexes validated routes. Their paths must already be canonical (config validation
    /// checks this).
    pub fn new(routes: Vec<Route>) -> Self {
        let mut by_path: HashMap<Box<str>, Vec<RouteId>> = HashMap::new();
        for (id, route) in routes.iter().enumerate() {
            by_path.entry(route.path.clone()).or_default().push(id);
        }
        for ids in by_path.values_mut() {
            ids.sort_by_key(|&id| routes[id].host.is_none());
        }
        RouteTable { routes, by_path }
    }

    /// The route by id.
    pub fn get(&self, id: RouteId) -> &Route {
        &self.routes[id]
    }

    /// All routes, in configuration order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Finds the route for a normalised host, a canonical path and a method.
    pub fn lookup(&self, host: &str, path: &str, method: &Method) -> Result<RouteId, GatewayError> {
        let mut end = if path.len() > 1 { path.trim_end_matches('/').len().max(1) } else { 1 };
        loop {
            if let Some(found) = self.lookup_exact(host, &path[..end], method) {
                return found;
            }
            if end == 1 {
                return Err(GatewayError::RouteNotFound);
            }
            end = path[..end].rfind('/').unwrap_or(0).max(1);
        }
    }

    /// Routes at exactly `prefix` for `host`: `None` when there are none, so the caller tries a
    /// shorter prefix.
    fn lookup_exact(&self, host: &str, prefix: &str, method: &Method) -> Option<Result<RouteId, GatewayError>> {
        let ids = self.by_path.get(prefix)?;
        let matching = ids.iter().copied().filter(|&id| self.routes[id].host.as_ref().is_none_or(|h| h.matches(host)));
        // Host-specific routes sort first; if any matches, host-less ones at this path are shadowed.
        let mut pool = matching.clone().peekable();
        let first = *pool.peek()?;
        let specific = self.routes[first].host.is_some();
        let pool = matching.filter(|&id| self.routes[id].host.is_some() == specific);
        for id in pool.clone() {
            if self.routes[id].allows(method) {
                return Some(Ok(id));
            }
        }
        Some(Err(GatewayError::MethodNotAllowed { allow: self.allow_header(pool) }))
    }

    fn allow_header(&self, ids: impl Iterator<Item = RouteId>) -> HeaderValue {
        let mut methods: Vec<&str> = Vec::new();
        for id in ids {
            for m in self.routes[id].methods.iter().flatten() {
                if !methods.contains(&m.as_str()) {
                    methods.push(m.as_str());
                }
            }
        }
        HeaderValue::from_str(&methods.join(", ")).unwrap_or(HeaderValue::from_static(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, host: Option<&str>, path: &str, methods: Option<&[&str]>) -> Route {
        Route {
            name: name.into(),
            host: host.map(|h| HostPattern::parse(h).unwrap()),
            path: path.into(),
            methods: methods.map(|ms| ms.iter().map(|m| Method::from_bytes(m.as_bytes()).unwrap()).collect()),
            upstream: 0,
            auth: AuthMode::None,
            permissions: Vec::new(),
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(vec![
            route("root", None, "/", None),
            route("api", None, "/api", Some(&["GET"])),
            route("models-read", None, "/api/v1/models", Some(&["GET", "HEAD"])),
            route("models-write", None, "/api/v1/models", Some(&["POST"])),
            route("admin", None, "/admin", None),
            route("special", Some("special.example.com"), "/api", Some(&["DELETE"])),
        ])
    }

    fn name(t: &RouteTable, host: &str, path: &str, method: &str) -> Result<String, GatewayError> {
        t.lookup(host, path, &Method::from_bytes(method.as_bytes()).unwrap()).map(|id| t.get(id).name.to_string())
    }

    #[test]
    fn longest_segment_aware_prefix() {
        let t = table();
        assert_eq!(name(&t, "h", "/api/v1/models", "GET").as_deref(), Ok("models-read"));
        assert_eq!(name(&t, "h", "/api/v1/models/7", "GET").as_deref(), Ok("models-read"));
        assert_eq!(name(&t, "h", "/api/v1/models/", "POST").as_deref(), Ok("models-write"));
        assert_eq!(name(&t, "h", "/api/v1/modelsx", "GET").as_deref(), Ok("api"));
        assert_eq!(name(&t, "h", "/apix", "GET").as_deref(), Ok("root"));
        assert_eq!(name(&t, "h", "/", "GET").as_deref(), Ok("root"));
        assert_eq!(name(&t, "h", "/admin/users", "PUT").as_deref(), Ok("admin"));
    }

    #[test]
    fn wrong_method_is_405_with_allow() {
        let t = table();
        match t.lookup("h", "/api/v1/models", &Method::DELETE) {
            Err(GatewayError::MethodNotAllowed { allow }) => assert_eq!(allow, "GET, HEAD, POST"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn host_specific_routes_shadow_hostless_ones() {
        let t = table();
        assert_eq!(name(&t, "special.example.com", "/api", "DELETE").as_deref(), Ok("special"));
        assert!(matches!(name(&t, "special.example.com", "/api", "GET"), Err(GatewayError::MethodNotAllowed { .. })));
        assert_eq!(name(&t, "other.example.com", "/api", "GET").as_deref(), Ok("api"));
    }

    #[test]
    fn no_route() {
        let t = RouteTable::new(vec![route("admin", None, "/admin", None)]);
        assert_eq!(name(&t, "h", "/ADMIN", "GET"), Err(GatewayError::RouteNotFound));
        assert_eq!(name(&t, "h", "/", "GET"), Err(GatewayError::RouteNotFound));
        assert_eq!(name(&t, "h", "/adminx", "GET"), Err(GatewayError::RouteNotFound));
    }
}
