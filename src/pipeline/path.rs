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
//!   that saw another path), NUL and control characters, and malformed escapes;
//! - so is what a second decoding would turn into something else: `%25` followed by two hex
//!   digits (`/%252e%252e/admin` is `/%2e%2e/admin` to a backend that decodes again, and
//!   `/../admin` to one that decodes twice);
//! - and what Windows file systems resolve to another name: a segment holding `:$` (NTFS streams,
//!   `/admin::$INDEX_ALLOCATION` is the directory `/admin`) or an 8.3 short name (`~` and a
//!   digit: `/ADMINI~1` is `/administrator` on IIS).
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
    let canonical =
        if is_canonical(bytes) { Cow::Borrowed(raw) } else { Cow::Owned(resolve_segments(&decode(bytes)?)) };
    refuse_double_encoding(canonical.as_bytes())?;
    refuse_file_system_aliases(canonical.as_bytes())?;
    Ok(canonical)
}

/// Refuses a `%25` followed by two hex digits in the canonical path: decoded once more (by a
/// backend, or a second proxy), it is an escape, so `/%252e%252e/admin` would be `/../admin`.
/// Checked on the result, not the request: decoding `/%25%30%41` makes `%250A` of it.
fn refuse_double_encoding(path: &[u8]) -> Result<(), GatewayError> {
    let hex = |at: usize| path.get(at).is_some_and(u8::is_ascii_hexdigit);
    for i in memchr::memchr_iter(b'%', path) {
        if path.get(i + 1..i + 3) == Some(b"25") && hex(i + 3) && hex(i + 4) {
            return Err(GatewayError::BadPath("double-encoded percent sign in path"));
        }
    }
    Ok(())
}

/// Refuses a `_method` parameter in the query: Laravel, Symfony and other frameworks with
/// method override on serve `POST /models/7?_method=DELETE` as a DELETE, which the route's rules
/// were not checked for. The name is compared as PHP reads it: percent-decoded, `+` as a
/// space, leading spaces dropped, `.`, ` ` and `[` as `_`, in any case; `_method[]` too.
pub fn check_query(query: Option<&str>) -> Result<(), GatewayError> {
    let Some(query) = query else { return Ok(()) };
    for param in query.split(['&', ';']) {
        let name = param.split_once('=').map_or(param, |(name, _)| name);
        if name.len() >= 7 && is_method_override(name.as_bytes()) {
            return Err(GatewayError::BadRequest("a _method parameter (method override) is not allowed in the query"));
        }
    }
    Ok(())
}

/// Whether a raw query parameter name reads as `_method` to a framework.
fn is_method_override(raw: &[u8]) -> bool {
    const NAME: &[u8] = b"_method";
    let mut name = [0u8; 8];
    let mut len = 0;
    let mut i = 0;
    while i < raw.len() {
        let mut b = raw[i];
        i += 1;
        if b == b'%' {
            let value = raw
                .get(i..i + 2)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(value) = value {
                b = value;
                i += 2;
            }
        }
        if b == 0 {
            // PHP ends a name at a NUL: `_method%00x=DELETE` is `_method`.
            break;
        }
        let b = match b {
            b'+' | b' ' if len == 0 => continue,
            b'+' | b' ' | b'.' | b'[' => b'_',
            other => other.to_ascii_lowercase(),
        };
        if len == NAME.len() {
            // `_method[]` and `_method[x]` are `_method` to PHP.
            return name[..len] == *NAME && b == b'_';
        }
        name[len] = b;
        len += 1;
    }
    name[..len] == *NAME
}

/// Refuses the spellings Windows servers (IIS, and anything serving files from NTFS) resolve
/// to another name than the one routes compare: an alternate data stream (`:$`, such as
/// `::$DATA` and `:$i30:$INDEX_ALLOCATION`, with `:` and `$` raw or encoded) and an 8.3 short
/// name (`~` and a digit, such as `ADMINI~1`).
fn refuse_file_system_aliases(path: &[u8]) -> Result<(), GatewayError> {
    let encoded = |at: usize, escape: &[u8; 3]| path.get(at..at + 3).is_some_and(|e| e == escape);
    for (i, &b) in path.iter().enumerate() {
        match b {
            b'~' if path.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                return Err(GatewayError::BadPath("8.3 short name in path"));
            }
            b':' | b'%' => {
                let after = match b {
                    b':' => i + 1,
                    _ if encoded(i, b"%3A") => i + 3,
                    _ => continue,
                };
                if path.get(after) == Some(&b'$') || encoded(after, b"%24") {
                    return Err(GatewayError::BadPath("file system stream name in path"));
                }
            }
            _ => {}
        }
    }
    Ok(())
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

    #[test]
    fn method_overrides_in_the_query_are_refused_in_every_spelling() {
        for query in [
            "_method=DELETE",
            "a=1&_method=PUT",
            "_METHOD=DELETE",
            "%5Fmethod=DELETE",
            "%5f%6d%65%74%68%6f%64=DELETE",
            ".method=DELETE",
            "+_method=DELETE",
            "%20_method=DELETE",
            "  .method=DELETE",
            "[method=DELETE",
            "_method[]=DELETE",
            "_method",
            "x=1;_method=DELETE",
            "_method%00=DELETE",
            "_method%00x=DELETE",
        ] {
            assert!(matches!(check_query(Some(query)), Err(GatewayError::BadRequest(_))), "{query:?}");
        }
        for query in
            ["method=DELETE", "_methods=1", "my_method=x", "x=_method", "_metho=1", "__method=1", " method=1", ""]
        {
            assert_eq!(check_query(Some(query)), Ok(()), "{query:?}");
        }
        assert_eq!(check_query(None), Ok(()));
    }

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
            ("/a%25", "/a%25"),
            ("/a%25zz", "/a%25zz"),
            ("/~alice/x~", "/~alice/x~"),
            ("/a:b/$c", "/a:b/$c"),
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
            "/%252e%252e/admin",
            "/a%2525",
            "/x.7%250%35F/x",
            "/a%25%30%41",
            "/a%252F",
            "/admin::$INDEX_ALLOCATION/x",
            "/admin:$i30:$INDEX_ALLOCATION/x",
            "/secret.txt::$DATA",
            "/a%3A%3A%24DATA",
            "/a:%24DATA",
            "/ADMINI~1/x",
            "/x/PROGRA%7E1",
        ] {
            assert!(matches!(norm(raw), Err(GatewayError::BadPath(_))), "{raw:?} should be refused");
        }
    }
}
