//! Header hygiene: the request as the upstream receives it.
//!
//! Set what the gateway verified, strip what the client sent in its place:
//! - hop-by-hop headers (RFC 9110 §7.6.1) and every header the client listed in `Connection` are
//!   removed, except the framing headers Pingora itself manages;
//! - every client-sent `X-Auth-*` header is removed on every route: only the gateway speaks for
//!   the identity of a request. So is every header with `_` in its name (as nginx does by
//!   default): CGI-style servers (Rack/Puma, gunicorn, uWSGI) map `X_Auth_Subject` and
//!   `X-Auth-Subject` to the same variable, so an underscore spelling would smuggle a forged
//!   identity past a dash-only check;
//! - headers that make backends act on another method or path (`X-HTTP-Method-Override`,
//!   `X-Original-URL`, ...) are removed: the route's rules were checked for this method and path;
//! - `X-Forwarded-For` gets the peer appended; what the client sent before it is kept only when
//!   the peer is a trusted proxy. So are `X-Forwarded-Proto`, `X-Forwarded-Host` and
//!   `Forwarded`, and only when they check out: front proxies commonly pass a client's own
//!   `X-Forwarded-Host` through, and backends build password-reset links and pick tenants from
//!   it. A forwarded host must be an authority naming the host the request was routed on (so
//!   it is also allowed), a forwarded scheme `http` or `https`, and `Forwarded` must read as
//!   RFC 7239 says with such `host` and `proto` values; otherwise the gateway writes its own
//!   value (from an untrusted peer: its own `X-Forwarded-*`, and no `Forwarded`);
//! - `Host` is the validated host, the request-target is origin-form with the canonical path,
//!   and the request id is set;
//! - the verified identity is set as `X-Auth-*` headers, and the credential itself
//!   (`Authorization`, the API-key headers) is removed unless `auth.forward_credentials`.

use std::net::IpAddr;

use http::header::{AUTHORIZATION, CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use pingora::http::RequestHeader;

use crate::error::GatewayError;
use crate::pipeline::admit::Admission;
use crate::pipeline::auth::Identity;
use crate::pipeline::client::{canonical, TrustedProxies};
use crate::pipeline::host::parse_authority;
use crate::pipeline::Runtime;

/// Headers that describe one connection, never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// The prefix of the identity headers only the gateway may set.
pub const IDENTITY_HEADER_PREFIX: &str = "x-auth-";

/// Headers that make common frameworks serve another method or path than the one the route
/// rules were checked for (Rack::MethodOverride, IIS URL Rewrite, Symfony, Zend, ...).
const ROUTING_OVERRIDES: [&str; 6] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
    "x-original-method",
];

/// Client-address and proxy-path headers believed only from trusted proxies.
const PROXY_ASSERTIONS: [&str; 8] = [
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
];

/// Other spellings of the forwarded scheme and host, which frameworks read before or instead of
/// `X-Forwarded-Proto` and `X-Forwarded-Host` (Rack reads `X-Forwarded-Ssl: on` first): removed
/// from everyone, trusted proxies included, so that the two checked headers are the only say.
const FORWARDED_ALIASES: [&str; 10] = [
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-forwarded-protocol",
    "x-proxied-https",
    "x-arr-ssl",
    "front-end-https",
    "x-url-scheme",
    "x-host",
    "x-original-host",
    "x-http-host-override",
];

/// Client certificates as a TLS-terminating proxy passes them on (RFC 9440, Envoy's XFCC,
/// nginx and HAProxy conventions), which backends take for a verified mTLS identity: removed
/// from everyone. The gateway verifies client certificates itself and says who the caller is
/// in `X-Auth-*`.
const CLIENT_CERTIFICATES: [&str; 9] = [
    "client-cert",
    "client-cert-chain",
    "x-forwarded-client-cert",
    "x-client-cert",
    "x-ssl-client-cert",
    "x-ssl-client-verify",
    "x-ssl-client-dn",
    "x-ssl-client-s-dn",
    "ssl-client-cert",
];

const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_AUTH_SUBJECT: HeaderName = HeaderName::from_static("x-auth-subject");
const X_AUTH_METHOD: HeaderName = HeaderName::from_static("x-auth-method");
const X_AUTH_KEY_ID: HeaderName = HeaderName::from_static("x-auth-key-id");
const X_AUTH_ISSUER: HeaderName = HeaderName::from_static("x-auth-issuer");
const X_AUTH_PERMISSIONS: HeaderName = HeaderName::from_static("x-auth-permissions");

