//! CORS at the edge (`[cors]`): preflights answered by the gateway, and the `Access-Control-*`
//! headers of actual responses decided by the gateway alone.
//!
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) on a route with
//!   CORS on is answered here with 204, before rate limits and authentication (a browser sends
//!   no credentials with it), and never reaches the upstream. An origin, method or header that is
//!   not allowed gets 403 `CORS_REJECTED` with no `Access-Control-Allow-*` header.
//! - An actual request from an allowed origin gets `Access-Control-Allow-Origin` (the origin
//!   itself; `*` only when any origin is allowed and credentials are not), `-Expose-Headers` and
//!   `-Allow-Credentials`, on upstream responses and on the gateway's own errors alike (so a
//!   script can read a 401 or 429). Every `Access-Control-*` header an upstream sent is removed
//!   first, so the gateway and the upstream never disagree; other origins get none at all.
//! - Every response on a CORS route carries `Vary: Origin`, so a shared cache never serves one
//!   origin's answer to another.
//!
//! Origins are compared as browsers serialise them (RFC 6454: lower-case `scheme://host[:port]`,
//! no default port, no path). `https://*.example.com` matches any depth of subdomain over the
//! same scheme and port, never `example.com` itself, `evilexample.com`, `example.com.evil.net` or
//! `https://example.com.`. `null` (sandboxed frames, `file:` pages) matches only when listed.

use std::collections::HashSet;

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::error::{CorsRejection, GatewayError};

/// The longest `cors.max_age` (Firefox's cap; Chromium caps at two hours).
pub const MAX_MAX_AGE_SECS: u64 = 86_400;
/// The most header names a preflight may ask for.
const MAX_REQUESTED_HEADERS: usize = 64;

/// One entry of `cors.allowed_origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `*`: any origin (never with credentials).
    Any,
    /// An exact serialised origin, or `null`.
    Exact(Box<str>),
    /// `scheme://*.suffix[:port]`.
    Subdomains {
        /// `https://`, `http://`.
        scheme: Box<str>,
        /// `.example.com`.
        suffix: Box<str>,
        /// `:8443`, or empty.
        port: Box<str>,
    },
}

impl OriginPattern {
    /// Parses an entry as written in the configuration; the error says what to write instead.
    pub fn parse(text: &str) -> Result<OriginPattern, String> {
        if text == "*" {
            return Ok(OriginPattern::Any);
        }
        if text == "null" {
            return Ok(OriginPattern::Exact("null".into()));
        }
        let Some(origin) = Origin::parse(text) else {
            let lower = text.to_ascii_lowercase();
            if let Some(origin) = Origin::parse(&lower).filter(|_| lower != text) {
                let fixed = if origin.is_default_port() { &lower[..lower.len() - origin.port.len()] } else { &lower };
                return Err(format!("\"{text}\" is not lower case, as browsers send it: write \"{fixed}\""));
            }
            if let Some(trimmed) = text.strip_suffix('/').filter(|t| Origin::parse(t).is_some()) {
                return Err(format!("\"{text}\" has a path; an origin is written without one, as \"{trimmed}\""));
            }
            return Err(format!("\"{text}\" is not an origin such as \"https://app.example.com\""));
        };
        if origin.is_default_port() {
            let without = &text[..text.len() - origin.port.len()];
            return Err(format!(
                "\"{text}\" names the scheme's default port, which browsers leave out: write \"{without}\""
            ));
        }
        match origin.host.strip_prefix("*.") {
            Some(suffix) if !suffix.contains('*') && suffix.contains('.') => Ok(OriginPattern::Subdomains {
                scheme: origin.scheme.into(),
                suffix: format!(".{suffix}").into(),
                port: origin.port.into(),
            }),
            Some(_) => Err(format!(
                "\"{text}\": a wildcard stands for subdomains of a registered name, as in https://*.example.com"
            )),
            None if origin.host.contains('*') => {
                Err(format!("\"{text}\": a wildcard may only be the first label, as in https://*.example.com"))
            }
            None => Ok(OriginPattern::Exact(text.into())),
        }
    }
}

/// A serialised origin, split (borrowed from the header or config text).
struct Origin<'a> {
    /// With `://`.
    scheme: &'a str,
    host: &'a str,
    /// With `:`, or empty.
    port: &'a str,
}

