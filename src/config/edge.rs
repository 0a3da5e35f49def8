//! The `[cors]` section and the `[[rate_limit]]` policies, validated into a [`CorsPolicy`] and
//! a [`RateLimiter`].

use std::collections::{HashMap, HashSet};

use http::{HeaderName, Method};

use super::file::{CorsSection, RateLimitSection};
use super::units::parse_duration;
use super::Problems;
use crate::pipeline::cors::{
    CorsPolicy, CorsSettings, OriginPattern, DEFAULT_ALLOWED_METHODS, DEFAULT_MAX_AGE_SECS, MAX_MAX_AGE_SECS,
};
use crate::pipeline::ratelimit::{
    LimitKey, Policy, PolicyId, Rate, AUTH_FAILURES_NAME, RATELIMIT, RATELIMIT_POLICY, X_RATELIMIT_LIMIT,
    X_RATELIMIT_REMAINING, X_RATELIMIT_RESET,
};

/// Validates `[cors]`. `default_headers` are the request headers allowed when
/// `allowed_headers` is unset (the credential and request-id headers), `request_id_header` is
/// exposed by default.
pub(super) fn build_cors(
    section: &CorsSection,
    default_headers: &[HeaderName],
    request_id_header: &HeaderName,
    p: &mut Problems<'_>,
) -> CorsPolicy {
    let credentials = section.allow_credentials.unwrap_or(false);
    let mut origins = Vec::new();
    match section.allowed_origins.as_deref() {
        None | Some([]) => p.push(
            "cors.allowed_origins",
            "is missing or empty: no origin could use the API",
            "list the origins of your web apps, e.g. [\"https://app.example.com\"]",
        ),
        Some(list) => {
            for (i, text) in list.iter().enumerate() {
                let key = format!("cors.allowed_origins[{i}]");
                match OriginPattern::parse(text) {
                    Ok(OriginPattern::Any) if credentials => p.push(
                        &key,
                        "\"*\" together with allow_credentials = true would let any site act with the user's cookies",
                        "list the origins, or set allow_credentials = false",
                    ),
                    // Any page can send `Origin: null` from a sandboxed frame: as open as "*".
                    Ok(OriginPattern::Exact(o)) if credentials && &*o == "null" => p.push(
                        &key,
                        "\"null\" together with allow_credentials = true would let any site act with the user's cookies (any page can send Origin: null from a sandboxed frame)",
                        "remove \"null\", or set allow_credentials = false",
                    ),
                    Ok(pattern) if origins.contains(&pattern) => p.push(&key, "is listed twice", "list it once"),
                    Ok(pattern) => origins.push(pattern),
                    Err(e) => p.push(
                        &key,
                        e,
                        "write an origin such as \"https://app.example.com\" or \"https://*.example.com\"",
                    ),
                }
            }
        }
    }

    let methods = match section.allowed_methods.as_deref() {
        None => DEFAULT_ALLOWED_METHODS.iter().filter_map(|m| Method::from_bytes(m.as_bytes()).ok()).collect(),
        Some(list) => {
            let mut methods = Vec::new();
            if list.is_empty() {
                p.push(
                    "cors.allowed_methods",
                    "is empty: every preflight would be refused",
                    "list methods such as \"GET\"",
                );
            }
            for (i, m) in list.iter().enumerate() {
                let key = format!("cors.allowed_methods[{i}]");
                match Method::from_bytes(m.as_bytes()) {
                    Ok(method) if *m != m.to_ascii_uppercase() => p.push(
                        &key,
                        format!("\"{m}\" is not upper case"),
                        format!("write \"{}\"", method.as_str().to_ascii_uppercase()),
                    ),
                    Ok(method) if methods.contains(&method) => p.push(&key, "is listed twice", "list it once"),
                    Ok(method) => methods.push(method),
                    Err(_) => p.push(&key, format!("\"{m}\" is not an HTTP method"), "use GET, POST, ..."),
                }
            }
            methods
        }
    };

    let headers = match section.allowed_headers.as_deref() {
        None => Some(default_headers.to_vec()),
        Some(list) if list.iter().any(|h| h == "*") => {
            if list.len() > 1 {
                p.push("cors.allowed_headers", "mixes \"*\" with names", "use \"*\" alone, or only names");
            }
            None
        }
        Some(list) => Some(header_names(list, "cors.allowed_headers", p)),
    };

    let expose = match section.expose_headers.as_deref() {
        None => {
            let mut names = vec![request_id_header.clone()];
            names.extend([X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET, RATELIMIT, RATELIMIT_POLICY]);
            names.push(http::header::RETRY_AFTER);
            names
        }
        Some(list) if credentials && list.iter().any(|h| h == "*") => {
            p.push(
                "cors.expose_headers",
                "\"*\" is a literal header name to browsers when credentials are allowed, so it would expose nothing",
                "list the headers scripts may read",
            );
            Vec::new()
        }
        Some(list) => header_names(list, "cors.expose_headers", p),
    };

    let max_age = match section.max_age.as_deref().map(parse_duration) {
        None => DEFAULT_MAX_AGE_SECS,
        Some(Ok(d)) if d.as_secs() <= MAX_MAX_AGE_SECS => d.as_secs(),
        Some(Ok(_)) => {
            p.push("cors.max_age", "is more than 1 day, which browsers cap anyway", "use at most \"1day\"");
            DEFAULT_MAX_AGE_SECS
        }
        Some(Err(e)) => {
            p.push("cors.max_age", e, "give a duration such as \"10m\"");
            DEFAULT_MAX_AGE_SECS
        }
    };

    CorsPolicy::new(CorsSettings { origins, methods, headers, expose, credentials, max_age })
}

