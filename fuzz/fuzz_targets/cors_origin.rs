//! CORS origin matching on arbitrary `Origin` values.
//!
//! Properties: an allowed origin is one of the listed ones, or `https://LABELS.example.com`
//! with at least one label, no port, no path and no userinfo; `null` is never allowed unless
//! listed; a preflight answer only ever names the origin it was asked for.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::LazyLock;

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use pingora::http::RequestHeader;
use portcullis::config::Runtime;

static RUNTIME: LazyLock<std::sync::Arc<Runtime>> = LazyLock::new(|| {
    common::runtime(
        "[cors]\nallowed_origins = [\"http://localhost:3000\", \"https://*.example.com\"]\nallow_credentials = true\n",
    )
});

fuzz_target!(|data: &[u8]| {
    let Ok(origin) = HeaderValue::from_bytes(data) else { return };
    let cors = RUNTIME.cors.as_ref().expect("[cors] is configured");
    let mut req = RequestHeader::build("OPTIONS", b"/", None).unwrap();
    req.insert_header("origin", origin.clone()).unwrap();
    req.insert_header("access-control-request-method", "GET").unwrap();
    let Some(allowed) = cors.allow_origin(&req) else {
        assert!(cors.answer_preflight(&req, &http::Method::GET).is_err());
        return;
    };
    assert_eq!(allowed, origin, "only the origin asked for is ever allowed");
    let text = origin.to_str().expect("allowed origins are ASCII");
    if text != "http://localhost:3000" {
        let host = text.strip_prefix("https://").expect("wildcard origins are https");
        let label = host.strip_suffix(".example.com").expect("under example.com");
        assert!(!label.is_empty(), "{text:?}");
        assert!(!host.contains([':', '/', '@', '?', '#']), "{text:?}");
    }
    assert_ne!(text, "null");
    let answer = cors.answer_preflight(&req, &http::Method::GET).expect("an allowed origin's preflight passes");
    assert_eq!(answer.headers.get("access-control-allow-origin"), Some(&origin));
});