impl<'a> Origin<'a> {
    /// `scheme://host[:port]` and nothing else; `None` for anything a browser would not send.
    fn parse(text: &'a str) -> Option<Origin<'a>> {
        // `find(':')` and a prefix test: a substring search (`find("://")`) costs more to set up
        // than this whole parse.
        let colon = text.find(':')?;
        if !text[colon..].starts_with("://") {
            return None;
        }
        let split = colon + 3;
        let (scheme, rest) = text.split_at(split);
        if !scheme[..split - 3].bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
            || split == 3
        {
            return None;
        }
        let (host, port) = match rest.rfind(':') {
            Some(i) if !rest.starts_with('[') || rest[..i].ends_with(']') => rest.split_at(i),
            _ => (rest, ""),
        };
        if !port.is_empty()
            && (port.len() < 2
                || port.len() > 6
                || !port[1..].bytes().all(|b| b.is_ascii_digit())
                || &port[1..2] == "0")
        {
            return None;
        }
        let valid_label =
            |l: &str| !l.is_empty() && (l == "*" || l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        let valid_host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            !v6.is_empty() && v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        } else {
            // Lower-case letters, digits and '-' in non-empty labels: no trailing dot, no path,
            // no userinfo, no percent-encoding.
            host.len() <= 253 && host.split('.').all(valid_label) && !host.bytes().any(|b| b.is_ascii_uppercase())
        };
        valid_host.then_some(Origin { scheme, host, port })
    }

    fn is_default_port(&self) -> bool {
        matches!((self.scheme, self.port), ("https://", ":443") | ("http://", ":80"))
    }
}

/// The validated `[cors]` section, with its header values rendered once.
#[derive(Debug)]
pub struct CorsPolicy {
    any_origin: bool,
    exact: HashSet<Box<str>>,
    subdomains: Vec<OriginPattern>,
    methods: Vec<Method>,
    allow_methods: HeaderValue,
    /// Lower-case names; `None`: any header.
    headers: Option<Vec<HeaderName>>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

/// The settings [`CorsPolicy::new`] is built from, validated by the config loader.
#[derive(Debug)]
pub struct CorsSettings {
    /// Allowed origins.
    pub origins: Vec<OriginPattern>,
    /// Methods a preflight may ask for.
    pub methods: Vec<Method>,
    /// Request headers a preflight may ask for; `None`: any.
    pub headers: Option<Vec<HeaderName>>,
    /// Response headers scripts may read.
    pub expose: Vec<HeaderName>,
    /// `Access-Control-Allow-Credentials: true`.
    pub credentials: bool,
    /// Preflight cache lifetime in seconds.
    pub max_age: u64,
}

impl CorsPolicy {
    /// Renders the header values once. The settings must be valid (no `*` origin with
    /// credentials: the config loader refuses it).
    pub fn new(settings: CorsSettings) -> CorsPolicy {
        let mut policy = CorsPolicy {
            any_origin: false,
            exact: HashSet::new(),
            subdomains: Vec::new(),
            allow_methods: join(settings.methods.iter().map(Method::as_str)),
            methods: settings.methods,
            headers: settings.headers,
            expose: (!settings.expose.is_empty()).then(|| join(settings.expose.iter().map(HeaderName::as_str))),
            credentials: settings.credentials,
            max_age: HeaderValue::from(settings.max_age),
        };
        for origin in settings.origins {
            match origin {
                OriginPattern::Any => policy.any_origin = true,
                OriginPattern::Exact(o) => {
                    policy.exact.insert(o);
                }
                pattern => policy.subdomains.push(pattern),
            }
        }
        policy
    }

    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, or `None` when that
    /// origin is not allowed (or there is none).
    pub fn allow_origin(&self, req: &RequestHeader) -> Option<HeaderValue> {
        let origin = single(req, &ORIGIN)?;
        let text = origin.to_str().ok()?;
        if self.exact.contains(text) || self.matches_subdomain(text) {
            return Some(origin.clone());
        }
        // `*` with credentials is refused at load; without them `*` is the honest answer. It
        // never covers `null` (sandboxed frames, `file:`), which must be listed.
        (self.any_origin && text != "null").then(|| HeaderValue::from_static("*"))
    }

