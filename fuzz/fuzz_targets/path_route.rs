//! Path canonicalisation and route lookup on arbitrary request targets.
//!
//! Properties: a canonical path is a fixed point of canonicalisation, starts with `/`, and never
//! holds `//`, `/./`, `/../`, a trailing `/.` or `/..`, an encoded slash or backslash, a `%25`
//! before hex digits, or a `;`; the route routing picks is a segment-wise prefix of it.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use pingora::http::RequestHeader;
use portcullis::config::Runtime;
use portcullis::pipeline::admit::{self, Admission, Routing};
use portcullis::pipeline::path;

static RUNTIME: LazyLock<std::sync::Arc<Runtime>> = LazyLock::new(|| {
    common::runtime(
        r#"
[cors]
allowed_origins = ["https://app.example.com"]
[[route]]
name = "root"
path = "/"
upstream = "api"
auth = "none"
[[route]]
name = "admin"
path = "/admin"
upstream = "api"
[[route]]
name = "models"
path = "/api/v1/models"
methods = ["GET", "POST"]
upstream = "api"
[[route]]
name = "tenant"
host = "a.example.com"
path = "/api"
upstream = "api"
"#,
    )
});

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    if let Ok(canonical) = path::normalize(raw) {
        let c: &str = &canonical;
        assert!(c.starts_with('/'), "{c:?}");
        for bad in ["//", "/./", "/../", ";", "\\"] {
            assert!(!c.contains(bad), "{raw:?} -> {c:?} holds {bad:?}");
        }
        assert!(!c.ends_with("/.") && !c.ends_with("/.."), "{raw:?} -> {c:?}");
        let upper = c.to_ascii_uppercase();
        for bad in ["%2F", "%5C", "%3B"] {
            assert!(!upper.contains(bad), "{raw:?} -> {c:?}");
        }
        let bytes = c.as_bytes();
        for i in 0..bytes.len().saturating_sub(4) {
            if &upper.as_bytes()[i..i + 3] == b"%25" {
                assert!(!(bytes[i + 3].is_ascii_hexdigit() && bytes[i + 4].is_ascii_hexdigit()), "{c:?}");
            }
        }
        assert_eq!(path::normalize(c).as_deref(), Ok(c), "not a fixed point: {raw:?} -> {c:?}");
    }
    // The whole routing step, on the target as a request line would carry it.
    let rt = &**RUNTIME;
    for host in ["localhost", "a.example.com"] {
        for method in ["GET", "OPTIONS"] {
            let Ok(mut req) = RequestHeader::build(method, data, None) else { continue };
            if method == "OPTIONS" {
                let _ = req.insert_header("origin", "https://app.example.com");
                let _ = req.insert_header("access-control-request-method", "POST");
            }
            let _ = req.insert_header("host", host);
            let mut admission = Admission::arrive(rt, &req, std::net::IpAddr::from([127, 0, 0, 1]));
            let routed = admit::route(rt, &req, None, &mut admission);
            if let (Ok(Routing::Request | Routing::Preflight { .. }), Some(id)) = (routed, admission.route) {
                let prefix = &*rt.routes.get(id).path;
                let c = admission.canonical_path.as_deref().unwrap_or(req.uri.path());
                let segment_prefix = prefix == "/"
                    || c == prefix
                    || (c.starts_with(prefix) && c.as_bytes().get(prefix.len()) == Some(&b'/'));
                assert!(segment_prefix, "{c:?} routed to {prefix:?}");
            }
        }
    }
});