/// What the forward stage needs to know about the request beyond its headers.
pub struct Forwarding<'a> {
    /// The TCP peer.
    pub peer: IpAddr,
    /// `"http"` or `"https"`: how the client reached the gateway.
    pub scheme: &'static str,
    /// The validated authority, as the client wrote it (with its port, if any).
    pub host: &'a HeaderValue,
    /// The canonical path when it differs from the request's.
    pub canonical_path: Option<&'a str>,
    /// The request id header name and value.
    pub request_id: (&'a HeaderName, &'a HeaderValue),
    /// The verified caller's identity headers, if any.
    pub identity: Option<Identity<'a>>,
    /// `Some(api_key_headers)`: remove `Authorization` and these (credentials are not
    /// forwarded); `None`: forward them.
    pub strip_credentials: Option<&'a [HeaderName]>,
}

impl<'a> Forwarding<'a> {
    /// What an admitted request forwards, for a client that reached the gateway over `scheme`.
    pub fn of(rt: &'a Runtime, admission: &'a Admission, scheme: &'static str) -> Result<Self, GatewayError> {
        Ok(Forwarding {
            peer: admission.peer,
            scheme,
            host: admission.host.as_ref().ok_or(GatewayError::Internal)?,
            canonical_path: admission.canonical_path.as_deref(),
            request_id: (&rt.request_id_header, &admission.request_id),
            identity: admission.principal.as_ref().map(|p| rt.auth.identity(p)),
            strip_credentials: (!rt.auth.forward_credentials).then_some(&rt.auth.api_key_headers[..]),
        })
    }
}

/// Rewrites `req` (a copy of the client's request) into what the upstream receives.
///
/// The headers are edited in the `http` map directly, with names made once: Pingora's own
/// `insert_header` parses every name again and keeps its spelling in a second map, and cost
/// more than the rest of this stage together. Without that map the upstream gets standard
/// names in their usual case and others in lower case, as HTTP/2 (and Envoy) send them.
pub fn prepare_upstream_request(
    req: &mut RequestHeader,
    proxies: &TrustedProxies,
    fwd: &Forwarding<'_>,
) -> Result<(), GatewayError> {
    // Pingora keeps an absolute-form target's original bytes and serialises them unless the URI
    // is set again: the upstream always gets origin-form.
    let target = if fwd.canonical_path.is_some() || !req.raw_path().starts_with(b"/") {
        let path = fwd.canonical_path.unwrap_or_else(|| req.uri.path());
        let target = match req.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        Target::Uri(Uri::try_from(target).map_err(|_| GatewayError::BadPath("invalid request target"))?)
    } else if !req.raw_path_is_utf8() {
        // A query with bytes that are not UTF-8 (the path would not be canonical): the URI holds
        // a lossy copy, the original bytes go upstream as the client sent them.
        Target::Raw(req.raw_path().into())
    } else {
        // Origin-form in UTF-8: the URI reproduces the target byte for byte.
        Target::AsIs
    };
    let mut parts = take_parts(req);
    let rewritten = rewrite_headers(&mut parts.headers, proxies, fwd);
    let raw = match target {
        Target::AsIs => None,
        Target::Uri(uri) => {
            parts.uri = uri;
            None
        }
        Target::Raw(bytes) => Some(bytes),
    };
    *req = RequestHeader::from(parts);
    if let Some(bytes) = raw {
        req.set_raw_path(&bytes).map_err(|_| GatewayError::BadPath("invalid request target"))?;
    }
    rewritten
}

/// The request-target the upstream gets.
enum Target {
    /// The request's own, which its URI reproduces.
    AsIs,
    /// Origin-form with the canonical path.
    Uri(Uri),
    /// The original bytes (not UTF-8).
    Raw(Box<[u8]>),
}

/// The `http` parts of `req`, which is left empty.
fn take_parts(req: &mut RequestHeader) -> http::request::Parts {
    let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
    std::mem::replace(req, empty).into()
}

