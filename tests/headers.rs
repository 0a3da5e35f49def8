//! Every header the README lists as removed from client requests, or overridden by the gateway,
//! sent by an untrusted client and by a trusted proxy, as the upstream receives it.
//!
//! Who does the work: Pingora 0.9's default upstream request policy (which the gateway keeps)
//! strips the standard hop-by-hop headers (`Connection`, `Keep-Alive`, `Proxy-Connection`,
//! `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-Authorization`,
//! `Proxy-Authenticate`, `HTTP2-Settings`) and the headers named in `Connection` before the
//! gateway's `upstream_request_filter` runs, so a test of those passes without the gateway
//! doing anything (`tests/forward.rs` has one; the unit tests in `src/pipeline/forward.rs` cover
//! the gateway's half). The one hop-by-hop case left to the gateway is a WebSocket upgrade,
//! which Pingora's policy forwards (`Connection: Upgrade`, `Upgrade: websocket`). Everything
//! else here (identity and underscore names, routing overrides, client-address assertions,
//! forwarded aliases, client certificates, the `X-Forwarded-*` values, the origin-form target)
//! only the gateway removes or sets. (Checked against a bare Pingora 0.9.1 proxy with no
//! filters: it forwarded every one of those, the WebSocket handshake and an absolute-form target
//! as sent, and stripped the hop-by-hop ones above.) The tests also send the same headers
//! straight to the upstream, to show they arrive when nothing removes them.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::{raw, Gateway, RawResponse, Upstream};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

const KEY: &str = "pcs_headers0a9c3b7d2e4f6a8b0c1d2e3f40516273849a5b6c7d8e9f0a1b2c3d4e5f6";

/// `X-HTTP-Method-Override` and the others that make a backend serve another method or path.
const ROUTING_OVERRIDES: [(&str, &str); 6] = [
    ("X-HTTP-Method-Override", "DELETE"),
    ("X-HTTP-Method", "DELETE"),
    ("X-Method-Override", "DELETE"),
    ("X-Original-URL", "/admin"),
    ("X-Rewrite-URL", "/admin"),
    ("X-Original-Method", "DELETE"),
];

/// Client-address and proxy-path assertions, believed only from trusted proxies (values a
/// trusted proxy's checks accept, for the host `localhost` over https).
const PROXY_ASSERTIONS: [(&str, &str); 8] = [
    ("Forwarded", "for=198.51.100.7;proto=https;host=\"localhost:8443\""),
    ("X-Real-IP", "198.51.100.7"),
    ("True-Client-IP", "198.51.100.7"),
    ("X-Client-IP", "198.51.100.7"),
    ("X-Cluster-Client-IP", "198.51.100.7"),
    ("X-Forwarded-Port", "8443"),
    ("X-Forwarded-Prefix", "/api"),
    ("X-Forwarded-Server", "proxy.example"),
];

/// Other spellings of the forwarded scheme and host: removed from everyone.
const FORWARDED_ALIASES: [(&str, &str); 10] = [
    ("X-Forwarded-Ssl", "on"),
    ("X-Forwarded-Scheme", "https"),
    ("X-Forwarded-Protocol", "https"),
    ("X-Proxied-Https", "on"),
    ("X-ARR-SSL", "on"),
    ("Front-End-Https", "on"),
    ("X-Url-Scheme", "https"),
    ("X-Host", "evil.example"),
    ("X-Original-Host", "evil.example"),
    ("X-HTTP-Host-Override", "evil.example"),
];

/// Client certificates as TLS-terminating proxies pass them on: removed from everyone.
const CLIENT_CERTIFICATES: [(&str, &str); 9] = [
    ("Client-Cert", ":MIIBszCCAVmgAwIBAgIUYWRtaW4=:"),
    ("Client-Cert-Chain", ":MIIBszCCAVmgAwIBAgIUY2E=:"),
    ("X-Forwarded-Client-Cert", "Hash=abc;Subject=\"CN=admin\";URI=spiffe://corp/admin"),
    ("X-Client-Cert", "-----BEGIN%20CERTIFICATE-----"),
    ("X-SSL-Client-Cert", "-----BEGIN%20CERTIFICATE-----"),
    ("X-SSL-Client-Verify", "SUCCESS"),
    ("X-SSL-Client-DN", "CN=admin,O=Corp"),
    ("X-SSL-Client-S-DN", "CN=admin,O=Corp"),
    ("SSL-Client-Cert", "-----BEGIN%20CERTIFICATE-----"),
];