    fn matches_subdomain(&self, text: &str) -> bool {
        if self.subdomains.is_empty() {
            return false;
        }
        let Some(origin) = Origin::parse(text) else { return false };
        if origin.host.contains('*') {
            return false;
        }
        self.subdomains.iter().any(|p| match p {
            OriginPattern::Subdomains { scheme, suffix, port } => {
                origin.host.len() > suffix.len()
                    && short_eq(scheme.as_bytes(), origin.scheme.as_bytes())
                    && short_eq(port.as_bytes(), origin.port.as_bytes())
                    && short_eq(suffix.as_bytes(), &origin.host.as_bytes()[origin.host.len() - suffix.len()..])
            }
            _ => false,
        })
    }

    /// When `req` is a preflight, the method it asks about (`None` when unreadable: a
    /// preflight still, refused as a method).
    pub fn preflight_method(req: &RequestHeader) -> Option<Option<Method>> {
        if req.method != Method::OPTIONS || req.headers.get(ORIGIN).is_none() {
            return None;
        }
        let mut asked = req.headers.get_all(ACCESS_CONTROL_REQUEST_METHOD).iter();
        let method = asked.next()?;
        if asked.next().is_some() {
            return Some(None);
        }
        Some(Method::from_bytes(method.as_bytes()).ok())
    }

    /// Answers a preflight asking for `method`: 204 with the allowed origin, methods and the
    /// headers asked for, or 403 `CORS_REJECTED`.
    pub fn answer_preflight(&self, req: &RequestHeader, method: &Method) -> Result<ResponseHeader, GatewayError> {
        let origin = self.allow_origin(req).ok_or(GatewayError::CorsRejected(CorsRejection::Origin))?;
        if !self.methods.contains(method) {
            return Err(GatewayError::CorsRejected(CorsRejection::Method));
        }
        let allow_headers = self.allowed_request_headers(req)?;
        let reject = |_| GatewayError::Internal;
        let mut resp = ResponseHeader::build_no_case(StatusCode::NO_CONTENT, Some(8)).map_err(reject)?;
        resp.insert_header(ACCESS_CONTROL_ALLOW_ORIGIN, origin).map_err(reject)?;
        resp.insert_header(ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone()).map_err(reject)?;
        if let Some(headers) = allow_headers {
            resp.insert_header(ACCESS_CONTROL_ALLOW_HEADERS, headers).map_err(reject)?;
        }
        if self.credentials {
            resp.insert_header(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true")).map_err(reject)?;
        }
        resp.insert_header(ACCESS_CONTROL_MAX_AGE, self.max_age.clone()).map_err(reject)?;
        Ok(resp)
    }

    /// The `Access-Control-Allow-Headers` answer: the names asked for, each allowed, or 403.
    fn allowed_request_headers(&self, req: &RequestHeader) -> Result<Option<HeaderValue>, GatewayError> {
        let rejected = GatewayError::CorsRejected(CorsRejection::Headers);
        let mut asked = Vec::new();
        for value in req.headers.get_all(ACCESS_CONTROL_REQUEST_HEADERS) {
            let value = value.to_str().map_err(|_| rejected.clone())?;
            for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| rejected.clone())?;
                if asked.len() == MAX_REQUESTED_HEADERS {
                    return Err(rejected);
                }
                if self.headers.as_ref().is_some_and(|allowed| !allowed.contains(&name)) {
                    return Err(rejected);
                }
                asked.push(name);
            }
        }
        Ok((!asked.is_empty()).then(|| join(asked.iter().map(HeaderName::as_str))))
    }