/// The header rewrite of [`prepare_upstream_request`].
fn rewrite_headers(
    headers: &mut HeaderMap,
    proxies: &TrustedProxies,
    fwd: &Forwarding<'_>,
) -> Result<(), GatewayError> {
    let trusted = proxies.contains(fwd.peer);
    remove_connection_listed(headers);
    // One pass over the names the client sent; a request with nothing to remove allocates
    // nothing here.
    let strip = |name: &HeaderName| {
        is_reserved(name, trusted)
            || fwd
                .strip_credentials
                .is_some_and(|api_key_headers| *name == AUTHORIZATION || api_key_headers.contains(name))
    };
    if headers.keys().any(strip) {
        let doomed: Vec<HeaderName> = headers.keys().filter(|n| strip(n)).cloned().collect();
        for name in doomed {
            headers.remove(&name);
        }
    }
    // Room for what is added below, made once rather than grown (and rehashed) on the way.
    headers.reserve(8 + fwd.identity.as_ref().map_or(0, |id| id.claims.len()));
    if let Some(id) = &fwd.identity {
        headers.insert(X_AUTH_SUBJECT, id.subject.clone());
        headers.insert(X_AUTH_METHOD, id.method.clone());
        if let Some(key_id) = id.key_id {
            headers.insert(X_AUTH_KEY_ID, key_id.clone());
        }
        if let Some(issuer) = id.issuer {
            headers.insert(X_AUTH_ISSUER, issuer.clone());
        }
        headers.insert(X_AUTH_PERMISSIONS, id.permissions.clone());
        for (name, value) in id.claims {
            headers.insert(name.clone(), value.clone());
        }
    }

    let peer = address_value(canonical(fwd.peer)).ok_or(GatewayError::Internal)?;
    let xff = match (trusted, joined(headers, &X_FORWARDED_FOR)) {
        (true, Some(prior)) => {
            let mut v = prior;
            v.extend_from_slice(b", ");
            v.extend_from_slice(peer.as_bytes());
            HeaderValue::from_bytes(&v).map_err(|_| GatewayError::Internal)?
        }
        _ => peer,
    };
    headers.insert(X_FORWARDED_FOR, xff);
    // What a trusted proxy says about the original request is kept only when it checks out.
    let routed = || parse_authority(fwd.host.as_bytes());
    let agrees = |authority: &[u8]| matches!((parse_authority(authority), routed()), (Some(a), Some(r)) if a.as_str() == r.as_str());
    // Entries that disagree are no scheme (or port) at all: backends pick different ones. A
    // trusted proxy that sent only `Forwarded` is taken at the `proto` of its own (last) element.
    let trusted_scheme =
        trusted.then(|| one_entry(headers, &X_FORWARDED_PROTO, is_forwarded_scheme)).flatten().and_then(static_scheme);
    let scheme = match trusted_scheme {
        Some(scheme) => scheme,
        None if trusted && !headers.contains_key(&X_FORWARDED_PROTO) => {
            forwarded_proto(headers, agrees).unwrap_or(fwd.scheme)
        }
        None => fwd.scheme,
    };
    // One value, in lower case (Rack compares the scheme case-sensitively).
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    // A trusted proxy's port and path prefix, which frameworks build URLs from, when well formed.
    if trusted && headers.contains_key(&X_FORWARDED_PORT) && one_entry(headers, &X_FORWARDED_PORT, is_port).is_none() {
        headers.remove(&X_FORWARDED_PORT);
    }
    if trusted
        && headers.contains_key(&X_FORWARDED_PREFIX)
        && !entries_all(headers, &X_FORWARDED_PREFIX, is_path_prefix)
    {
        headers.remove(&X_FORWARDED_PREFIX);
    }
    if !trusted || !entries_all(headers, &X_FORWARDED_HOST, agrees) {
        headers.insert(X_FORWARDED_HOST, fwd.host.clone());
    }
    let same_scheme = |proto: &[u8]| proto.eq_ignore_ascii_case(scheme.as_bytes());
    if trusted && headers.contains_key(&FORWARDED) && !forwarded_is_sound(headers, agrees, same_scheme) {
        headers.insert(FORWARDED, own_forwarded(fwd.peer, fwd.host, scheme)?);
    }
    headers.insert(HOST, fwd.host.clone());
    headers.insert(fwd.request_id.0.clone(), fwd.request_id.1.clone());
    Ok(())
}

/// An address as a header value. IPv4, by far the common case, is written by hand on the
/// stack: `Display` goes through the formatting machinery and cost more than every header
/// insert of this stage.
fn address_value(ip: IpAddr) -> Option<HeaderValue> {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).ok();
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    HeaderValue::from_bytes(&text[..len]).ok()
}

/// Whether `name` is present and every comma-separated entry of every line passes `valid`.
fn entries_all(headers: &HeaderMap, name: &HeaderName, valid: impl Fn(&[u8]) -> bool) -> bool {
    let mut lines = headers.get_all(name).iter().peekable();
    lines.peek().is_some()
        && lines.all(|line| line.as_bytes().split(|&b| b == b',').all(|entry| valid(entry.trim_ascii())))
}

/// The one value of every comma-separated entry of every line of `name` (its first, as sent),
/// when there is at least one, each passes `valid` and all are the same (ignoring case).
fn one_entry<'h>(headers: &'h HeaderMap, name: &HeaderName, valid: impl Fn(&[u8]) -> bool) -> Option<&'h [u8]> {
    let first = headers.get(name)?.as_bytes().split(|&b| b == b',').next()?.trim_ascii();
    let same = |entry: &[u8]| valid(entry) && entry.eq_ignore_ascii_case(first);
    entries_all(headers, name, same).then_some(first)
}

