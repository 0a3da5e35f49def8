//! Route matching: host, segment-aware longest path prefix, then method.
//!
//! Routes are indexed by path at load time. A lookup walks the canonical request path from the
//! longest prefix to `/` at segment boundaries (`/api/v1/models/7`, `/api/v1/models`, `/api/v1`,
//! `/api`, `/`), so `/api` matches `/api`, `/api/` and `/api/x` but never `/apix`, and the cost
//! is one hash lookup per segment whatever the number of routes.
//!
//! At the longest path that has routes for the request's host, the most specific host pattern
//! wins (an exact name, then the longest `*.` suffix, then routes without a host), as in nginx's
//! `server_name`, and shadows the less specific ones at that path. If none of them allows the
//! method the answer is 405 with `Allow`; the gateway does not fall back to a shorter prefix, which would hand the request to a route whose
//! rules were not written for it.
//!
//! Matching is case-sensitive, but many backends are not (Express, ASP.NET Core), and some strip
//! a format suffix or trailing dot from the last segment (Rails `/admin.json`, older Spring MVC,
//! IIS `/admin.`). [`RouteTable::check_unambiguous`] refuses a request that such a backend would
//! serve as a more specific route than the one the gateway matched.

use std::borrow::Cow;
use std::collections::HashMap;

use http::{HeaderValue, Method};

use crate::error::GatewayError;
use crate::pipeline::auth::{AcceptedCredentials, AuthMode};
use crate::pipeline::host::HostPattern;
use crate::pipeline::ratelimit::PolicyId;