    /// Sets the CORS headers of an actual response: removes the upstream's, then adds the
    /// gateway's for an allowed origin (`allow_origin`), and `Vary: Origin` always.
    pub fn decorate(&self, headers: &mut HeaderMap, allow_origin: Option<&HeaderValue>) {
        strip_access_control(headers);
        if let Some(origin) = allow_origin {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            if self.credentials {
                headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
            }
            if let Some(expose) = &self.expose {
                headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
            }
        }
        add_vary(headers, HeaderValue::from_static("Origin"));
    }
}

/// Equality of short byte strings, inline. `==` on slices calls libc `memcmp`, whose call and
/// vector set-up cost more than these few bytes (measured: 180 ns of a 220 ns origin match).
fn short_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// The `Vary` of preflight answers, accepted or refused.
pub fn preflight_vary() -> HeaderValue {
    HeaderValue::from_static("Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
}

/// Adds `value` to `Vary`, unless the response already varies on everything.
pub fn add_vary(headers: &mut HeaderMap, value: HeaderValue) {
    if headers.get_all(VARY).iter().any(|v| v.as_bytes().trim_ascii() == b"*") {
        return;
    }
    headers.append(VARY, value);
}

/// Removes every `Access-Control-*` response header (the common response has none: nothing is
/// allocated then).
fn strip_access_control(headers: &mut HeaderMap) {
    let upstreams = |n: &HeaderName| n.as_str().starts_with("access-control-");
    if !headers.keys().any(upstreams) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| upstreams(n)).cloned().collect();
    for name in names {
        headers.remove(&name);
    }
}

/// The only value of a header; `None` when absent or repeated (a browser sends one).
fn single<'r>(req: &'r RequestHeader, name: &HeaderName) -> Option<&'r HeaderValue> {
    let mut values = req.headers.get_all(name).iter();
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

