//! `X-Forwarded-For`, `X-Forwarded-Host`, `X-Forwarded-Proto` and `Forwarded` on arbitrary
//! values, from a trusted proxy and from a client.
//!
//! Properties: an untrusted peer is always the client whatever it sends; what reaches the
//! upstream as forwarded host names the routed host, as forwarded scheme is one scheme, http or
//! https, which every `Forwarded` proto agrees with, as forwarded port one port; from an
//! untrusted peer there is no `Forwarded` at all.
#![no_main]

use std::net::IpAddr;

use http::{HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use pingora::http::RequestHeader;
use portcullis::pipeline::client::TrustedProxies;
use portcullis::pipeline::forward::{prepare_upstream_request, Forwarding};
use portcullis::pipeline::host::parse_authority;

const NAMES: [&str; 5] = ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "forwarded", "x-forwarded-port"];

fuzz_target!(|data: &[u8]| {
    let proxies = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
    let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
    // The input: header values separated by NUL, assigned to the four names in turn.
    for (i, value) in data.split(|&b| b == 0).enumerate().take(10) {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            req.append_header(HeaderName::from_static(NAMES[i % NAMES.len()]), value).unwrap();
        }
    }
    let untrusted: IpAddr = "203.0.113.9".parse().unwrap();
    assert_eq!(proxies.client_ip(untrusted, &req.headers), untrusted);
    let _ = proxies.client_ip("10.1.2.3".parse().unwrap(), &req.headers);

    let host = HeaderValue::from_static("api.example.com:8443");
    let id = (HeaderName::from_static("x-request-id"), HeaderValue::from_static("r"));
    for peer in ["10.1.2.3", "203.0.113.9"] {
        let mut forwarded = req.clone();
        let fwd = Forwarding {
            peer: peer.parse().unwrap(),
            scheme: "https",
            host: &host,
            canonical_path: None,
            request_id: (&id.0, &id.1),
            identity: None,
            strip_credentials: None,
        };
        if prepare_upstream_request(&mut forwarded, &proxies, &fwd).is_err() {
            continue;
        }
        let headers = &forwarded.headers;
        for line in headers.get_all("x-forwarded-host") {
            for entry in line.as_bytes().split(|&b| b == b',') {
                let name = parse_authority(entry.trim_ascii()).expect("a forwarded host is an authority");
                assert_eq!(name.as_str(), "api.example.com");
            }
        }
        let schemes = entries(headers, "x-forwarded-proto");
        let scheme = schemes.first().expect("a forwarded scheme is always sent").clone();
        assert!(scheme == b"http" || scheme == b"https", "{schemes:?}");
        assert!(schemes.iter().all(|s| *s == scheme), "one scheme: {schemes:?}");
        let ports = entries(headers, "x-forwarded-port");
        assert!(ports.iter().all(|p| *p == ports[0]), "one port: {ports:?}");
        if peer.starts_with("203.") {
            assert!(!headers.contains_key("forwarded"));
            assert_eq!(headers.get("x-forwarded-for").unwrap(), peer);
        }
        for line in headers.get_all("forwarded") {
            for pair in line.as_bytes().split(|&b| b == b',' || b == b';') {
                let pair = pair.trim_ascii();
                if pair.len() > 6 && pair[..6].eq_ignore_ascii_case(b"proto=") {
                    let value = pair[6..].strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(&pair[6..]);
                    assert_eq!(value.to_ascii_lowercase(), scheme, "Forwarded's proto is X-Forwarded-Proto's");
                }
                if pair.len() > 5 && pair[..5].eq_ignore_ascii_case(b"host=") {
                    let value = pair[5..].strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(&pair[5..]);
                    let name = parse_authority(value).expect("a Forwarded host is an authority");
                    assert_eq!(name.as_str(), "api.example.com");
                }
            }
        }
    }
});

/// Every comma-separated entry of every line of `name`, trimmed and lower-cased.
fn entries(headers: &http::HeaderMap, name: &str) -> Vec<Vec<u8>> {
    let lines = headers.get_all(name).into_iter();
    lines.flat_map(|line| line.as_bytes().split(|&b| b == b',').map(|e| e.trim_ascii().to_ascii_lowercase())).collect()
}
