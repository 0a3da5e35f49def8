//! `[[route]]`: host, path prefix, methods, upstream, authentication, permissions, accepted
//! credentials, rate limits and CORS of each route.

use std::collections::{HashMap, HashSet};

use http::Method;

use super::auth::build_names;
use super::file::RouteSection;
use super::sources::Problems;
use crate::pipeline::auth::{AcceptedCredentials, AuthMode};
use crate::pipeline::host::{HostAllowList, HostPattern};
use crate::pipeline::path;
use crate::pipeline::ratelimit::{policy_header, Policy, PolicyId, MAX_POLICIES_PER_ROUTE};
use crate::pipeline::route::Route;

/// What routes refer to: the upstreams by name, the allowed hosts, the rate-limit policies,
/// whether `[cors]` exists, the JWT issuers' names, and whether any listener asks for client
/// certificates.
pub(super) struct RouteRefs<'a> {
    pub upstreams: &'a HashMap<String, usize>,
    pub hosts: &'a HostAllowList,
    pub policies: &'a [Policy],
    pub policy_index: &'a HashMap<String, PolicyId>,
    pub refused_policies: &'a HashSet<String>,
    pub cors: bool,
    pub issuers: &'a [&'a str],
    pub client_certificates: bool,
}

/// A route's `credentials`: `api_key`, `mtls`, `jwt` (any issuer) or `jwt:NAME` (an
/// `[[auth.jwt]]` by name).
fn build_credentials(
    names: Option<&[String]>,
    key: &str,
    auth: AuthMode,
    edge: &RouteRefs<'_>,
    p: &mut Problems<'_>,
) -> Option<AcceptedCredentials> {
    let names = names?;
    if auth == AuthMode::None {
        p.push(key, "is set, but auth = \"none\" never looks at credentials", "set auth = \"required\" or remove it");
        return None;
    }
    if names.is_empty() {
        p.push(
            key,
            "is empty: no caller could satisfy this route",
            "list the kinds it accepts, or remove it to accept any",
        );
        return None;
    }
    let mut accepted = AcceptedCredentials::default();
    for (j, name) in names.iter().enumerate() {
        let item = format!("{key}[{j}]");
        let fresh = match name.as_str() {
            "api_key" => !std::mem::replace(&mut accepted.api_key, true),
            "jwt" => !std::mem::replace(&mut accepted.any_jwt, true),
            "mtls" => {
                if !edge.client_certificates {
                    p.push(
                        &item,
                        "is \"mtls\", but no [listener.tls] has client_ca, so no caller has a client certificate",
                        "add client_ca to a TLS listener, or remove \"mtls\"",
                    );
                }
                !std::mem::replace(&mut accepted.mtls, true)
            }
            other => match other.strip_prefix("jwt:") {
                Some(issuer) => match edge.issuers.iter().position(|n| *n == issuer) {
                    Some(index) if accepted.jwt_issuers.contains(&index) => false,
                    Some(index) => {
                        accepted.jwt_issuers.push(index);
                        true
                    }
                    None => {
                        p.push(
                            &item,
                            format!("no [[auth.jwt]] is named \"{issuer}\""),
                            format!("use one of {:?}, or add the issuer", edge.issuers),
                        );
                        true
                    }
                },
                None => {
                    p.push(
                        &item,
                        format!("\"{other}\" is not a kind of credential"),
                        "use \"api_key\", \"jwt\", \"jwt:ISSUER_NAME\" or \"mtls\"",
                    );
                    true
                }
            },
        };
        if !fresh {
            p.push(&item, format!("\"{name}\" is listed twice"), "list it once");
        }
    }
    if accepted.any_jwt && !accepted.jwt_issuers.is_empty() {
        p.push(
            key,
            "lists \"jwt\" (any issuer) and \"jwt:NAME\" together",
            "keep \"jwt\", or only the issuers by name",
        );
    }
    Some(accepted)
}

