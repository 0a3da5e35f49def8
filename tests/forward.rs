//! Header hygiene: forged identity and forwarding headers, hop-by-hop headers, request ids.
#![allow(clippy::unwrap_used)]

mod common;

use common::{raw, Gateway, Upstream};

fn config(upstream: std::net::SocketAddr, trusted: &str) -> String {
    format!(
        r#"
[server]
allowed_hosts = ["localhost"]
trusted_proxies = [{trusted}]

[[upstream]]
name = "api"
targets = ["{upstream}"]

[[route]]
name = "all"
path = "/"
upstream = "api"
auth = "none"
"#
    )
}

async fn get(gw: &Gateway, extra_headers: &str) -> common::RawResponse {
    let req = format!("GET /x HTTP/1.1\r\nHost: localhost\r\n{extra_headers}Connection: close\r\n\r\n");
    raw(gw.addr, req.as_bytes()).await
}

#[tokio::test]
async fn forged_identity_headers_never_reach_the_upstream() {
    let upstream = Upstream::start("api").await;
    let gw = Gateway::start(&config(upstream.addr, "")).await;
    let resp = get(
        &gw,
        "X-Auth-Subject: admin\r\nx-auth-permissions: write_config,manage_users\r\nX-AUTH-METHOD: api_key\r\nX-Auth-Key-Id: root\r\nX-Auth-Issuer: me\r\nX-Authenticated: kept\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    let headers = resp.json()["headers"].as_object().unwrap().clone();
    let forged: Vec<&String> = headers.keys().filter(|k| k.starts_with("x-auth-")).collect();
    assert!(forged.is_empty(), "forged identity headers forwarded: {forged:?}");
    // Only the X-Auth-* family is reserved.
    assert_eq!(headers["x-authenticated"][0], "kept");
}

#[tokio::test]
async fn underscore_spellings_and_routing_overrides_are_removed() {
    let upstream = Upstream::start("api").await;
    let gw = Gateway::start(&config(upstream.addr, "")).await;
    let resp = get(
        &gw,
        "X_Auth_Subject: admin\r\nx-auth_permissions: manage_users\r\nX_Forwarded_For: 6.6.6.6\r\nX-HTTP-Method-Override: DELETE\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nX-Real-IP: 6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    let headers = resp.json()["headers"].as_object().unwrap().clone();
    for gone in [
        "x_auth_subject",
        "x-auth_permissions",
        "x_forwarded_for",
        "x-http-method-override",
        "x-original-url",
        "x-rewrite-url",
        "x-real-ip",
        "true-client-ip",
    ] {
        assert!(!headers.contains_key(gone), "{gone} was forwarded: {headers:?}");
    }
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_replaced() {
    let upstream = Upstream::start("api").await;
    let gw = Gateway::start(&config(upstream.addr, "\"10.0.0.0/8\"")).await;
    let resp = get(
        &gw,
        "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.com\r\nForwarded: for=6.6.6.6;proto=https\r\n",
    )
    .await;
    let seen = resp.json();
    assert_eq!(seen["headers"]["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(seen["headers"]["x-forwarded-proto"], serde_json::json!(["http"]));
    assert_eq!(seen["headers"]["x-forwarded-host"], serde_json::json!(["localhost"]));
    assert!(seen["headers"].get("forwarded").is_none());
}

#[tokio::test]
async fn forwarding_headers_from_a_trusted_proxy_are_kept_and_appended() {
    let upstream = Upstream::start("api").await;
    let gw = Gateway::start(&config(upstream.addr, "\"127.0.0.0/8\"")).await;
    let resp = get(
        &gw,
        "X-Forwarded-For: 198.51.100.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: LocalHost:443\r\nForwarded: for=198.51.100.7;proto=https;host=localhost\r\n",
    )
    .await;
    let seen = resp.json();
    assert_eq!(seen["headers"]["x-forwarded-for"], serde_json::json!(["198.51.100.7, 127.0.0.1"]));
    assert_eq!(seen["headers"]["x-forwarded-proto"], serde_json::json!(["https"]));
    assert_eq!(seen["headers"]["x-forwarded-host"], serde_json::json!(["LocalHost:443"]));
    assert_eq!(seen["headers"]["forwarded"], serde_json::json!(["for=198.51.100.7;proto=https;host=localhost"]));
}

/// A front proxy that passes a client's own `X-Forwarded-Host` through would let the client pick
/// the host backends build links and choose tenants from: a trusted proxy's forwarded host must
/// name the host the request was routed on, and its scheme must be http or https.
#[tokio::test]
async fn a_trusted_proxys_forwarded_host_and_scheme_are_replaced_unless_they_check_out() {
    let upstream = Upstream::start("api").await;
    let gw = Gateway::start(&config(upstream.addr, "\"127.0.0.0/8\"")).await;
    for (sent, header, expected) in [
        ("X-Forwarded-Host: api.example.com\r\n", "x-forwarded-host", "localhost"),
        ("X-Forwarded-Host: localhost, evil.example\r\n", "x-forwarded-host", "localhost"),
        ("X-Forwarded-Host: localhost@evil.example\r\n", "x-forwarded-host", "localhost"),
        ("X-Forwarded-Proto: javascript\r\n", "x-forwarded-proto", "http"),
        ("X-Forwarded-Proto: https://evil.example\r\n", "x-forwarded-proto", "http"),
        (
            "Forwarded: for=198.51.100.7;host=evil.example\r\n",
            "forwarded",
            "for=127.0.0.1;host=\"localhost\";proto=http",
        ),
        ("Forwarded: proto=gopher\r\n", "forwarded", "for=127.0.0.1;host=\"localhost\";proto=http"),
        ("Forwarded: host=\"evil.example,localhost\"\r\n", "forwarded", "for=127.0.0.1;host=\"localhost\";proto=http"),
        ("X-Forwarded-Proto: https, http\r\n", "x-forwarded-proto", "http"),
        (
            "X-Forwarded-Proto: https\r\nForwarded: for=198.51.100.7;proto=http\r\n",
            "forwarded",
            "for=127.0.0.1;host=\"localhost\";proto=https",
        ),
    ] {
        let seen = get(&gw, sent).await.json();
        assert_eq!(seen["headers"][header], serde_json::json!([expected]), "{sent}");
    }
    // Other spellings of the scheme and host are removed, whoever sends them.
    let sent = "X-Forwarded-Ssl: on\r\nX-Host: evil.example\r\nX-Forwarded-Prefix: //evil.example\r\n\
                X-Forwarded-Port: 443, 8443\r\nX-ARR-SSL: on\r\nX-Forwarded-Client-Cert: Hash=x;Subject=\"CN=admin\"\r\n";
    let seen = get(&gw, sent).await.json();
    for gone in
        ["x-forwarded-ssl", "x-host", "x-forwarded-prefix", "x-forwarded-port", "x-arr-ssl", "x-forwarded-client-cert"]
    {
        assert!(seen["headers"].get(gone).is_none(), "{gone}: {seen}");
    }
    assert_eq!(upstream.hits(), 11);
}

#[tokio::test]
async fn a_method_override_in_the_query_is_refused_on_every_route() {
    let upstream = Upstream::start("api").await;
    let gw = Gateway::start(&config(upstream.addr, "")).await;
    for target in [
        "/models/7?_method=DELETE",
        "/x?a=1&%5Fmethod=PUT",
        "/?_METHOD=DELETE",
        "/x?.method=DELETE",
        "/x?_method[]=DELETE",
    ] {
        let req =
            format!("POST {target} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let resp = raw(gw.addr, req.as_bytes()).await;
        common::assert_error(&resp, 400, "VALIDATION_ERROR");
    }
    assert_eq!(upstream.hits(), 0);
    // Other parameters, and the name as a value, pass.
    let resp = get(&gw, "").await;
    assert_eq!(resp.status, 200);
    let req = "GET /x?method=DELETE&q=_method HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(gw.addr, req.as_bytes()).await.status, 200);
}

/// Pingora's own upstream request policy strips these too; the unit tests in
/// `src/pipeline/forward.rs` cover the gateway's half on its own.
#[tokio::test]
async fn hop_by_hop_and_connection_listed_headers_are_removed() {
    let upstream = Upstream::start("api").await;
    let gw = Gateway::start(&config(upstream.addr, "")).await;
    let req = "GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close, X-Secret-Hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic dTpw\r\nTE: trailers\r\nUpgrade: h2c\r\nX-End-To-End: kept\r\n\r\n";
    let resp = raw(gw.addr, req.as_bytes()).await;
    let headers = resp.json()["headers"].as_object().unwrap().clone();
    for gone in ["x-secret-hop", "keep-alive", "proxy-authorization", "te", "upgrade"] {
        assert!(!headers.contains_key(gone), "{gone} was forwarded");
    }
    assert_eq!(headers["x-end-to-end"][0], "kept");
}

#[tokio::test]
async fn request_id_is_kept_when_valid_generated_otherwise_and_returned() {
    let upstream = Upstream::start("api").await;
    let gw = Gateway::start(&config(upstream.addr, "")).await;

    let resp = get(&gw, "X-Request-Id: trace-42.a_b:c\r\n").await;
    assert_eq!(resp.header("x-request-id"), Some("trace-42.a_b:c"));
    assert_eq!(resp.json()["headers"]["x-request-id"], serde_json::json!(["trace-42.a_b:c"]));

    for bad in ["X-Request-Id: <script>\r\n", "X-Request-Id: a b\r\n", "X-Request-Id: a\r\nX-Request-Id: b\r\n", ""] {
        let resp = get(&gw, bad).await;
        let id = resp.header("x-request-id").unwrap().to_string();
        assert_eq!(id.len(), 36, "{bad:?} gave {id}");
        // The upstream saw the same id the client got back.
        assert_eq!(resp.json()["headers"]["x-request-id"], serde_json::json!([id]));
    }
}

/// An upstream that answers one request with `response`, and hands over the request it read.
async fn one_shot_upstream(response: &'static [u8]) -> (std::net::SocketAddr, tokio::sync::oneshot::Receiver<Vec<u8>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the gateway closed before the request head ended");
            request.extend_from_slice(&buf[..n]);
        }
        stream.write_all(response).await.unwrap();
        let _ = tx.send(request);
    });
    (addr, rx)
}

#[tokio::test]
async fn the_target_and_an_upstream_reason_phrase_pass_unchanged() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (upstream, received) =
        one_shot_upstream(b"HTTP/1.1 299 Fine By Me\r\nContent-Length: 2\r\nX-Upstream-Thing: v\r\n\r\nok").await;
    let gw = Gateway::start(&config(upstream, "")).await;
    // Bytes that are not UTF-8 in the target are refused by Pingora's parser: they never reach
    // the upstream (the one-shot upstream would hand this request over instead of the next).
    let refused = raw(gw.addr, b"GET /q?name=\xe9t\xe9 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert_eq!(refused.status, 400);

    let mut client = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let target = "/q?name=%C3%A9t%C3%A9&a=1&a=2&empty=&%7E=~";
    let request = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    client.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    client.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 299 Fine By Me\r\n"), "{response}");
    assert!(response.to_ascii_lowercase().contains("\r\nx-upstream-thing: v\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\nok"), "{response}");
    let forwarded = received.await.unwrap();
    let forwarded = String::from_utf8_lossy(&forwarded);
    assert!(forwarded.starts_with(&format!("GET {target} HTTP/1.1\r\n")), "{forwarded}");
}
