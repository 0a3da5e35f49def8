//! Host allow-list: 421 for hosts not served, 400 for missing or malformed ones, over HTTP/1.1
//! (Host header and absolute-form targets) and HTTP/2 (`:authority`).
#![allow(clippy::unwrap_used)]

mod common;

use common::{assert_error, assert_parser_refusal, get_with_host, raw, Gateway, Upstream};

async fn setup() -> (Gateway, Upstream) {
    let upstream = Upstream::start("api").await;
    let config = format!(
        r#"
[server]
allowed_hosts = ["example.com", "*.example.com", "localhost", "[::1]"]

[[upstream]]
name = "api"
targets = ["{}"]

[[route]]
name = "all"
path = "/"
upstream = "api"
auth = "none"
"#,
        upstream.addr
    );
    (Gateway::start_with(&config, "h2c = true").await, upstream)
}

#[tokio::test]
async fn allowed_hosts_pass_case_port_and_trailing_dot_ignored() {
    let (gw, upstream) = setup().await;
    for host in [
        "example.com",
        "Example.COM.",
        "EXAMPLE.com:8443",
        "api.example.com",
        "a.b.example.com",
        "localhost",
        "[::1]:80",
    ] {
        let resp = get_with_host(gw.addr, "/x", host).await;
        assert_eq!(resp.status, 200, "{host}: {}", String::from_utf8_lossy(&resp.body));
        let seen = resp.json();
        assert_eq!(seen["upstream"], "api");
        // The upstream sees the host the client addressed, and the same in X-Forwarded-Host.
        assert_eq!(seen["headers"]["host"][0], host);
        assert_eq!(seen["headers"]["x-forwarded-host"][0], host);
    }
    assert_eq!(upstream.hits(), 7);
}

#[tokio::test]
async fn other_hosts_get_421_and_never_reach_the_upstream() {
    let (gw, upstream) = setup().await;
    for host in ["evil.com", "example.com.evil.net", "evilexample.com", "evil-example.com", "example.co", "127.0.0.1"] {
        let resp = get_with_host(gw.addr, "/x", host).await;
        assert_error(&resp, 421, "HOST_NOT_ALLOWED");
    }
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn malformed_hosts_get_400() {
    let (gw, upstream) = setup().await;
    for host in ["example.com:99999", "example.com:", "exa mple.com", "example..com", "example.com:8o", ""] {
        let resp = get_with_host(gw.addr, "/x", host).await;
        assert_error(&resp, 400, "VALIDATION_ERROR");
    }
    // Userinfo never gets past Pingora's parser: `example.com:80@evil.com` is not example.com.
    for host in ["example.com:80@evil.com", "user@example.com"] {
        assert_parser_refusal(&get_with_host(gw.addr, "/x", host).await);
    }
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn missing_or_duplicate_host_gets_400() {
    let (gw, upstream) = setup().await;
    let resp = raw(gw.addr, b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_error(&resp, 400, "VALIDATION_ERROR");
    let resp =
        raw(gw.addr, b"GET /x HTTP/1.1\r\nHost: example.com\r\nHost: evil.com\r\nConnection: close\r\n\r\n").await;
    assert_parser_refusal(&resp);
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn absolute_form_targets_are_checked_and_forwarded_in_origin_form() {
    let (gw, upstream) = setup().await;
    // The authority in the target is what counts; a Host header naming another host is refused.
    let resp = raw(gw.addr, b"GET http://evil.com/x HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n").await;
    assert_parser_refusal(&resp);
    let resp = raw(gw.addr, b"GET http://evil.com/x HTTP/1.1\r\nHost: evil.com\r\nConnection: close\r\n\r\n").await;
    assert_error(&resp, 421, "HOST_NOT_ALLOWED");
    // Without a Host header the target's authority is the host.
    let resp = raw(gw.addr, b"GET http://evil.com/x HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_error(&resp, 421, "HOST_NOT_ALLOWED");
    assert_eq!(upstream.hits(), 0);

    let resp = raw(
        gw.addr,
        b"GET http://api.example.com/x?q=1 HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    let seen = resp.json();
    assert_eq!(seen["target"], "/x?q=1");
    assert_eq!(seen["headers"]["host"][0], "api.example.com");
}

/// One HTTP/2 (h2c, prior knowledge) request with the given `:authority`.
async fn h2_get(addr: std::net::SocketAddr, authority: &str) -> (u16, serde_json::Value) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get(format!("http://{authority}/h2")).body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        bytes.extend_from_slice(&chunk);
    }
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn http2_authority_is_checked() {
    let (gw, upstream) = setup().await;
    let (status, body) = h2_get(gw.addr, "evil.com").await;
    assert_eq!(status, 421);
    assert_eq!(body["error"]["code"], "HOST_NOT_ALLOWED");
    assert_eq!(upstream.hits(), 0);

    let (status, body) = h2_get(gw.addr, "api.example.com").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["host"][0], "api.example.com");
    assert_eq!(body["target"], "/h2");
    assert_eq!(upstream.hits(), 1);
}
