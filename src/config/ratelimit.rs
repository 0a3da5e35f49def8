//! `[[rate_limit]]` policies and `server.auth_failure_limit`, validated into the policies the
//! [`crate::pipeline::ratelimit::RateLimiter`] counts.

use std::collections::{HashMap, HashSet};

use http::HeaderName;

use super::file::RateLimitSection;
use super::sources::Problems;
use crate::pipeline::forward;
use crate::pipeline::ratelimit::{LimitKey, Policy, PolicyId, Rate, AUTH_FAILURES_NAME};

/// `server.auth_failure_limit` when unset: failed authentications per client address.
pub const DEFAULT_AUTH_FAILURE_LIMIT: Rate = Rate { count: 30, period: 60 };

/// Headers a client writes freely that name a client otherwise, besides those the gateway owns
/// ([`forward::owned_by_gateway`], which takes `X-Forwarded-*`, `X-Real-IP` and the like): counting
/// by them would let a client pick a fresh budget per request. (Also the API-key headers and
/// the request id header.)
const FORGEABLE_KEY_HEADERS: [&str; 2] = ["authorization", "cookie"];

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
                    || forward::owned_by_gateway(h.as_str())
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
        None => Some(DEFAULT_AUTH_FAILURE_LIMIT),
        Some("off") => None,
        Some(text) => match Rate::parse(text) {
            Ok(rate) => Some(rate),
            Err(e) => {
                p.push("server.auth_failure_limit", e, "write a rate such as \"30/minute\", or \"off\"");
                Some(DEFAULT_AUTH_FAILURE_LIMIT)
            }
        },
    }
}