/// Index of a route in [`RouteTable::routes`].
pub type RouteId = usize;

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
    /// The kinds of caller that may satisfy the route (`credentials`); `None`: any.
    pub credentials: Option<AcceptedCredentials>,
    /// Whether `[cors]` applies (it exists and the route did not turn it off).
    pub cors: bool,
    /// Rate-limit policies checked before authentication (address- and header-keyed).
    pub limits_before_auth: Vec<PolicyId>,
    /// Rate-limit policies checked after authentication (identity-keyed).
    pub limits_after_auth: Vec<PolicyId>,
    /// The IETF `RateLimit-Policy` value of this route's policies, rendered at load.
    pub ratelimit_policy: Option<HeaderValue>,
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
    /// Path → routes at that path, most specific host first.
    by_path: HashMap<Box<str>, Vec<RouteId>>,
    /// The same, keyed by lower-cased path.
    by_folded_path: HashMap<Box<str>, Vec<RouteId>>,
    /// The longest route path: longer prefixes of a request's path are not looked up.
    longest_path: usize,
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
            ids.sort_by_key(|&id| host_rank(routes[id].host.as_ref()));
        }
        let mut by_folded_path: HashMap<Box<str>, Vec<RouteId>> = HashMap::new();
        for (id, route) in routes.iter().enumerate() {
            by_folded_path.entry(route.path.to_ascii_lowercase().into()).or_default().push(id);
        }
        let longest_path = routes.iter().map(|r| r.path.len()).max().unwrap_or(0);
        RouteTable { routes, by_path, by_folded_path, longest_path }
    }

    /// Refuses a path that a case-insensitive or suffix-stripping backend would take for a more
    /// specific route than `matched` (e.g. `/ADMIN`, `/admin.json` or `/admin./x` matched `/`
    /// while `/admin` exists).
    ///
    /// The suffix rule cuts every segment at its first `.` or `%`, not only the last one: IIS
    /// and NTFS drop trailing dots and spaces from inner segments too (`/admin./secret.aspx` and
    /// `/admin%20/x` are served from `/admin/`).
    pub fn check_unambiguous(&self, host: &str, path: &str, matched: RouteId) -> Result<(), GatewayError> {
        let matched_len = self.routes[matched].path.len();
        if matched_len >= self.longest_path {
            return Ok(());
        }
        let folded: Cow<'_, str> = if path.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(path.to_ascii_lowercase())
        } else {
            Cow::Borrowed(path)
        };
        let ambiguous = |candidate: &str| self.longest_prefix_len(&self.by_folded_path, host, candidate) > matched_len;
        if (matches!(folded, Cow::Owned(_)) && ambiguous(&folded))
            || cut_segments(&folded).is_some_and(|c| ambiguous(&c))
        {
            return Err(GatewayError::BadPath(
                "the path differs from a more specific route only by letter case or suffix",
            ));
        }
        Ok(())
    }

    /// The length of the longest prefix of `path` with routes for `host` in `index`, or 0.
    fn longest_prefix_len(&self, index: &HashMap<Box<str>, Vec<RouteId>>, host: &str, path: &str) -> usize {
        let serves_host =
            |ids: &Vec<RouteId>| ids.iter().any(|&id| self.routes[id].host.as_ref().is_none_or(|h| h.matches(host)));
        self.prefixes(path).find(|prefix| index.get(*prefix).is_some_and(serves_host)).map_or(0, str::len)
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
        self.prefixes(path)
            .find_map(|prefix| self.lookup_exact(host, prefix, method))
            .unwrap_or(Err(GatewayError::RouteNotFound))
    }

    /// The prefixes of `path` that some route could have, longest first.
    fn prefixes<'p>(&self, path: &'p str) -> impl Iterator<Item = &'p str> + use<'_, 'p> {
        prefixes(path).skip_while(|prefix| prefix.len() > self.longest_path)
    }

    /// Routes at exactly `prefix` for `host`: `None` when there are none, so the caller tries a
    /// shorter prefix.
    fn lookup_exact(&self, host: &str, prefix: &str, method: &Method) -> Option<Result<RouteId, GatewayError>> {
        let ids = self.by_path.get(prefix)?;
        let matching = ids.iter().copied().filter(|&id| self.routes[id].host.as_ref().is_none_or(|h| h.matches(host)));
        // The most specific matching host pattern sorts first and shadows the others at this path.
        let first = matching.clone().next()?;
        let best = &self.routes[first].host;
        let pool = matching.filter(|&id| self.routes[id].host == *best);
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

/// `path` with every segment cut at its first `.` or `%` (`/admin./x.json` → `/admin/x`), or
/// `None` when no segment has either.
fn cut_segments(path: &str) -> Option<String> {
    if !path.bytes().any(|b| b == b'.' || b == b'%') {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(segment.find(['.', '%']).map_or(segment, |cut| &segment[..cut]));
    }
    Some(out)
}

/// The prefixes of a canonical path at segment boundaries, longest first:
/// `/a/b/c/` → `/a/b/c`, `/a/b`, `/a`, `/`.
fn prefixes(path: &str) -> impl Iterator<Item = &str> {
    let first = path.trim_end_matches('/');
    let first = if first.is_empty() { "/" } else { first };
    std::iter::successors(Some(first), |prefix| match prefix.rfind('/') {
        _ if *prefix == "/" => None,
        Some(0) | None => Some("/"),
        Some(cut) => Some(&prefix[..cut]),
    })
}

/// Sort key for host specificity: exact names, then longer wildcard suffixes, then no host.
fn host_rank(host: Option<&HostPattern>) -> (u8, std::cmp::Reverse<usize>) {
    match host {
        Some(HostPattern::Exact(_)) => (0, std::cmp::Reverse(0)),
        Some(HostPattern::Subdomains(suffix)) => (1, std::cmp::Reverse(suffix.len())),
        Some(HostPattern::Any) | None => (2, std::cmp::Reverse(0)),
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
            credentials: None,
            cors: false,
            limits_before_auth: Vec::new(),
            limits_after_auth: Vec::new(),
            ratelimit_policy: None,
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
            route("wild", Some("*.example.com"), "/api", Some(&["PUT"])),
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
        // Exact beats wildcard, wildcard beats no host.
        assert_eq!(name(&t, "other.example.com", "/api", "PUT").as_deref(), Ok("wild"));
        assert!(matches!(name(&t, "other.example.com", "/api", "GET"), Err(GatewayError::MethodNotAllowed { .. })));
        assert_eq!(name(&t, "elsewhere.org", "/api", "GET").as_deref(), Ok("api"));
    }

    #[test]
    fn backend_equivalent_spellings_of_a_more_specific_route_are_refused() {
        let t = table();
        let check = |path: &str| {
            let id = t.lookup("h", path, &Method::GET).unwrap();
            t.check_unambiguous("h", path, id)
        };
        for path in [
            "/ADMIN",
            "/Admin/users",
            "/admin.json",
            "/admin.",
            "/admin%20",
            "/API/v1/models",
            "/api/v1/models.xml",
            "/admin./secret.aspx",
            "/admin%20/x",
            "/ADMIN./x",
            "/api/v1/models./7",
        ] {
            assert!(matches!(check(path), Err(GatewayError::BadPath(_))), "{path}");
        }
        for path in [
            "/admin",
            "/admin/Users",
            "/admin/report.json",
            "/Other",
            "/files.json",
            "/api/v1/models/7.json",
            "/adminx",
            "/files.d/admin",
            "/caf%C3%A9/x",
        ] {
            assert_eq!(check(path), Ok(()), "{path}");
        }
    }

    #[test]
    fn prefix_walk() {
        assert_eq!(prefixes("/a/b/c/").collect::<Vec<_>>(), ["/a/b/c", "/a/b", "/a", "/"]);
        assert_eq!(prefixes("/").collect::<Vec<_>>(), ["/"]);
        assert_eq!(prefixes("/a").collect::<Vec<_>>(), ["/a", "/"]);
    }

    #[test]
    fn segments_are_cut_at_their_first_dot_or_escape() {
        assert_eq!(cut_segments("/admin./x.json").as_deref(), Some("/admin/x"));
        assert_eq!(cut_segments("/a%20/b/").as_deref(), Some("/a/b/"));
        assert_eq!(cut_segments("/.hidden/x").as_deref(), Some("//x"));
        assert_eq!(cut_segments("/plain/path"), None);
    }

    #[test]
    fn no_route() {
        let t = RouteTable::new(vec![route("admin", None, "/admin", None)]);
        assert_eq!(name(&t, "h", "/ADMIN", "GET"), Err(GatewayError::RouteNotFound));
        assert_eq!(name(&t, "h", "/", "GET"), Err(GatewayError::RouteNotFound));
        assert_eq!(name(&t, "h", "/adminx", "GET"), Err(GatewayError::RouteNotFound));
    }
}
