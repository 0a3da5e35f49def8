//! The default configuration: `builtin:echo` answers with the request as an upstream would
//! receive it, so the gateway runs on a fresh machine with nothing behind it.
#![allow(clippy::unwrap_used)]

mod common;

use common::{assert_error, raw, repo_root, Gateway};

async fn default_gateway() -> Gateway {
    let text = std::fs::read_to_string(repo_root().join("conf/gateway.toml")).unwrap();
    assert!(text.contains("address = \"127.0.0.1:8080\"") && text.contains("address = \"127.0.0.1:9100\""));
    // The shipped admin port is not the test's to take: another gateway may hold it.
    let admin = common::reserve_addr();
    Gateway::start_from(|addr| {
        text.replace("127.0.0.1:8080", &addr.to_string()).replace("127.0.0.1:9100", &admin.to_string())
    })
    .await
}

#[tokio::test]
async fn default_config_echoes_the_upstream_view_of_a_request() {
    let gw = default_gateway().await;
    let req = "POST /api/v1//%6dodels/7?limit=5 HTTP/1.1\r\nHost: localhost\r\nX-Auth-Subject: forged\r\nX-Request-Id: abc-123\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    // POST is not allowed on models-read: 405 first.
    let resp = raw(gw.addr, req.as_bytes()).await;
    assert_error(&resp, 405, "METHOD_NOT_ALLOWED");

    let req = req.replace("POST", "GET");
    let resp = raw(gw.addr, req.as_bytes()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-request-id"), Some("abc-123"));
    let seen = resp.json();
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["path"], "/api/v1/models/7");
    assert_eq!(seen["query"], "limit=5");
    assert_eq!(seen["body_bytes"], 5);
    assert_eq!(seen["headers"]["host"], "localhost");
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http");
    assert_eq!(seen["headers"]["x-request-id"], "abc-123");
    assert!(seen["headers"].get("x-auth-subject").is_none());
    assert!(seen["headers"].get("connection").is_none());
}

#[tokio::test]
async fn default_config_refuses_unknown_hosts_and_paths() {
    let gw = default_gateway().await;
    let resp = raw(gw.addr, b"GET /api/v1/models HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n").await;
    assert_error(&resp, 421, "HOST_NOT_ALLOWED");
    let resp = raw(gw.addr, b"GET /admin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert_error(&resp, 404, "ROUTE_NOT_FOUND");
}

#[tokio::test]
async fn keep_alive_connections_serve_several_requests() {
    let gw = default_gateway().await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    for i in 0..3 {
        use tokio::io::AsyncWriteExt;
        let req = format!("GET /health?n={i} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let resp = common::read_response(&mut stream).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json()["query"], format!("n={i}"));
    }
}