/// The scheme the nearest proxy wrote in a sound `Forwarded`: the `proto` of its last
/// element, which must have one (an earlier element, or a later one without, may be the
/// client's own). Every other `proto` must then agree with it, which [`forwarded_is_sound`]
/// checks.
fn forwarded_proto(headers: &HeaderMap, agrees: impl Fn(&[u8]) -> bool) -> Option<&'static str> {
    if !headers.contains_key(&FORWARDED) || !forwarded_is_sound(headers, agrees, |_| true) {
        return None;
    }
    // Sound: no quoted string holds `,` or `;`, so splitting at them is exact.
    let last_line = headers.get_all(&FORWARDED).iter().next_back()?;
    let last = last_line.as_bytes().rsplit(|&b| b == b',').next()?;
    last.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let (name, value) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
        let value = match &value[1..] {
            [b'"', inner @ .., b'"'] => inner,
            token => token,
        };
        name.eq_ignore_ascii_case(b"proto").then(|| static_scheme(value)).flatten()
    })
}

/// `"http"` or `"https"` for either in any case.
fn static_scheme(scheme: &[u8]) -> Option<&'static str> {
    if scheme.eq_ignore_ascii_case(b"https") {
        Some("https")
    } else if scheme.eq_ignore_ascii_case(b"http") {
        Some("http")
    } else {
        None
    }
}

/// A port number, 1 to 65535.
fn is_port(text: &[u8]) -> bool {
    (1..=5).contains(&text.len())
        && text.iter().all(u8::is_ascii_digit)
        && std::str::from_utf8(text).ok().and_then(|t| t.parse::<u32>().ok()).is_some_and(|p| (1..=65535).contains(&p))
}

/// A canonical absolute path (`/api`), as a prefix a backend may put in front of its own paths:
/// never `//evil.example`, which a URL builder would take for another host.
fn is_path_prefix(text: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(text) else { return false };
    text.starts_with('/')
        && !text.contains(['?', '#'])
        && crate::pipeline::path::normalize(text).is_ok_and(|c| c == text)
}

/// `http` or `https`, in any case: what a backend may put in front of `://`.
fn is_forwarded_scheme(scheme: &[u8]) -> bool {
    scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")
}

/// Whether every line of `Forwarded` reads as RFC 7239 (`element *( "," element )`, an element
/// `pair *( ";" pair )`, a pair `token "=" ( token / quoted-string )`) with every `host` naming
/// the routed host (`agrees`) and every `proto` the scheme sent as `X-Forwarded-Proto`
/// (`same_scheme`). Quoted strings holding another quote, an escape, `,` or `;` are refused
/// rather than interpreted: parsers differ on them, and no proxy needs them for these parameters.
fn forwarded_is_sound(
    headers: &HeaderMap,
    agrees: impl Fn(&[u8]) -> bool,
    same_scheme: impl Fn(&[u8]) -> bool,
) -> bool {
    let pair_is_sound = |pair: &[u8]| {
        let Some(eq) = pair.iter().position(|&b| b == b'=') else { return false };
        let (name, value) = (&pair[..eq], &pair[eq + 1..]);
        let value = match value {
            [b'"', inner @ .., b'"'] if !inner.contains(&b'"') && !inner.contains(&b'\\') => inner,
            token if !token.is_empty() && token.iter().all(|&b| is_token_byte(b)) => token,
            _ => return false,
        };
        if name.is_empty() || !name.iter().all(|&b| is_token_byte(b)) {
            return false;
        }
        if name.eq_ignore_ascii_case(b"host") {
            agrees(value)
        } else if name.eq_ignore_ascii_case(b"proto") {
            is_forwarded_scheme(value) && same_scheme(value)
        } else {
            true
        }
    };
    headers.get_all(&FORWARDED).iter().all(|line| {
        line.as_bytes()
            .split(|&b| b == b',')
            .all(|element| element.split(|&b| b == b';').all(|pair| pair_is_sound(pair.trim_ascii())))
    })
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The gateway's own `Forwarded` element, in place of a trusted proxy's that did not check out.
fn own_forwarded(peer: IpAddr, host: &HeaderValue, scheme: &str) -> Result<HeaderValue, GatewayError> {
    let peer = match canonical(peer) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let host = String::from_utf8_lossy(host.as_bytes());
    HeaderValue::from_str(&format!("for={peer};host=\"{host}\";proto={scheme}")).map_err(|_| GatewayError::Internal)
}

/// All values of a header joined with ", ", or `None` when absent.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut values = headers.get_all(name).iter();
    let mut out = values.next()?.as_bytes().to_vec();
    for v in values {
        out.extend_from_slice(b", ");
        out.extend_from_slice(v.as_bytes());
    }
    Some(out)
}