/// Identity headers only the gateway sets, in several spellings.
const IDENTITY: [(&str, &str); 7] = [
    ("X-Auth-Subject", "admin"),
    ("x-auth-method", "api_key"),
    ("X-AUTH-KEY-ID", "root"),
    ("X-Auth-Issuer", "https://evil.example/"),
    ("X-Auth-Permissions", "write_config,manage_users"),
    ("X-Auth-Email", "ceo@example.com"),
    ("X-Auth-", "empty suffix"),
];

/// Names with `_`, which CGI-style servers read as their dash spelling.
const UNDERSCORES: [(&str, &str); 7] = [
    ("X_Auth_Subject", "admin"),
    ("x-auth_permissions", "manage_users"),
    ("X_Forwarded_For", "6.6.6.6"),
    ("X_Forwarded_Proto", "https"),
    ("X_Forwarded_Host", "evil.example"),
    ("X_Real_IP", "6.6.6.6"),
    ("Custom_Header", "x"),
];

/// Removed whoever sends them, trusted proxies included.
fn removed_from_everyone() -> Vec<(&'static str, &'static str)> {
    [&ROUTING_OVERRIDES[..], &FORWARDED_ALIASES, &CLIENT_CERTIFICATES, &IDENTITY, &UNDERSCORES].concat()
}

fn config(upstream: SocketAddr, trusted: &str) -> String {
    format!(
        r#"
[server]
allowed_hosts = ["localhost"]
trusted_proxies = [{trusted}]

[[upstream]]
name = "api"
targets = ["{upstream}"]

[[route]]
name = "open"
path = "/"
upstream = "api"
auth = "none"

[[route]]
name = "keyed"
path = "/keyed"
upstream = "api"
permissions = ["read"]

[auth]
[[auth.api_key]]
id = "svc"
hash = "sha256:{hash}"
permissions = ["read"]
"#,
        hash = hex::encode(Sha256::digest(KEY.as_bytes())),
    )
}

/// `GET target` for `localhost` with `headers`, on a connection of its own.
fn request(target: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    req.into_bytes()
}

/// What the upstream behind `addr` (the gateway, or the upstream itself) received: its headers,
/// names in lower case, each with its values.
async fn received(addr: SocketAddr, req: &[u8]) -> Map<String, Value> {
    let resp = raw(addr, req).await;
    answer(&resp)["headers"].as_object().unwrap().clone()
}

fn answer(resp: &RawResponse) -> Value {
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    resp.json()
}

/// Shows that the upstream receives every one of `headers` when nothing strips them: a test
/// that they are missing behind the gateway can fail.
async fn arrive_directly(upstream: &Upstream, headers: &[(&str, &str)]) {
    let direct = received(upstream.addr, &request("/direct", headers)).await;
    for (name, value) in headers {
        assert_eq!(direct.get(&name.to_ascii_lowercase()), Some(&json!([value])), "{name} straight to the upstream");
    }
}

/// The names of `headers` the upstream got.
fn present<'a>(seen: &Map<String, Value>, headers: &[(&'a str, &str)]) -> Vec<&'a str> {
    headers.iter().map(|(name, _)| *name).filter(|name| seen.contains_key(&name.to_ascii_lowercase())).collect()
}

