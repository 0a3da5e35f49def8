//! Route matching: longest segment-aware prefix, methods (405 + Allow), hosts, 404.
#![allow(clippy::unwrap_used)]

mod common;

use common::{assert_error, get_with_host, raw, Gateway, Upstream};

async fn setup() -> (Gateway, Upstream, Upstream) {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let config = format!(
        r#"
[server]
allowed_hosts = ["localhost", "special.example.com"]

[[upstream]]
name = "a"
targets = ["{}"]

[[upstream]]
name = "b"
targets = ["{}"]

[[route]]
name = "models-read"
path = "/api/v1/models"
methods = ["GET", "HEAD"]
upstream = "a"
auth = "none"

[[route]]
name = "models-write"
path = "/api/v1/models"
methods = ["POST"]
upstream = "b"
auth = "none"

[[route]]
name = "api"
path = "/api"
upstream = "a"
auth = "none"

[[route]]
name = "special"
host = "special.example.com"
path = "/api"
methods = ["GET"]
upstream = "b"
auth = "none"
"#,
        a.addr, b.addr
    );
    (Gateway::start(&config).await, a, b)
}

async fn send(gw: &Gateway, method: &str, path: &str, host: &str) -> common::RawResponse {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    raw(gw.addr, req.as_bytes()).await
}

#[tokio::test]
async fn longest_prefix_then_method() {
    let (gw, _a, _b) = setup().await;
    let resp = get_with_host(gw.addr, "/api/v1/models/7", "localhost").await;
    assert_eq!(resp.json()["upstream"], "a");
    let resp = send(&gw, "POST", "/api/v1/models", "localhost").await;
    assert_eq!(resp.json()["upstream"], "b");
    // Segment-aware: /api/v1/modelsx is not under /api/v1/models, but is under /api.
    let resp = send(&gw, "POST", "/api/v1/modelsx", "localhost").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["upstream"], "a");
}

#[tokio::test]
async fn wrong_method_is_405_with_allow_and_no_fallback() {
    let (gw, a, b) = setup().await;
    let resp = send(&gw, "DELETE", "/api/v1/models/7", "localhost").await;
    assert_error(&resp, 405, "METHOD_NOT_ALLOWED");
    assert_eq!(resp.header("allow"), Some("GET, HEAD, POST"));
    assert_eq!(resp.json()["error"]["details"]["allowed_methods"], serde_json::json!(["GET", "HEAD", "POST"]));
    assert_eq!(a.hits() + b.hits(), 0);
}

#[tokio::test]
async fn head_and_options_are_methods_like_any_other() {
    let (gw, a, _b) = setup().await;
    // models-read allows HEAD explicitly; the catch-all /api allows everything.
    let head =
        common::raw_head(gw.addr, b"HEAD /api/v1/models HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await;
    assert_eq!(head.status, 200);
    let resp = send(&gw, "OPTIONS", "/api/v1/models", "localhost").await;
    assert_error(&resp, 405, "METHOD_NOT_ALLOWED");
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn the_gateway_request_id_replaces_one_the_upstream_sends() {
    let (gw, _a, _b) = setup().await;
    let req =
        "GET /api/upstream-id HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: client-id-1\r\nConnection: close\r\n\r\n";
    let resp = raw(gw.addr, req.as_bytes()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-upstream"), Some("a"), "the upstream answered");
    let ids: Vec<&str> = resp.headers.iter().filter(|(k, _)| k == "x-request-id").map(|(_, v)| v.as_str()).collect();
    assert_eq!(ids, ["client-id-1"]);
}

#[tokio::test]
async fn unknown_path_is_404() {
    let (gw, a, b) = setup().await;
    for path in ["/", "/apix", "/other/api"] {
        let resp = get_with_host(gw.addr, path, "localhost").await;
        assert_error(&resp, 404, "ROUTE_NOT_FOUND");
    }
    assert_eq!(a.hits() + b.hits(), 0);
}

#[tokio::test]
async fn host_specific_route_wins_for_its_host() {
    let (gw, _a, _b) = setup().await;
    let resp = get_with_host(gw.addr, "/api/x", "special.example.com").await;
    assert_eq!(resp.json()["upstream"], "b");
    let resp = send(&gw, "POST", "/api/x", "special.example.com").await;
    assert_error(&resp, 405, "METHOD_NOT_ALLOWED");
    assert_eq!(resp.header("allow"), Some("GET"));
    let resp = get_with_host(gw.addr, "/api/x", "localhost").await;
    assert_eq!(resp.json()["upstream"], "a");
}