/// `a, b, c` as a header value (the parts are header or method names: always valid).
fn join<'a>(parts: impl Iterator<Item = &'a str>) -> HeaderValue {
    let text = parts.collect::<Vec<_>>().join(", ");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// What CORS does to a request's response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CorsState {
    /// Nothing: no `[cors]`, or a route with `cors = false`.
    #[default]
    Off,
    /// A preflight: answered by the gateway, never decorated as an actual response.
    Preflight,
    /// An actual request: the `Access-Control-Allow-Origin` value when its origin is allowed.
    Actual(Option<HeaderValue>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], credentials: bool) -> CorsPolicy {
        CorsPolicy::new(CorsSettings {
            origins: origins.iter().map(|o| OriginPattern::parse(o).unwrap()).collect(),
            methods: vec![Method::GET, Method::POST],
            headers: Some(vec![HeaderName::from_static("authorization"), HeaderName::from_static("content-type")]),
            expose: vec![HeaderName::from_static("x-request-id")],
            credentials,
            max_age: 600,
        })
    }

    fn request(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build(method, b"/x", None).unwrap();
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    fn allowed(p: &CorsPolicy, origin: &str) -> Option<String> {
        p.allow_origin(&request("GET", &[("origin", origin)])).map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn exact_and_wildcard_origins() {
        let p = policy(&["https://app.example.com", "https://*.example.com", "http://localhost:3000"], true);
        for ok in
            ["https://app.example.com", "https://a.example.com", "https://a.b.example.com", "http://localhost:3000"]
        {
            assert_eq!(allowed(&p, ok).as_deref(), Some(ok), "{ok}");
        }
        for bad in [
            "https://example.com",
            "https://evilexample.com",
            "https://evil-example.com",
            "https://example.com.evil.net",
            "https://a.example.com.evil.net",
            "https://example.com.",
            "https://a.example.com.",
            "http://a.example.com",
            "https://a.example.com:8443",
            "https://A.example.com",
            "HTTPS://app.example.com",
            "https://app.example.com/",
            "https://user@a.example.com",
            "https://*.example.com",
            "https://.example.com",
            "https://a..example.com",
            "https://a.example.com%2f.evil.net",
            "http://localhost:3001",
            "http://localhost",
            "null",
            "",
        ] {
            assert_eq!(allowed(&p, bad), None, "{bad}");
        }
    }

    #[test]
    fn null_and_any() {
        assert_eq!(allowed(&policy(&["null"], false), "null").as_deref(), Some("null"));
        let any = policy(&["*"], false);
        assert_eq!(allowed(&any, "https://whatever.test").as_deref(), Some("*"));
        assert_eq!(allowed(&any, "null"), None, "null must be listed, * does not cover it");
        assert_eq!(any.allow_origin(&request("GET", &[])), None);
    }

    #[test]
    fn config_patterns() {
        assert!(OriginPattern::parse("https://app.example.com/").unwrap_err().contains("\"https://app.example.com\""));
        assert!(OriginPattern::parse("https://App.example.com").is_err());
        assert!(OriginPattern::parse("https://app.example.com:443").is_err());
        assert!(OriginPattern::parse("https://*.com").is_err());
        assert!(OriginPattern::parse("https://a.*.example.com").is_err());
        assert!(OriginPattern::parse("https://*example.com").is_err());
        assert!(OriginPattern::parse("app.example.com").is_err());
        assert_eq!(
            OriginPattern::parse("https://*.example.com:8443"),
            Ok(OriginPattern::Subdomains {
                scheme: "https://".into(),
                suffix: ".example.com".into(),
                port: ":8443".into()
            })
        );
    }

    #[test]
    fn preflight_answers() {
        let p = policy(&["https://app.example.com"], true);
        let pre = |origin: &str, method: &str, headers: &str| {
            let req = request(
                "OPTIONS",
                &[
                    ("origin", origin),
                    ("access-control-request-method", method),
                    ("access-control-request-headers", headers),
                ],
            );
            let m = CorsPolicy::preflight_method(&req).unwrap().unwrap();
            p.answer_preflight(&req, &m)
        };
        let ok = pre("https://app.example.com", "POST", "content-type,authorization").unwrap();
        assert_eq!(ok.status, 204);
        assert_eq!(ok.headers["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(ok.headers["access-control-allow-methods"], "GET, POST");
        assert_eq!(ok.headers["access-control-allow-headers"], "content-type, authorization");
        assert_eq!(ok.headers["access-control-allow-credentials"], "true");
        assert_eq!(ok.headers["access-control-max-age"], "600");
        assert_eq!(
            pre("https://evil.example.com", "POST", "").unwrap_err(),
            GatewayError::CorsRejected(CorsRejection::Origin)
        );
        assert_eq!(
            pre("https://app.example.com", "DELETE", "").unwrap_err(),
            GatewayError::CorsRejected(CorsRejection::Method)
        );
        assert_eq!(
            pre("https://app.example.com", "GET", "x-secret").unwrap_err(),
            GatewayError::CorsRejected(CorsRejection::Headers)
        );
        let no_headers = pre("https://app.example.com", "GET", "").unwrap();
        assert!(no_headers.headers.get("content-length").is_none(), "a 204 has no Content-Length");
        assert!(no_headers.headers.get("access-control-allow-headers").is_none());
    }

    #[test]
    fn not_every_options_is_a_preflight() {
        assert!(CorsPolicy::preflight_method(&request("OPTIONS", &[("origin", "https://a.test")])).is_none());
        assert!(
            CorsPolicy::preflight_method(&request("OPTIONS", &[("access-control-request-method", "GET")])).is_none()
        );
        let get = request("GET", &[("origin", "https://a.test"), ("access-control-request-method", "GET")]);
        assert!(CorsPolicy::preflight_method(&get).is_none());
        let garbage = request("OPTIONS", &[("origin", "https://a.test"), ("access-control-request-method", "G T")]);
        assert_eq!(CorsPolicy::preflight_method(&garbage), Some(None));
    }

    #[test]
    fn actual_responses_carry_only_the_gateways_headers() {
        let p = policy(&["https://app.example.com"], true);
        let mut headers = HeaderMap::new();
        headers.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        headers.insert("access-control-allow-methods", HeaderValue::from_static("PUT"));
        headers.insert("vary", HeaderValue::from_static("Accept-Encoding"));
        p.decorate(&mut headers, Some(&HeaderValue::from_static("https://app.example.com")));
        assert_eq!(headers["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(headers["access-control-expose-headers"], "x-request-id");
        assert!(headers.get("access-control-allow-methods").is_none());
        let vary: Vec<_> = headers.get_all("vary").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(vary, ["Accept-Encoding", "Origin"]);

        let mut other = HeaderMap::new();
        other.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        p.decorate(&mut other, None);
        assert!(other.keys().all(|k| !k.as_str().starts_with("access-control-")));

        let mut everything = HeaderMap::new();
        everything.insert("vary", HeaderValue::from_static("*"));
        p.decorate(&mut everything, None);
        let vary: Vec<_> = everything.get_all("vary").iter().collect();
        assert_eq!(vary, ["*"]);
    }
}