fn header_names(list: &[String], key: &str, p: &mut Problems<'_>) -> Vec<HeaderName> {
    let mut names = Vec::new();
    for (i, name) in list.iter().enumerate() {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) if names.contains(&h) => p.push(&format!("{key}[{i}]"), "is listed twice", "list it once"),
            Ok(h) => names.push(h),
            Err(_) => p.push(
                &format!("{key}[{i}]"),
                format!("\"{name}\" is not a header name"),
                "write a name such as \"Content-Type\"",
            ),
        }
    }
    names
}

/// Headers a client writes freely and that name a client otherwise: counting by them would let
/// a client pick a fresh budget per request.
/// (Also every `X-Forwarded-*` and `X-Auth-*` name, the API-key headers and the request id
/// header.)
const FORGEABLE_KEY_HEADERS: [&str; 8] = [
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "authorization",
    "proxy-authorization",
    "cookie",
];

/// The longest policy name: it travels in every `RateLimit` header.
const MAX_POLICY_NAME_LEN: usize = 64;

/// The validated `[[rate_limit]]` policies.
pub(super) struct Policies {
    /// In order: the [`PolicyId`] is the index.
    pub policies: Vec<Policy>,
    /// Names of valid policies.
    pub index: HashMap<String, PolicyId>,
    /// Names of policies refused here: routes naming them get no second error.
    pub refused: HashSet<String>,
}

/// Validates the `[[rate_limit]]` policies. `reserved_headers` (the API-key and request id
/// headers) may not be keys either: before authentication their values are whatever the client
/// sends.
pub(super) fn build_policies(
    sections: &[RateLimitSection],
    reserved_headers: &[HeaderName],
    p: &mut Problems<'_>,
) -> Policies {
    let mut out = Policies { policies: Vec::new(), index: HashMap::new(), refused: HashSet::new() };
    for (i, section) in sections.iter().enumerate() {
        let key = |k: &str| format!("rate_limit[{i}].{k}");
        let Some(name) = section.name.as_deref() else {
            p.push(&key("name"), "is missing", "give every [[rate_limit]] a name that routes refer to");
            continue;
        };
        if !crate::pipeline::auth::is_permission_name(name) || name.contains('\\') || name.len() > MAX_POLICY_NAME_LEN {
            p.push(
                &key("name"),
                format!("\"{name}\" is not a policy name"),
                "use up to 64 letters, digits and _ . : - such as \"per-client\"",
            );
            continue;
        }
        if name == AUTH_FAILURES_NAME {
            p.push(
                &key("name"),
                format!("\"{name}\" is the failed-authentication limit's name"),
                "choose another name",
            );
            continue;
        }
        if out.index.contains_key(name) || out.refused.contains(name) {
            p.push(&key("name"), format!("\"{name}\" names two policies"), "give each [[rate_limit]] its own name");
            continue;
        }
        let limit_key = required(section.key.as_deref(), &key("key"), KEY_FIX, LimitKey::parse, p);
        let limit_key = match limit_key {
            Some(LimitKey::Header(h))
                if FORGEABLE_KEY_HEADERS.contains(&h.as_str())
                    || h.as_str().starts_with("x-forwarded-")
                    || h.as_str().starts_with(crate::pipeline::forward::IDENTITY_HEADER_PREFIX)
                    || reserved_headers.contains(&h) =>
            {
                p.push(
                    &key("key"),
                    format!("\"header:{h}\" is whatever the client writes, so each request could pick a fresh budget"),
                    "use key = \"client\" (the address, through trusted_proxies) or \"identity\" (the verified caller)",
                );
                None
            }
            other => other,
        };
        let rate = required(section.limit.as_deref(), &key("limit"), LIMIT_FIX, Rate::parse, p);
        match (limit_key, rate) {
            (Some(limit_key), Some(rate)) => {
                out.index.insert(name.to_string(), out.policies.len());
                out.policies.push(Policy::new(name.into(), limit_key, rate));
            }
            _ => {
                out.refused.insert(name.to_string());
            }
        }
    }
    out
}

const KEY_FIX: &str = "use \"client\", \"identity\" or \"header:NAME\"";
const LIMIT_FIX: &str = "write N/second, N/minute, N/hour or N/day, e.g. \"100/minute\"";

/// A required value, parsed; a missing or bad one is reported with `fix`.
fn required<T>(
    value: Option<&str>,
    key: &str,
    fix: &str,
    parse: impl Fn(&str) -> Result<T, String>,
    p: &mut Problems<'_>,
) -> Option<T> {
    match value.map(parse) {
        Some(Ok(v)) => Some(v),
        Some(Err(e)) => {
            p.push(key, e, fix);
            None
        }
        None => {
            p.push(key, "is missing", fix);
            None
        }
    }
}

/// `server.auth_failure_limit`: a rate, or `"off"`.
pub(super) fn build_auth_failure_limit(value: Option<&str>, p: &mut Problems<'_>) -> Option<Rate> {
    match value {
        None => Some(crate::pipeline::ratelimit::DEFAULT_AUTH_FAILURE_LIMIT),
        Some("off") => None,
        Some(text) => match Rate::parse(text) {
            Ok(rate) => Some(rate),
            Err(e) => {
                p.push("server.auth_failure_limit", e, "write a rate such as \"30/minute\", or \"off\"");
                Some(crate::pipeline::ratelimit::DEFAULT_AUTH_FAILURE_LIMIT)
            }
        },
    }
}
