//! One canonical path for route matching and for the upstream.
//!
//! A route rule on `/admin` is only as good as the gateway's agreement with the backend about
//! what `/admin` is. So the gateway rewrites the path once, and both its route match and the
//! upstream see the result:
//! - percent-encoded unreserved characters are decoded (`/%61dmin` → `/admin`), other escapes are
//!   kept with upper-case hex (`%c3%a9` → `%C3%A9`);
//! - duplicate slashes are merged (`//admin` → `/admin`) and dot-segments resolved (RFC 3986
//!   §5.2.4: `/x/../admin` → `/admin`, `/%2e%2e/admin` → `/admin`); `..` never climbs above `/`;
//! - what backends disagree about is refused with 400 `BAD_PATH`: an encoded `/` or `\` (one
//!   server splits on it, another does not), `\` itself, `;` raw or encoded (Tomcat/Spring strip
//!   `;params` from a segment, so `/admin;x` and `/..;/admin` would reach `/admin` behind a rule
//!   that saw another path), NUL and control characters, and malformed escapes.
//!
//! The common case, an already-canonical path, is recognised in one scan and borrowed as is.

use std::borrow::Cow;

use crate::error::GatewayError;

/// Returns the canonical form of `raw` (the path of the request-target, without query).
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, GatewayError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(GatewayError::BadPath("the path must start with /"));
    }
    if is_canonical(bytes) {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = decode(bytes)?;
    Ok(Cow::Owned(resolve_segments(&decoded)))
}

/// Whether `path` needs no rewriting: printable ASCII without `%`, `\`, `;`, empty segments or
/// dot-segments.
fn is_canonical(path: &[u8]) -> bool {
    let mut segment_start = 0;
    for (i, &b) in path.iter().enumerate() {
        if !(0x21..=0x7e).contains(&b) || matches!(b, b'%' | b'\\' | b';') {
            return false;
        }
        if b == b'/' && i > 0 {
            if is_dot_or_empty(&path[segment_start..i]) {
                return false;
            }
            segment_start = i + 1;
        } else if b == b'/' {
            segment_start = 1;
        }
    }
    // The last segment may be empty (a trailing slash) but not a dot-segment.
    let last = &path[segment_start..];
    !(last == b"." || last == b"..")
}

fn is_dot_or_empty(segment: &[u8]) -> bool {
    segment.is_empty() || segment == b"." || segment == b".."
}

/// Decodes escapes of unreserved characters and refuses the characters backends disagree about.
fn decode(path: &[u8]) -> Result<String, GatewayError> {
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        match b {
            b'%' => {
                let hex = path.get(i + 1..i + 3).ok_or(GatewayError::BadPath("malformed percent-encoding"))?;
                let value = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .filter(|_| hex.iter().all(u8::is_ascii_hexdigit))
                    .ok_or(GatewayError::BadPath("malformed percent-encoding"))?;
                match value {
                    b'/' => return Err(GatewayError::BadPath("encoded slash in path")),
                    b'\\' => return Err(GatewayError::BadPath("encoded backslash in path")),
                    b';' => return Err(GatewayError::BadPath("semicolon in path")),
                    0..=0x1f | 0x7f => return Err(GatewayError::BadPath("encoded control character in path")),
                    v if is_unreserved(v) => out.push(v as char),
                    v => {
                        out.push('%');
                        out.push(char::from(HEX[usize::from(v >> 4)]));
                        out.push(char::from(HEX[usize::from(v & 0xf)]));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(GatewayError::BadPath("backslash in path")),
            b';' => return Err(GatewayError::BadPath("semicolon in path")),
            0x21..=0x7e => {
                out.push(b as char);
                i += 1;
            }
            _ => return Err(GatewayError::BadPath("control or non-ASCII character in path")),
        }
    }
    Ok(out)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Merges empty segments and resolves `.` and `..` (which never climb above the root).
fn resolve_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, GatewayError> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in ["/", "/api", "/api/v1/models", "/api/", "/a.b/c-d_e~f", "/x/.hidden", "/x/..y"] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn bypass_attempts_resolve_to_the_real_path() {
        let cases = [
            ("//admin", "/admin"),
            ("/admin/./", "/admin/"),
            ("/%61dmin", "/admin"),
            ("/x/../admin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/x/%2E%2e/admin", "/admin"),
            ("/../../admin", "/admin"),
            ("/admin/.", "/admin/"),
            ("/admin/x/..", "/admin/"),
            ("///", "/"),
            ("/a//b///c", "/a/b/c"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/.", "/"),
        ];
        for (raw, want) in cases {
            assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for raw in [
            "/admin%2f",
            "/admin%2Fx",
            "/a%5cb",
            "/a\\b",
            "/admin;x",
            "/..;/admin",
            "/a%3bb",
            "/a%00",
            "/a%0d%0a",
            "/a%7f",
            "/a%",
            "/a%4",
            "/a%zz",
            "/a%+1",
            "admin",
            "",
            "*",
            "/caf\u{e9}",
        ] {
            assert!(matches!(norm(raw), Err(GatewayError::BadPath(_))), "{raw:?} should be refused");
        }
    }
}