/// Removes the headers the client named in `Connection`, sparing the framing headers (Pingora
/// frames the upstream request from them) and `Host` (set again below anyway).
fn remove_connection_listed(headers: &mut HeaderMap) {
    if !headers.contains_key(CONNECTION) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .filter(|name| *name != CONTENT_LENGTH && *name != TRANSFER_ENCODING && *name != HOST)
        .collect();
    for name in listed {
        headers.remove(&name);
    }
}

/// What the forward stage does to a header a client (not a trusted proxy) sent, in words, for
/// `portcullis explain`; `None` when it reaches the upstream unchanged. (Credentials and the
/// request id are the caller's to describe: they depend on `[auth]` and `[server]`.)
pub fn fate(name: &HeaderName) -> Option<&'static str> {
    let text = name.as_str();
    Some(if *name == HOST {
        "the host the request is routed on; sent upstream as Host and X-Forwarded-Host"
    } else if HOP_BY_HOP.contains(&text) {
        "removed: it describes one connection, not the request"
    } else if text.starts_with(IDENTITY_HEADER_PREFIX) {
        "removed: only the gateway sets X-Auth-* identity headers"
    } else if text.contains('_') {
        "removed: names with _ are dropped (CGI-style servers read X_Auth_Subject as X-Auth-Subject)"
    } else if ROUTING_OVERRIDES.contains(&text) {
        "removed: it would make the backend serve another method or path than the one checked"
    } else if FORWARDED_ALIASES.contains(&text) {
        "removed: X-Forwarded-Proto and X-Forwarded-Host are the only forwarded scheme and host"
    } else if CLIENT_CERTIFICATES.contains(&text) {
        "removed: the gateway verifies client certificates itself (the caller is in X-Auth-*)"
    } else if PROXY_ASSERTIONS.contains(&text) {
        "removed: believed only from server.trusted_proxies"
    } else if *name == X_FORWARDED_FOR {
        "replaced by the client's address (a trusted proxy's value is kept, the peer appended)"
    } else if *name == X_FORWARDED_PROTO || *name == X_FORWARDED_HOST {
        "replaced by the gateway's own value (a trusted proxy's is kept when it checks out)"
    } else if *name == CONTENT_LENGTH || *name == TRANSFER_ENCODING {
        "frames the body; checked against server.max_body_size"
    } else {
        return None;
    })
}

/// The identity headers the gateway sets from a verified caller.
pub const IDENTITY_HEADERS: [&str; 5] =
    ["x-auth-subject", "x-auth-method", "x-auth-key-id", "x-auth-issuer", "x-auth-permissions"];

/// Whether the gateway owns the header `name` (lower case) on the upstream request: sets it
/// itself (identity, forwarding, `Host`, body framing), or removes it from clients (hop-by-hop,
/// routing overrides, forwarded aliases, client certificates, client-address assertions). The
/// one list configuration validation asks, so that no configured header (the request id, a
/// rate-limit key) can be one a client forges or the gateway overwrites.
pub fn owned_by_gateway(name: &str) -> bool {
    name == "host"
        || name == "content-length"
        || name == "transfer-encoding"
        || name.starts_with("x-forwarded-")
        || PROXY_ASSERTIONS.contains(&name)
        || is_reserved_name(name, true)
}

/// What only the gateway (or a trusted proxy) may say, and what describes one connection:
/// hop-by-hop headers, identity headers, underscore spellings, routing overrides, other
/// spellings of the forwarded scheme and host, client certificates, and, from untrusted peers,
/// client-address assertions.
fn is_reserved(name: &HeaderName, trusted: bool) -> bool {
    is_reserved_name(name.as_str(), trusted)
}