/// A route's `rate_limits`, split into the policies checked before and after authentication.
/// On a route with `auth = "none"` nobody is ever identified: its identity-keyed policies count
/// by address, and run with the others, before the (absent) authentication.
fn route_limits(
    names: Option<&[String]>,
    key: &str,
    auth: AuthMode,
    edge: &RouteRefs<'_>,
    p: &mut Problems<'_>,
) -> (Vec<PolicyId>, Vec<PolicyId>) {
    let (mut before, mut after) = (Vec::new(), Vec::new());
    let names = names.unwrap_or(&[]);
    if names.len() > MAX_POLICIES_PER_ROUTE {
        p.push(
            key,
            format!("names {} policies; a route may have at most {MAX_POLICIES_PER_ROUTE}", names.len()),
            "keep the ones that bind: the tightest policy of each key is enough",
        );
        return (before, after);
    }
    for (j, name) in names.iter().enumerate() {
        match edge.policy_index.get(name) {
            Some(&id) if before.contains(&id) || after.contains(&id) => {
                p.push(&format!("{key}[{j}]"), format!("\"{name}\" is listed twice"), "list it once")
            }
            Some(&id) if edge.policies[id].key.needs_identity() && auth != AuthMode::None => after.push(id),
            Some(&id) => before.push(id),
            None if edge.refused_policies.contains(name) => {}
            None => {
                let mut known: Vec<&str> = edge.policy_index.keys().map(String::as_str).collect();
                known.sort_unstable();
                p.push(
                    &format!("{key}[{j}]"),
                    format!("no [[rate_limit]] is named \"{name}\""),
                    format!("use one of {known:?} or add the policy"),
                );
            }
        }
    }
    (before, after)
}

