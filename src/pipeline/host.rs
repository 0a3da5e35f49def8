//! Host allow-list: which names clients may address the gateway by.
//!
//! The host is read from the request-target's authority when there is one (absolute-form
//! `GET http://host/ HTTP/1.1`, and HTTP/2's `:authority`), else from the single `Host` header. It
//! is parsed strictly as `host[:port]`: anything else (`example.com:80@evil.com`, a second `Host`
//! header, an authority that disagrees with `Host`) is a malformed request, 400, never a guess.
//! The comparison ignores case, the port and one trailing dot. `*.example.com` matches one or more
//! labels below `example.com`, never `example.com` itself and never `example.com.evil.net`.

use std::collections::HashSet;

use http::header::HOST;
use http::HeaderValue;
use pingora::http::RequestHeader;

use crate::error::GatewayError;

/// The longest host name accepted (DNS names are at most 253 bytes; IPv6 literals are shorter).
pub const MAX_HOST_LEN: usize = 253;

/// A host name as the allow-list and routes compare it: lower case, no port, no trailing dot.
///
/// Lives on the stack: checking the host allocates nothing.
pub struct RequestHost {
    buf: [u8; MAX_HOST_LEN],
    len: usize,
}

impl RequestHost {
    /// The normalised host.
    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever written into `buf` (see `parse_authority`).
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

/// Parses an authority (`host[:port]`) strictly; `None` when it is malformed.
pub fn parse_authority(authority: &[u8]) -> Option<RequestHost> {
    let (host, port) = if authority.first() == Some(&b'[') {
        // IPv6 literal: "[" hex/colon/dot "]" then an optional port.
        let close = authority.iter().position(|&b| b == b']')?;
        let literal = &authority[..=close];
        if !literal[1..close].iter().all(|b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.') || close < 3 {
            return None;
        }
        (literal, &authority[close + 1..])
    } else {
        match authority.iter().position(|&b| b == b':') {
            Some(colon) => (&authority[..colon], &authority[colon..]),
            None => (authority, &authority[authority.len()..]),
        }
    };
    if !port.is_empty() {
        let digits = &port[1..];
        if port[0] != b':' || digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let value: u32 = std::str::from_utf8(digits).ok()?.parse().ok()?;
        // Port 0 names no service: refused rather than passed on to a backend building URLs.
        if value == 0 || value > 65535 {
            return None;
        }
    }
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return None;
    }
    if host[0] != b'[' {
        // reg-name or IPv4: letters, digits, '-', '_' and non-empty dot-separated labels.
        if !host.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            || host.split(|&b| b == b'.').any(<[u8]>::is_empty)
        {
            return None;
        }
    }
    let mut out = RequestHost { buf: [0; MAX_HOST_LEN], len: host.len() };
    for (dst, src) in out.buf.iter_mut().zip(host) {
        *dst = src.to_ascii_lowercase();
    }
    Some(out)
}

/// The host a request addresses: normalised for matching, and as written for forwarding.
pub struct AddressedHost {
    /// Lower case, no port, no trailing dot.
    pub name: RequestHost,
    /// The authority as the client wrote it (with its port, if any): what the upstream gets as
    /// `Host` and `X-Forwarded-Host`.
    pub authority: HeaderValue,
}

/// Reads and validates the host a request addresses.
pub fn request_host(req: &RequestHeader) -> Result<AddressedHost, GatewayError> {
    let mut hosts = req.headers.get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::BadHost("more than one Host header"));
    }
    let from_header = match header {
        Some(value) => Some(parse_authority(value.as_bytes()).ok_or(GatewayError::BadHost("malformed Host header"))?),
        None => None,
    };
    // Pingora keeps an absolute-form target's bytes apart from `uri`: read the authority there.
    let absolute;
    let target_authority = match req.uri.authority() {
        Some(a) => Some(a),
        None if !req.raw_path().starts_with(b"/") => {
            absolute =
                http::Uri::try_from(req.raw_path()).map_err(|_| GatewayError::BadHost("malformed request target"))?;
            absolute.authority()
        }
        None => None,
    };
    match (target_authority, header, from_header) {
        (Some(authority), _, from_header) => {
            let name = parse_authority(authority.as_str().as_bytes())
                .ok_or(GatewayError::BadHost("malformed authority in the request target"))?;
            if from_header.is_some_and(|h| h.as_str() != name.as_str()) {
                return Err(GatewayError::BadHost("the Host header and the request target name different hosts"));
            }
            let authority =
                HeaderValue::from_str(authority.as_str()).map_err(|_| GatewayError::BadHost("malformed authority"))?;
            Ok(AddressedHost { name, authority })
        }
        (None, Some(value), Some(name)) => Ok(AddressedHost { name, authority: value.clone() }),
        _ => Err(GatewayError::BadHost("missing Host header")),
    }
}

/// One entry of a host list: `api.example.com`, `*.example.com`, or `*` (any host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Any host at all.
    Any,
    /// Exactly this normalised name.
    Exact(Box<str>),
    /// Any name ending in this suffix (which starts with a dot), with at least one label before it.
    Subdomains(Box<str>),
}