fn is_reserved_name(name: &str, trusted: bool) -> bool {
    HOP_BY_HOP.contains(&name)
        || name.starts_with(IDENTITY_HEADER_PREFIX)
        || name.contains('_')
        || ROUTING_OVERRIDES.contains(&name)
        || FORWARDED_ALIASES.contains(&name)
        || CLIENT_CERTIFICATES.contains(&name)
        || (!trusted && PROXY_ASSERTIONS.contains(&name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/a//b?x=1", None).unwrap();
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    static HOST: HeaderValue = HeaderValue::from_static("api.example.com:8080");
    static REQUEST_ID: (HeaderName, HeaderValue) =
        (HeaderName::from_static("x-request-id"), HeaderValue::from_static("rid-1"));

    /// What a plain-HTTP request from `peer` to `api.example.com:8080` is forwarded with.
    fn forwarding(peer: &str) -> Forwarding<'static> {
        Forwarding {
            peer: peer.parse().unwrap(),
            scheme: "http",
            host: &HOST,
            canonical_path: None,
            request_id: (&REQUEST_ID.0, &REQUEST_ID.1),
            identity: None,
            strip_credentials: None,
        }
    }

    fn forward(req: &mut RequestHeader, peer: &str) {
        let proxies = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let fwd = Forwarding { canonical_path: Some("/a/b"), ..forwarding(peer) };
        prepare_upstream_request(req, &proxies, &fwd).unwrap();
    }

    fn get<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
        req.headers.get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn strips_forged_identity_and_hop_by_hop() {
        let mut req = request(&[
            ("X_Auth_Subject", "admin"),
            ("x-auth_permissions", "write_config"),
            ("X-HTTP-Method-Override", "DELETE"),
            ("X-Original-URL", "/admin"),
            ("X-Real-IP", "6.6.6.6"),
            ("X-Auth-Subject", "admin"),
            ("x-auth-permissions", "write_config"),
            ("Connection", "keep-alive, X-Secret"),
            ("X-Secret", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Upgrade", "websocket"),
            ("Proxy-Authorization", "Basic eA=="),
            ("X-Other", "kept"),
        ]);
        forward(&mut req, "203.0.113.1");
        for gone in [
            "x-auth-subject",
            "x-auth-permissions",
            "x_auth_subject",
            "x-auth_permissions",
            "x-http-method-override",
            "x-original-url",
            "x-real-ip",
            "connection",
            "x-secret",
            "keep-alive",
            "upgrade",
            "proxy-authorization",
        ] {
            assert_eq!(get(&req, gone), None, "{gone}");
        }
        assert_eq!(get(&req, "x-other"), Some("kept"));
        assert_eq!(req.uri.to_string(), "/a/b?x=1");
        assert_eq!(get(&req, "host"), Some("api.example.com:8080"));
        assert_eq!(get(&req, "x-request-id"), Some("rid-1"));
    }

    #[test]
    fn addresses_render_as_display_does() {
        for octet in 0..=255u8 {
            for ip in [[octet, 0, 9, 255], [1, octet, 10, 99], [100, 200, octet, 0], [255, 1, 2, octet]] {
                let ip = IpAddr::from(ip);
                assert_eq!(address_value(ip).unwrap(), ip.to_string().as_str());
            }
        }
        for ip in ["2001:db8::1", "::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(address_value(ip).unwrap(), ip.to_string().as_str());
        }
    }

    #[test]
    fn a_query_that_is_not_utf8_goes_upstream_as_sent() {
        let mut req = RequestHeader::build("GET", b"/a?x=\xff%20", None).unwrap();
        assert!(!req.raw_path_is_utf8());
        let proxies = TrustedProxies::new(vec![]);
        prepare_upstream_request(&mut req, &proxies, &forwarding("192.0.2.7")).unwrap();
        assert_eq!(req.raw_path(), b"/a?x=\xff%20");
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        assert!(String::from_utf8_lossy(&wire).contains("x-request-id: rid-1"), "{wire:?}");
    }

    #[test]
    fn credentials_are_stripped_unless_forwarded() {
        let key_header = [HeaderName::from_static("x-api-key")];
        let mut req = request(&[("Authorization", "Bearer a.b.c"), ("X-API-Key", "pcs_x"), ("Accept", "*/*")]);
        let proxies = TrustedProxies::new(vec![]);
        let mut fwd = Forwarding { scheme: "https", strip_credentials: Some(&key_header), ..forwarding("192.0.2.7") };
        let mut kept = req.clone();
        prepare_upstream_request(&mut req, &proxies, &fwd).unwrap();
        assert_eq!(get(&req, "authorization"), None);
        assert_eq!(get(&req, "x-api-key"), None);
        assert_eq!(get(&req, "accept"), Some("*/*"));
        assert_eq!(get(&req, "x-forwarded-proto"), Some("https"));
        assert_eq!(req.raw_path(), b"/a//b?x=1", "an origin-form target is kept byte for byte");
        fwd.strip_credentials = None;
        prepare_upstream_request(&mut kept, &proxies, &fwd).unwrap();
        assert_eq!(get(&kept, "authorization"), Some("Bearer a.b.c"));
        assert_eq!(get(&kept, "x-api-key"), Some("pcs_x"));
    }

    #[test]
    fn untrusted_peer_cannot_forge_forwarding_headers() {
        let mut req = request(&[
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.com"),
            ("Forwarded", "for=1.2.3.4"),
        ]);
        forward(&mut req, "203.0.113.1");
        assert_eq!(get(&req, "x-forwarded-for"), Some("203.0.113.1"));
        assert_eq!(get(&req, "x-forwarded-proto"), Some("http"));
        assert_eq!(get(&req, "x-forwarded-host"), Some("api.example.com:8080"));
        assert_eq!(get(&req, "forwarded"), None);
    }

    #[test]
    fn trusted_peer_forwarding_headers_are_kept_and_appended() {
        let mut req = request(&[
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Forwarded-For", "5.6.7.8"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "API.example.com."),
            (
                "Forwarded",
                "for=1.2.3.4;proto=https;host=api.example.com, for=\"[2001:db8::1]:443\";host=\"api.example.com:443\"",
            ),
        ]);
        forward(&mut req, "10.1.2.3");
        assert_eq!(get(&req, "x-forwarded-for"), Some("1.2.3.4, 5.6.7.8, 10.1.2.3"));
        assert_eq!(get(&req, "x-forwarded-proto"), Some("https"));
        assert_eq!(get(&req, "x-forwarded-host"), Some("API.example.com."));
        assert_eq!(
            get(&req, "forwarded"),
            Some(
                "for=1.2.3.4;proto=https;host=api.example.com, for=\"[2001:db8::1]:443\";host=\"api.example.com:443\""
            )
        );
    }

    #[test]
    fn a_trusted_proxys_scheme_and_port_are_one_and_forwarded_agrees_with_them() {
        let at = |headers: &[(&str, &str)]| {
            let mut req = request(headers);
            forward(&mut req, "10.1.2.3");
            let all = |name: &str| req.headers.get_all(name).iter().map(|v| v.to_str().unwrap().to_string()).collect();
            (all("x-forwarded-proto"), all("forwarded"), all("x-forwarded-port"))
        };
        let own = |scheme: &str| vec![format!("for=10.1.2.3;host=\"api.example.com:8080\";proto={scheme}")];
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Ports that disagree are no port.
        assert_eq!(at(&[("X-Forwarded-Port", "443, 8443")]).2, Vec::<String>::new());
        assert_eq!(at(&[("X-Forwarded-Port", "443"), ("X-Forwarded-Port", "80")]).2, Vec::<String>::new());
        assert_eq!(at(&[("X-Forwarded-Port", "443, 443")]).2, strings(&["443, 443"]));
        // Forwarded's proto must be X-Forwarded-Proto's.
        let (xfp, fwd, _) = at(&[("X-Forwarded-Proto", "https"), ("Forwarded", "for=1.2.3.4;proto=http")]);
        assert_eq!((xfp, fwd), (strings(&["https"]), own("https")));
        let (xfp, fwd, _) = at(&[("X-Forwarded-Proto", "https, http"), ("Forwarded", "proto=https")]);
        assert_eq!((xfp, fwd), (strings(&["http"]), own("http")), "the scheme was replaced: so is Forwarded");
        let (xfp, fwd, _) = at(&[("X-Forwarded-Proto", "HTTPS"), ("Forwarded", "for=1.2.3.4;proto=\"https\"")]);
        assert_eq!(
            (xfp, fwd),
            (strings(&["https"]), strings(&["for=1.2.3.4;proto=\"https\""])),
            "one scheme, in lower case"
        );
        assert_eq!(at(&[("X-Forwarded-Proto", "https, HTTPS")]).0, strings(&["https"]));
        // A proxy that sends only Forwarded is taken at its one proto.
        let (xfp, fwd, _) = at(&[("Forwarded", "for=1.2.3.4;proto=https, for=10.0.0.1;proto=https")]);
        assert_eq!((xfp, fwd), (strings(&["https"]), strings(&["for=1.2.3.4;proto=https, for=10.0.0.1;proto=https"])));
        let (xfp, fwd, _) = at(&[("Forwarded", "for=1.2.3.4;proto=https, for=10.0.0.1;proto=http")]);
        assert_eq!((xfp, fwd), (strings(&["http"]), own("http")));
        // Not the client's own proto, in front of a proxy's element without one, or hidden in a
        // quoted value, or in a Forwarded that is not sound.
        for forwarded in
            ["proto=https, for=10.0.0.1", "for=\"1.2.3.4;proto=https\"", "for=1.2.3.4;proto=https;host=evil.example"]
        {
            let (xfp, fwd, _) = at(&[("Forwarded", forwarded)]);
            assert_eq!((xfp, fwd), (strings(&["http"]), own("http")), "{forwarded}");
        }
        // Other spellings of the scheme and client certificates never reach the upstream.
        for name in [
            "X-Forwarded-Protocol",
            "X-Proxied-Https",
            "X-ARR-SSL",
            "X-Forwarded-Client-Cert",
            "Client-Cert",
            "X-SSL-Client-Cert",
        ] {
            let mut req = request(&[(name, "on")]);
            forward(&mut req, "10.1.2.3");
            assert_eq!(get(&req, name), None, "{name}");
        }
    }

    #[test]
    fn a_trusted_proxys_forwarded_host_and_scheme_must_check_out() {
        let own = "for=10.1.2.3;host=\"api.example.com:8080\";proto=http";
        for (name, value, replaced_by) in [
            ("X-Forwarded-Host", "evil.com", "api.example.com:8080"),
            ("X-Forwarded-Host", "api.example.com, evil.com", "api.example.com:8080"),
            ("X-Forwarded-Host", "api.example.com@evil.com", "api.example.com:8080"),
            ("X-Forwarded-Host", "api.example.com/evil", "api.example.com:8080"),
            ("X-Forwarded-Host", "", "api.example.com:8080"),
            ("X-Forwarded-Host", "api.example.com.evil.net", "api.example.com:8080"),
            ("X-Forwarded-Proto", "javascript", "http"),
            ("X-Forwarded-Proto", "https://evil.com", "http"),
            ("X-Forwarded-Proto", "https, ftp", "http"),
            ("X-Forwarded-Proto", "https, http", "http"),
            ("X-Forwarded-Host", "api.example.com:0", "api.example.com:8080"),
            ("Forwarded", "host=evil.com", own),
            ("Forwarded", "for=1.2.3.4;host=api.example.com, host=evil.com", own),
            ("Forwarded", "proto=gopher", own),
            ("Forwarded", "host=\"evil.com,api.example.com\"", own),
            ("Forwarded", "host=\"api.example.com\\\"\"", own),
            ("Forwarded", "for", own),
            ("Forwarded", "for=1.2.3.4;;", own),
            ("Forwarded", "=x", own),
        ] {
            let mut req = request(&[(name, value)]);
            forward(&mut req, "10.1.2.3");
            assert_eq!(get(&req, &name.to_ascii_lowercase()), Some(replaced_by), "{name}: {value}");
        }
        for (name, value) in [
            ("Forwarded", "for=_hidden;by=unknown;secret=x"),
            ("X-Forwarded-Port", "443"),
            ("X-Forwarded-Prefix", "/api"),
        ] {
            let mut req = request(&[(name, value)]);
            forward(&mut req, "10.1.2.3");
            assert_eq!(get(&req, &name.to_ascii_lowercase()), Some(value), "{name}: {value}");
        }
    }

    #[test]
    fn other_spellings_of_the_scheme_and_host_are_removed_and_bad_ports_and_prefixes_dropped() {
        for peer in ["10.1.2.3", "203.0.113.1"] {
            let mut req = request(&[
                ("X-Forwarded-Ssl", "on"),
                ("Front-End-Https", "on"),
                ("X-Forwarded-Scheme", "https"),
                ("X-Url-Scheme", "https"),
                ("X-Host", "evil.com"),
                ("X-Original-Host", "evil.com"),
                ("X-HTTP-Host-Override", "evil.com"),
                ("X-Forwarded-Port", "0"),
                ("X-Forwarded-Prefix", "//evil.com"),
            ]);
            forward(&mut req, peer);
            for gone in [
                "x-forwarded-ssl",
                "front-end-https",
                "x-forwarded-scheme",
                "x-url-scheme",
                "x-host",
                "x-original-host",
                "x-http-host-override",
                "x-forwarded-port",
                "x-forwarded-prefix",
            ] {
                assert_eq!(get(&req, gone), None, "{gone} from {peer}");
            }
        }
        for bad in ["1337x", "65536", "", "80, 0"] {
            let headers = request(&[("X-Forwarded-Port", bad)]).headers.clone();
            assert!(!entries_all(&headers, &X_FORWARDED_PORT, is_port), "{bad}");
        }
        for bad in ["//evil.com", "/a/../b", "relative", "/a?x", "/a;b"] {
            assert!(!is_path_prefix(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn the_own_forwarded_element_quotes_ipv6_and_the_host() {
        let host = HeaderValue::from_static("[::1]:8443");
        assert_eq!(
            own_forwarded("2001:db8::7".parse().unwrap(), &host, "https").unwrap(),
            "for=\"[2001:db8::7]\";host=\"[::1]:8443\";proto=https"
        );
        assert_eq!(
            own_forwarded("::ffff:10.0.0.1".parse().unwrap(), &host, "http").unwrap(),
            "for=10.0.0.1;host=\"[::1]:8443\";proto=http"
        );
    }
}