/// Validates the `[[route]]`s against what they refer to.
pub(super) fn build(sections: &[RouteSection], edge: &RouteRefs<'_>, p: &mut Problems<'_>) -> Vec<Route> {
    let (upstream_index, hosts) = (edge.upstreams, edge.hosts);
    if sections.is_empty() {
        p.push(
            "route",
            "no [[route]] is configured: every request would be 404",
            "add a [[route]] with a path and an upstream",
        );
    }
    let mut routes: Vec<Route> = Vec::new();
    let mut names = HashSet::new();
    for (i, r) in sections.iter().enumerate() {
        let key = |k: &str| format!("route[{i}].{k}");
        let Some(path) = r.path.as_deref() else {
            p.push(&key("path"), "is missing", "give the path prefix this route serves, e.g. \"/api/v1/models\"");
            continue;
        };
        match path::normalize(path) {
            Ok(canonical) if canonical == path && (path == "/" || !path.ends_with('/')) => {}
            Ok(canonical) => {
                let fix = canonical.trim_end_matches('/');
                let fix = if fix.is_empty() { "/" } else { fix };
                p.push(&key("path"), format!("\"{path}\" is not canonical"), format!("write \"{fix}\""));
                continue;
            }
            Err(e) => {
                p.push(
                    &key("path"),
                    format!("\"{path}\" is not a valid path ({})", e.message()),
                    "write a path such as \"/api/v1\"",
                );
                continue;
            }
        }
        let name = r.name.clone().unwrap_or_else(|| path.to_string());
        if !names.insert(name.clone()) {
            p.push(&key("name"), format!("\"{name}\" names two routes"), "give each [[route]] its own name");
        }
        let host = r.host.as_deref().and_then(|h| match HostPattern::parse(h) {
            Ok(HostPattern::Any) => {
                p.push(
                    &key("host"),
                    "\"*\" would make this route shadow routes without a host",
                    "remove the host key to match any host",
                );
                None
            }
            Ok(pattern) if !hosts.covers(&pattern) => {
                p.push(
                    &key("host"),
                    format!("\"{h}\" is not in server.allowed_hosts, so no request can reach this route"),
                    "add it to server.allowed_hosts",
                );
                None
            }
            Ok(pattern) => Some(pattern),
            Err(e) => {
                p.push(&key("host"), e, "write a host name or \"*.example.com\"");
                None
            }
        });
        let methods = build_methods(r.methods.as_deref(), &key("methods"), p);
        let upstream = match r.upstream.as_deref() {
            None => {
                p.push(&key("upstream"), "is missing", "name the [[upstream]] this route forwards to");
                None
            }
            Some(u) => match upstream_index.get(u) {
                Some(&idx) => Some(idx),
                None => {
                    let known: Vec<&str> = upstream_index.keys().map(String::as_str).collect();
                    p.push(
                        &key("upstream"),
                        format!("no [[upstream]] is named \"{u}\""),
                        format!("use one of {known:?} or add the upstream"),
                    );
                    None
                }
            },
        };
        let auth = match r.auth.as_deref() {
            None | Some("required") => AuthMode::Required,
            Some("optional") => AuthMode::Optional,
            Some("none") => AuthMode::None,
            Some(other) => {
                p.push(
                    &key("auth"),
                    format!("\"{other}\" is not an auth mode"),
                    "use \"required\", \"optional\" or \"none\"",
                );
                AuthMode::Required
            }
        };
        let permissions = build_names(r.permissions.as_deref(), &key("permissions"), "permission", p);
        if auth == AuthMode::None && !permissions.is_empty() {
            p.push(
                &key("permissions"),
                "needs a caller, but auth = \"none\" never looks at credentials",
                "set auth = \"required\" or remove the permissions",
            );
        }
        let credentials = build_credentials(r.credentials.as_deref(), &key("credentials"), auth, edge, p);
        let (limits_before_auth, limits_after_auth) =
            route_limits(r.rate_limits.as_deref(), &key("rate_limits"), auth, edge, p);
        let cors = match r.cors {
            Some(true) if !edge.cors => {
                p.push(
                    &key("cors"),
                    "is true, but there is no [cors] section",
                    "add a [cors] section, or remove the key",
                );
                false
            }
            Some(on) => on && edge.cors,
            None => edge.cors,
        };
        let mut ids = limits_before_auth.clone();
        ids.extend(&limits_after_auth);
        let ratelimit_policy = policy_header(edge.policies, &ids);
        let Some(upstream) = upstream else { continue };
        let route = Route {
            name: name.into(),
            host,
            path: path.into(),
            methods,
            upstream,
            auth,
            permissions,
            credentials,
            cors,
            limits_before_auth,
            limits_after_auth,
            ratelimit_policy,
        };
        if let Some(other) = routes.iter().find(|o| overlaps(o, &route)) {
            p.push(
                &key("path"),
                format!("route \"{}\" already serves the same host, path and methods", other.name),
                "give the routes different methods, hosts or paths",
            );
        }
        routes.push(route);
    }
    routes
}

fn build_methods(methods: Option<&[String]>, key: &str, p: &mut Problems<'_>) -> Option<Vec<Method>> {
    let methods = methods?;
    if methods.is_empty() {
        p.push(key, "is empty: no request could use this route", "list methods, or remove the key to allow all");
    }
    let mut out = Vec::new();
    for (j, m) in methods.iter().enumerate() {
        let upper = m.to_ascii_uppercase();
        if *m != upper {
            // Methods are case-sensitive: "get" is not GET, and a route for it would never match.
            p.push(&format!("{key}[{j}]"), format!("\"{m}\" is not upper case"), format!("write \"{upper}\""));
            continue;
        }
        match Method::from_bytes(m.as_bytes()) {
            Ok(method) if !out.contains(&method) => out.push(method),
            Ok(_) => p.push(&format!("{key}[{j}]"), format!("\"{m}\" is listed twice"), "list it once"),
            Err(_) => p.push(&format!("{key}[{j}]"), format!("\"{m}\" is not an HTTP method"), "use GET, POST, ..."),
        }
    }
    Some(out)
}

/// Whether two routes would claim the same request.
fn overlaps(a: &Route, b: &Route) -> bool {
    a.path == b.path
        && a.host == b.host
        && match (&a.methods, &b.methods) {
            (Some(x), Some(y)) => x.iter().any(|m| y.contains(m)),
            _ => true,
        }
}