#[tokio::test]
async fn every_reserved_header_from_an_untrusted_client_is_removed() {
    let upstream = Upstream::start("api").await;
    let gw = Gateway::start(&config(upstream.addr, "")).await;
    let mut sent = removed_from_everyone();
    sent.extend_from_slice(&PROXY_ASSERTIONS);
    sent.push(("X-End-To-End", "kept"));
    arrive_directly(&upstream, &sent).await;

    let seen = received(gw.addr, &request("/x", &sent)).await;
    let leaked = present(&seen, &sent[..sent.len() - 1]);
    assert!(leaked.is_empty(), "forwarded from an untrusted client: {leaked:?}\n{seen:?}");
    assert!(!seen.keys().any(|name| name.starts_with("x-auth-") || name.contains('_')), "{seen:?}");
    // An ordinary end-to-end header passes.
    assert_eq!(seen["x-end-to-end"], json!(["kept"]));
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn each_reserved_header_is_removed_on_its_own() {
    // One at a time too: a header must not need company (a Connection listing, another
    // reserved name) to be removed.
    let upstream = Upstream::start("api").await;
    let gw = Gateway::start(&config(upstream.addr, "")).await;
    let mut sent = removed_from_everyone();
    sent.extend_from_slice(&PROXY_ASSERTIONS);
    for header in &sent {
        let seen = received(gw.addr, &request("/x", &[*header])).await;
        assert!(present(&seen, &[*header]).is_empty(), "{} was forwarded: {seen:?}", header.0);
    }
    assert_eq!(upstream.hits(), sent.len());
}

#[tokio::test]
async fn the_forwarding_headers_of_an_untrusted_client_are_the_gateways_own() {
    let upstream = Upstream::start("api").await;
    let gw = Gateway::start(&config(upstream.addr, "")).await;
    let forged = [
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-For", "7.7.7.7, 8.8.8.8"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
    ];
    let direct = received(upstream.addr, &request("/direct", &forged)).await;
    assert_eq!(direct["x-forwarded-for"], json!(["6.6.6.6", "7.7.7.7, 8.8.8.8"]));

    let seen = received(gw.addr, &request("/x", &forged)).await;
    assert_eq!(seen["x-forwarded-for"], json!(["127.0.0.1"]), "the peer replaces what the client said");
    assert_eq!(seen["x-forwarded-proto"], json!(["http"]));
    assert_eq!(seen["x-forwarded-host"], json!(["localhost"]));
    assert_eq!(seen["host"], json!(["localhost"]));
    assert!(seen.get("forwarded").is_none(), "{seen:?}");

    // Without any: the gateway's own values all the same; the host keeps the port it was sent with.
    let req = b"GET /x HTTP/1.1\r\nHost: localhost:8080\r\nConnection: close\r\n\r\n";
    let seen = received(gw.addr, req).await;
    assert_eq!(seen["x-forwarded-for"], json!(["127.0.0.1"]));
    assert_eq!(seen["x-forwarded-proto"], json!(["http"]));
    assert_eq!(seen["x-forwarded-host"], json!(["localhost:8080"]));
    assert_eq!(seen["host"], json!(["localhost:8080"]));
    assert_eq!(upstream.hits(), 3);
}

#[tokio::test]
async fn an_absolute_form_target_goes_upstream_in_origin_form_with_the_validated_host() {
    let upstream = Upstream::start("api").await;
    let gw = Gateway::start(&config(upstream.addr, "")).await;
    let req = b"GET http://localhost/abs/x?q=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let seen = answer(&raw(gw.addr, req).await);
    assert_eq!(seen["target"], "/abs/x?q=1");
    assert_eq!(seen["headers"]["host"], json!(["localhost"]));
    assert_eq!(seen["headers"]["x-forwarded-host"], json!(["localhost"]));
    assert_eq!(upstream.hits(), 1);
}

/// Pingora's request policy forwards a WebSocket handshake (it writes `Connection: Upgrade` and
/// `Upgrade: websocket` back after stripping hop-by-hop headers): the gateway does not forward
/// upgrades, so it is the gateway that must remove them.
#[tokio::test]
async fn a_websocket_upgrade_is_not_forwarded() {
    let upstream = Upstream::start("api").await;
    let gw = Gateway::start(&config(upstream.addr, "")).await;
    let req = b"GET /socket HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let direct =
        received(upstream.addr, b"GET /d HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: close\r\n\r\n").await;
    assert_eq!(direct["upgrade"], json!(["websocket"]));

    let resp = raw(gw.addr, req).await;
    let seen = answer(&resp);
    assert_eq!(seen["target"], "/socket");
    let headers = seen["headers"].as_object().unwrap();
    assert!(headers.get("upgrade").is_none(), "{headers:?}");
    assert!(headers.get("connection").is_none(), "{headers:?}");
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn identity_and_credentials_are_the_gateways_on_an_authenticated_route() {
    let upstream = Upstream::start("api").await;
    let gw = Gateway::start(&config(upstream.addr, "")).await;
    let bearer = format!("Bearer {KEY}");
    for credential in [("X-API-Key", KEY), ("Authorization", bearer.as_str())] {
        let mut sent = vec![credential];
        sent.extend_from_slice(&IDENTITY);
        sent.extend_from_slice(&UNDERSCORES);
        let seen = received(gw.addr, &request("/keyed", &sent)).await;
        assert_eq!(seen["x-auth-subject"], json!(["svc"]), "{seen:?}");
        assert_eq!(seen["x-auth-method"], json!(["api_key"]));
        assert_eq!(seen["x-auth-key-id"], json!(["svc"]));
        assert_eq!(seen["x-auth-permissions"], json!(["read"]));
        for gone in ["x-auth-issuer", "x-auth-email", "x-auth-", "x-api-key", "authorization"] {
            assert!(seen.get(gone).is_none(), "{gone} was forwarded with {}: {seen:?}", credential.0);
        }
        assert!(!seen.keys().any(|name| name.contains('_')), "{seen:?}");
    }
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn a_trusted_proxys_forwarding_headers_are_kept_and_the_rest_still_removed() {
    let upstream = Upstream::start("api").await;
    // The test client is 127.0.0.1: a trusted proxy.
    let gw = Gateway::start(&config(upstream.addr, "\"127.0.0.1/32\"")).await;
    let removed = removed_from_everyone();
    let mut sent = vec![
        ("X-Forwarded-For", "198.51.100.7"),
        ("X-Forwarded-For", "203.0.113.9, 10.0.0.1"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "localhost:8443"),
    ];
    sent.extend_from_slice(&PROXY_ASSERTIONS);
    sent.extend_from_slice(&removed);

    let seen = received(gw.addr, &request("/x", &sent)).await;
    // X-Forwarded-For: every value the proxy sent, in order, and the proxy itself.
    assert_eq!(seen["x-forwarded-for"], json!(["198.51.100.7, 203.0.113.9, 10.0.0.1, 127.0.0.1"]));
    // X-Forwarded-Proto and -Host check out (http(s); the routed host, another port): kept.
    assert_eq!(seen["x-forwarded-proto"], json!(["https"]));
    assert_eq!(seen["x-forwarded-host"], json!(["localhost:8443"]));
    assert_eq!(seen["host"], json!(["localhost"]));
    // Forwarded (sound, its host and proto agreeing), the client-address assertions, a
    // well-formed port and prefix, X-Forwarded-Server: kept as sent.
    for (name, value) in PROXY_ASSERTIONS {
        assert_eq!(seen.get(&name.to_ascii_lowercase()), Some(&json!([value])), "{name} from a trusted proxy");
    }
    // Aliases, client certificates, identity, underscores and routing overrides: still removed.
    let leaked = present(&seen, &removed);
    assert!(leaked.is_empty(), "forwarded from a trusted proxy: {leaked:?}\n{seen:?}");
    assert!(!seen.keys().any(|name| name.starts_with("x-auth-") || name.contains('_')), "{seen:?}");

    // Behind a trusted proxy, the identity is still only the gateway's.
    let mut keyed = vec![("X-API-Key", KEY)];
    keyed.extend_from_slice(&IDENTITY);
    let seen = received(gw.addr, &request("/keyed", &keyed)).await;
    assert_eq!(seen["x-auth-subject"], json!(["svc"]));
    assert_eq!(seen["x-auth-key-id"], json!(["svc"]));
    assert!(seen.get("x-auth-email").is_none() && seen.get("x-auth-issuer").is_none(), "{seen:?}");
    assert_eq!(upstream.hits(), 2);
}

/// Headers named in `Connection` are removed (nine tokens at most); a `Connection` with more, or
/// names `Host` or one of the forwarding headers the gateway sets, is refused by Pingora's
/// request policy (which runs before the gateway's filter) with 400 `VALIDATION_ERROR`, and
/// reaches no upstream: a client cannot make a hop drop what the gateway vouches for.
#[tokio::test]
async fn headers_named_in_connection_are_removed_or_the_request_refused() {
    let upstream = Upstream::start("api").await;
    let gw = Gateway::start(&config(upstream.addr, "")).await;
    let listed = |n: usize| (1..=n).map(|i| format!("X-Hop-{i}")).collect::<Vec<_>>();
    let with_connection = |names: &[String]| {
        let mut req = format!("GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close, {}\r\n", names.join(", "));
        for name in names {
            req.push_str(&format!("{name}: 1\r\n"));
        }
        req.push_str("\r\n");
        req
    };
    // With `close`, nine tokens.
    let seen = received(gw.addr, with_connection(&listed(8)).as_bytes()).await;
    assert!(!seen.keys().any(|name| name.starts_with("x-hop-")), "{seen:?}");
    assert_eq!(upstream.hits(), 1);
    for refused in [
        with_connection(&listed(10)),
        with_connection(&["X-Forwarded-For".into(), "X-Forwarded-Host".into()]),
        "GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close, Host\r\n\r\n".to_string(),
    ] {
        let resp = raw(gw.addr, refused.as_bytes()).await;
        common::assert_error(&resp, 400, "VALIDATION_ERROR");
    }
    assert_eq!(upstream.hits(), 1, "a refused request reached the upstream");
}