impl HostPattern {
    /// Parses a pattern as written in the configuration.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(HostPattern::Any);
        }
        let (wildcard, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if name.contains('*') || (wildcard && name.starts_with('[')) {
            return Err(format!("\"{text}\": a wildcard may only stand alone as the first label, as in *.example.com"));
        }
        let parsed = parse_authority(name.as_bytes()).ok_or_else(|| format!("\"{text}\" is not a host name"))?;
        if parsed.as_str().len() != name.trim_end_matches('.').len() {
            return Err(format!("\"{text}\" has a port; the port is ignored when matching, write the name alone"));
        }
        let name = parsed.as_str();
        Ok(if wildcard {
            HostPattern::Subdomains(format!(".{name}").into_boxed_str())
        } else {
            HostPattern::Exact(name.into())
        })
    }

    /// Whether a normalised host matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(name) => **name == *host,
            HostPattern::Subdomains(suffix) => host.len() > suffix.len() && host.ends_with(&**suffix),
        }
    }
}

/// The validated `server.allowed_hosts`.
#[derive(Debug, Default)]
pub struct HostAllowList {
    any: bool,
    exact: HashSet<Box<str>>,
    suffixes: Vec<Box<str>>,
}

impl HostAllowList {
    /// Builds the list; each entry's problem is returned with its index.
    pub fn from_patterns(patterns: impl IntoIterator<Item = HostPattern>) -> Self {
        let mut list = HostAllowList::default();
        for pattern in patterns {
            match pattern {
                HostPattern::Any => list.any = true,
                HostPattern::Exact(name) => {
                    list.exact.insert(name);
                }
                HostPattern::Subdomains(suffix) => list.suffixes.push(suffix),
            }
        }
        list
    }

    /// Whether a normalised host is allowed.
    pub fn allows(&self, host: &str) -> bool {
        self.any
            || self.exact.contains(host)
            || self.suffixes.iter().any(|s| host.len() > s.len() && host.ends_with(&**s))
    }

    /// Whether every host `pattern` can match is allowed (used to find routes no request can reach).
    pub fn covers(&self, pattern: &HostPattern) -> bool {
        match pattern {
            HostPattern::Any => self.any,
            HostPattern::Exact(name) => self.allows(name),
            HostPattern::Subdomains(suffix) => {
                self.any || self.suffixes.iter().any(|s| **s == **suffix || suffix.ends_with(&**s))
            }
        }
    }

    /// Checks a request: its host, or 400 (missing/malformed) / 421 (not allowed).
    pub fn check(&self, req: &RequestHeader) -> Result<AddressedHost, GatewayError> {
        let host = request_host(req)?;
        if self.allows(host.name.as_str()) {
            Ok(host)
        } else {
            Err(GatewayError::HostNotAllowed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(patterns: &[&str]) -> HostAllowList {
        HostAllowList::from_patterns(patterns.iter().map(|p| HostPattern::parse(p).unwrap()))
    }

    fn host(text: &str) -> Option<String> {
        parse_authority(text.as_bytes()).map(|h| h.as_str().to_string())
    }

    #[test]
    fn authority_normalisation() {
        assert_eq!(host("Example.COM."), Some("example.com".into()));
        assert_eq!(host("example.com:8080"), Some("example.com".into()));
        assert_eq!(host("[::1]:443"), Some("[::1]".into()));
        assert_eq!(host("127.0.0.1"), Some("127.0.0.1".into()));
    }

    #[test]
    fn malformed_authorities() {
        for bad in [
            "",
            ":80",
            "example.com:80@evil.com",
            "user@example.com",
            "example.com:",
            "example.com:99999",
            "example.com:8o",
            "exa mple.com",
            "example..com",
            ".example.com",
            "example.com..",
            "[::1",
            "[]",
            "[zz::1]",
            "exam%70le.com",
            "example.com/x",
            "example.com:80:80",
            "example.com:0",
            "example.com:00",
        ] {
            assert_eq!(host(bad), None, "{bad:?} should be malformed");
        }
        assert_eq!(host(&"a".repeat(254)), None);
    }

    #[test]
    fn allow_list_matching() {
        let l = list(&["localhost", "api.example.com", "*.example.com", "[::1]"]);
        assert!(l.allows("localhost"));
        assert!(l.allows("api.example.com"));
        assert!(l.allows("a.example.com"));
        assert!(l.allows("a.b.example.com"));
        assert!(l.allows("[::1]"));
        assert!(!l.allows("example.com"));
        assert!(!l.allows("evilexample.com"));
        assert!(!l.allows("example.com.evil.net"));
        assert!(!l.allows("evil-example.com"));
        assert!(!l.allows("other"));
    }

    #[test]
    fn patterns() {
        assert_eq!(HostPattern::parse("*"), Ok(HostPattern::Any));
        assert_eq!(HostPattern::parse("API.Example.com."), Ok(HostPattern::Exact("api.example.com".into())));
        assert!(HostPattern::parse("api.example.com:443").is_err());
        assert!(HostPattern::parse("api.*.com").is_err());
        assert!(HostPattern::parse("*example.com").is_err());
        assert!(HostPattern::parse("*.*.example.com").is_err());
        assert!(HostPattern::parse("").is_err());
    }

    #[test]
    fn covers() {
        let l = list(&["api.example.com", "*.example.com"]);
        assert!(l.covers(&HostPattern::parse("api.example.com").unwrap()));
        assert!(l.covers(&HostPattern::parse("x.example.com").unwrap()));
        assert!(l.covers(&HostPattern::parse("*.a.example.com").unwrap()));
        assert!(!l.covers(&HostPattern::parse("example.com").unwrap()));
        assert!(!l.covers(&HostPattern::parse("*.other.com").unwrap()));
    }
}
