//! `[cors]`, validated into the [`CorsPolicy`] the preflight and response stages read.

use http::{HeaderName, Method};

use super::file::CorsSection;
use super::sources::Problems;
use super::units::parse_duration;
use crate::pipeline::cors::{CorsPolicy, CorsSettings, OriginPattern, MAX_MAX_AGE_SECS};
use crate::pipeline::ratelimit::{
    RATELIMIT, RATELIMIT_POLICY, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET,
};

/// `cors.max_age` when unset: ten minutes of preflight caching.
pub const DEFAULT_MAX_AGE_SECS: u64 = 600;
/// `cors.allowed_methods` when unset.
pub const DEFAULT_ALLOWED_METHODS: [&str; 3] = ["GET", "HEAD", "POST"];

/// Validates `[cors]`. `default_headers` are the request headers allowed when
/// `allowed_headers` is unset (the credential and request-id headers), `request_id_header` is
/// exposed by default.
pub(super) fn build(
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
