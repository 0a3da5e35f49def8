//! CORS at the edge: preflights answered (204) or refused (403 `CORS_REJECTED`) without reaching
//! the upstream or needing credentials; actual responses carrying the gateway's CORS headers
//! only; tricky origins; `cors = false` routes left to the upstream; and a real Chromium doing
//! credentialed `fetch` from an allowed and a disallowed origin.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::{assert_error, run_cli, send, Gateway, RawResponse, Upstream};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const KEY: &str = "pk_test_cors_0123456789abcdef0123456789abcdef";
const APP: &str = "https://app.example.com";
const PREFLIGHT_VARY: &str = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

fn config(upstream: &Upstream, origins: &str, credentials: bool) -> String {
    format!(
        r#"
[server]
allowed_hosts = ["localhost"]

[[upstream]]
name = "api"
targets = ["{addr}"]

[cors]
allowed_origins = {origins}
allowed_methods = ["GET", "POST", "DELETE"]
allowed_headers = ["Authorization", "Content-Type", "X-API-Key"]
expose_headers = ["X-Request-Id", "X-RateLimit-Remaining"]
allow_credentials = {credentials}
max_age = "10m"

[[rate_limit]]
name = "per-client"
key = "client"
limit = "1000/hour"

[[route]]
path = "/api"
upstream = "api"
methods = ["GET", "POST", "DELETE"]
permissions = ["read_models"]
rate_limits = ["per-client"]

[[route]]
path = "/legacy"
upstream = "api"
auth = "none"
cors = false

[[route]]
path = "/private-legacy"
upstream = "api"
permissions = ["read_models"]
cors = false
rate_limits = ["per-client"]

# An upstream that answers its own preflights on a protected path: said with an OPTIONS route.
[[route]]
path = "/own-cors"
upstream = "api"
methods = ["GET", "DELETE"]
permissions = ["read_models"]
cors = false

[[route]]
name = "own-cors-preflight"
path = "/own-cors"
upstream = "api"
methods = ["OPTIONS"]
auth = "none"
cors = false

[auth]
[[auth.api_key]]
id = "web"
hash = "sha256:{hash}"
permissions = ["read_models"]
"#,
        addr = upstream.addr,
        hash = hex::encode(Sha256::digest(KEY.as_bytes())),
    )
}

async fn setup() -> (Gateway, Upstream) {
    let upstream = Upstream::start("api").await;
    let origins = r#"["https://app.example.com", "https://*.example.com", "http://localhost:3000"]"#;
    let gw = Gateway::start(&config(&upstream, origins, true)).await;
    (gw, upstream)
}

async fn preflight(gw: &Gateway, origin: &str, method: &str, headers: &str) -> RawResponse {
    let mut h = vec![("Origin", origin), ("Access-Control-Request-Method", method)];
    if !headers.is_empty() {
        h.push(("Access-Control-Request-Headers", headers));
    }
    send(gw.addr, "OPTIONS", "/api/v1/models", &h).await
}

fn access_control_headers(resp: &RawResponse) -> Vec<&str> {
    resp.headers.iter().filter(|(k, _)| k.starts_with("access-control-")).map(|(k, _)| k.as_str()).collect()
}

#[tokio::test]
async fn an_allowed_preflight_is_answered_at_the_edge() {
    let (gw, upstream) = setup().await;
    // No credentials: a browser sends none with a preflight, and the route requires them.
    let resp = preflight(&gw, APP, "POST", "content-type,x-api-key").await;
    assert_eq!(resp.status, 204, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.header("access-control-allow-origin"), Some(APP));
    assert_eq!(resp.header("access-control-allow-methods"), Some("GET, POST, DELETE"));
    assert_eq!(resp.header("access-control-allow-headers"), Some("content-type, x-api-key"));
    assert_eq!(resp.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(resp.header("access-control-max-age"), Some("600"));
    assert_eq!(resp.header("vary"), Some(PREFLIGHT_VARY));
    assert!(resp.header("x-request-id").is_some());
    assert!(resp.body.is_empty());
    // Preflights are not counted against rate limits; the route's policy is still stated.
    assert!(resp.header("x-ratelimit-remaining").is_none());
    assert_eq!(resp.header("ratelimit-policy"), Some("\"per-client\";q=1000;w=3600"));
    assert!(resp.header("content-length").is_none(), "a 204 has no Content-Length");

    // A wildcard origin, no headers asked for: no Allow-Headers.
    let resp = preflight(&gw, "https://a.b.example.com", "DELETE", "").await;
    assert_eq!(resp.status, 204);
    assert_eq!(resp.header("access-control-allow-origin"), Some("https://a.b.example.com"));
    assert!(resp.header("access-control-allow-headers").is_none());
    assert_eq!(upstream.hits(), 0, "preflights never reach the upstream");
}

#[tokio::test]
async fn a_refused_preflight_gets_403_and_no_allow_headers() {
    let (gw, upstream) = setup().await;
    let cases = [
        ("https://evil.test", "GET", "", "origin"),
        ("https://evilexample.com", "GET", "", "origin"),
        ("https://example.com.evil.net", "GET", "", "origin"),
        ("https://example.com", "GET", "", "origin"),
        ("https://example.com.", "GET", "", "origin"),
        ("http://app.example.com", "GET", "", "origin"),
        ("null", "GET", "", "origin"),
        (APP, "PUT", "", "method"),
        (APP, "PATCH", "", "method"),
        (APP, "GET", "x-admin", "headers"),
        (APP, "GET", "content-type, cookie", "headers"),
    ];
    for (origin, method, headers, why) in cases {
        let resp = preflight(&gw, origin, method, headers).await;
        assert_error(&resp, 403, "CORS_REJECTED");
        assert_eq!(resp.json()["error"]["details"]["rejected"], why, "{origin} {method} {headers}");
        assert_eq!(access_control_headers(&resp), Vec::<&str>::new(), "{origin} {method} {headers}");
        assert_eq!(resp.header("vary"), Some(PREFLIGHT_VARY));
    }
    // On a cors = false route, an OPTIONS is an ordinary request for the upstream.
    let resp = send(gw.addr, "OPTIONS", "/legacy", &[("Origin", APP), ("Access-Control-Request-Method", "GET")]).await;
    assert_eq!(resp.status, 200, "cors = false: an OPTIONS is the upstream's");
    // A route that requires credentials requires them of an OPTIONS too: a preflight is not a
    // way around authentication, even one that names a DELETE route.
    for target in ["/private-legacy", "/own-cors"] {
        let resp =
            send(gw.addr, "OPTIONS", target, &[("Origin", APP), ("Access-Control-Request-Method", "DELETE")]).await;
        if target == "/own-cors" {
            // ... unless the config says so with an OPTIONS route of its own.
            assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
            assert_eq!(resp.json()["method"], "OPTIONS");
            assert!(resp.json()["headers"].get("x-auth-subject").is_none());
        } else {
            assert_error(&resp, 401, "AUTHENTICATION_FAILED");
        }
    }
    assert_eq!(upstream.hits(), 2, "only the cors = false routes reached the upstream");
}

#[tokio::test]
async fn actual_responses_carry_the_gateways_cors_headers_only() {
    let (gw, upstream) = setup().await;
    let auth = ("X-API-Key", KEY);
    // The upstream sends its own (wrong) CORS headers: replaced.
    let resp = send(gw.addr, "GET", "/api/upstream-cors", &[("Origin", APP), auth]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("access-control-allow-origin"), Some(APP));
    assert_eq!(resp.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(resp.header("access-control-expose-headers"), Some("x-request-id, x-ratelimit-remaining"));
    assert!(resp.header("access-control-allow-methods").is_none(), "the upstream's header was removed");
    assert_eq!(resp.all("vary"), ["Accept-Encoding", "Origin"]);

    // Another origin: no CORS header at all (the browser blocks the read), even the upstream's.
    for origin in ["https://evil.test", "https://evilexample.com", "https://example.com.evil.net", "null"] {
        let resp = send(gw.addr, "GET", "/api/upstream-cors", &[("Origin", origin), auth]).await;
        assert_eq!(resp.status, 200);
        assert_eq!(access_control_headers(&resp), Vec::<&str>::new(), "{origin}");
        assert_eq!(resp.all("vary"), ["Accept-Encoding", "Origin"]);
    }
    // No Origin (not a browser, or same-origin): Vary still, for caches.
    let resp = send(gw.addr, "GET", "/api/x", &[auth]).await;
    assert_eq!(resp.header("vary"), Some("Origin"));
    assert_eq!(access_control_headers(&resp), Vec::<&str>::new());

    // The gateway's own errors are readable by an allowed origin's script.
    let resp = send(gw.addr, "GET", "/api/x", &[("Origin", APP)]).await;
    assert_error(&resp, 401, "AUTHENTICATION_FAILED");
    assert_eq!(resp.header("access-control-allow-origin"), Some(APP));
    assert!(resp.header("x-ratelimit-remaining").is_some());

    // cors = false: the upstream's headers pass untouched.
    let resp = send(gw.addr, "GET", "/legacy/upstream-cors", &[("Origin", "https://evil.test")]).await;
    assert_eq!(resp.header("access-control-allow-origin"), Some("*"));
    assert_eq!(resp.header("vary"), Some("Accept-Encoding"));
    assert_eq!(upstream.hits(), 7);
}

#[tokio::test]
async fn null_only_when_listed_and_any_origin_without_credentials() {
    let upstream = Upstream::start("api").await;
    let gw = Gateway::start(&config(&upstream, r#"["null"]"#, false)).await;
    let resp = preflight(&gw, "null", "GET", "").await;
    assert_eq!(resp.status, 204);
    assert_eq!(resp.header("access-control-allow-origin"), Some("null"));
    assert!(resp.header("access-control-allow-credentials").is_none());
    assert_error(&preflight(&gw, APP, "GET", "").await, 403, "CORS_REJECTED");
    drop(gw);

    let gw = Gateway::start(&config(&upstream, r#"["*"]"#, false)).await;
    let resp = preflight(&gw, "https://anyone.test", "GET", "authorization").await;
    assert_eq!(resp.status, 204);
    assert_eq!(resp.header("access-control-allow-origin"), Some("*"));
    // "*" does not cover null: sandboxed frames must be listed.
    assert_error(&preflight(&gw, "null", "GET", "").await, 403, "CORS_REJECTED");
}

#[test]
fn unsafe_cors_settings_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = |cors: &str| {
        format!(
            "[server]\nallowed_hosts = [\"localhost\"]\n[[listener]]\naddress = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"api\"\ntargets = [\"builtin:echo\"]\n[[route]]\npath = \"/\"\nupstream = \"api\"\n\
             auth = \"none\"\n{cors}"
        )
    };
    let cases = [
        ("[cors]\nallowed_origins = [\"*\"]\nallow_credentials = true", "cors.allowed_origins[0]", "any site"),
        (
            "[cors]\nallowed_origins = [\"https://a.test\", \"null\"]\nallow_credentials = true",
            "cors.allowed_origins[1]",
            "sandboxed frame",
        ),
        ("[cors]\nallowed_origins = [\"https://App.test\"]", "cors.allowed_origins[0]", "write \"https://app.test\""),
        (
            "[cors]\nallowed_origins = [\"https://app.test:443\"]",
            "cors.allowed_origins[0]",
            "write \"https://app.test\"",
        ),
        ("[cors]\nallowed_origins = [\"https://app.example.com/\"]", "cors.allowed_origins[0]", "without one"),
        ("[cors]\nallowed_origins = [\"https://*.com\"]", "cors.allowed_origins[0]", "wildcard"),
        ("[cors]\nallowed_origins = []", "cors.allowed_origins", "empty"),
        (
            "[cors]\nallowed_origins = [\"https://a.test\"]\nexpose_headers = [\"*\"]\nallow_credentials = true",
            "cors.expose_headers",
            "list the headers",
        ),
        ("[cors]\nallowed_origins = [\"https://a.test\"]\nmax_age = \"2days\"", "cors.max_age", "1 day"),
    ];
    for (cors, key, words) in cases {
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, base(cors)).unwrap();
        let (code, out, err) = run_cli(&["check", "-c", file.to_str().unwrap()], None);
        assert_ne!(code, 0, "{cors}: {out}");
        assert!(err.contains(key) && err.contains(words), "{cors}: {err}");
    }
    // A route turning CORS on without a [cors] section.
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, base("").replace("auth = \"none\"", "auth = \"none\"\ncors = true")).unwrap();
    let (code, _, err) = run_cli(&["check", "-c", file.to_str().unwrap()], None);
    assert_ne!(code, 0);
    assert!(err.contains("route[0].cors") && err.contains("no [cors] section"), "{err}");
}

/// A page server on its own origin: `/` runs `script`, which reports its outcome to
/// `/report?...`; the reports arrive on the channel.
async fn page_server(script: String) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (tx, script) = (tx.clone(), script.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (tx, script) = (tx.clone(), script.clone());
                    async move {
                        let body = if req.uri().path() == "/report" {
                            // The page sent `encodeURIComponent(outcome)` as the whole query.
                            let url = reqwest::Url::parse(&format!("http://page{}", req.uri())).unwrap();
                            let outcome = url.query_pairs().next().map(|(k, _)| k.into_owned()).unwrap_or_default();
                            let _ = tx.send(outcome);
                            String::new()
                        } else {
                            format!("<!doctype html><title>cors</title><script>{script}</script>")
                        };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "text/html")
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (addr, rx)
}

/// The browser: Debian's `chromium`, or `$CHROME`.
fn chromium() -> String {
    if let Ok(path) = std::env::var("CHROME") {
        return path;
    }
    for candidate in ["chromium", "chromium-browser", "google-chrome"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {candidate}"))
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return candidate.to_string();
        }
    }
    panic!("this test drives a real browser: install Debian's chromium (apt-get install chromium; .ci/run does) or set CHROME");
}

/// Opens `url` in headless Chromium and returns the page's report.
async fn browse(url: &str, reports: &mut mpsc::UnboundedReceiver<String>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut browser = Command::new(chromium())
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            &format!("--user-data-dir={}", profile.path().display()),
            url,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(60), reports.recv()).await;
    let _ = browser.kill();
    let _ = browser.wait();
    report.expect("the page reported within 60 s").expect("a report")
}

#[tokio::test]
async fn a_real_browser_agrees() {
    let upstream = Upstream::start("api").await;
    // Two page servers: one origin allowed, one not. Their ports are known only once bound, so
    // the gateway starts after them.
    // The page finds the gateway in its own query string (`?gw=http://localhost:PORT`).
    let script = format!(
        r#"
(async () => {{
  let outcome;
  try {{
    const gateway = new URLSearchParams(location.search).get("gw");
    const r = await fetch(gateway + "/api/v1/models", {{
      method: "POST",
      credentials: "include",
      headers: {{ "X-API-Key": "{KEY}", "Content-Type": "application/json" }},
      body: "{{}}",
    }});
    const body = await r.json();
    outcome = "status=" + r.status + " upstream=" + body.upstream + " request_id=" + (r.headers.get("x-request-id") ? "readable" : "hidden");
  }} catch (e) {{
    outcome = "error=" + e.name;
  }}
  await fetch("/report?" + encodeURIComponent(outcome));
}})();
"#
    );
    let (allowed, mut allowed_reports) = page_server(script.clone()).await;
    let (denied, mut denied_reports) = page_server(script).await;
    // The pages are on 127.0.0.1, the gateway on localhost: different origins, as in production.
    let origins = format!("[\"http://127.0.0.1:{}\"]", allowed.port());
    let gw = Gateway::start(&config(&upstream, &origins, true)).await;
    let page =
        |server: SocketAddr| format!("http://127.0.0.1:{}/?gw=http://localhost:{}", server.port(), gw.addr.port());

    let outcome = browse(&page(allowed), &mut allowed_reports).await;
    assert_eq!(outcome, "status=200 upstream=api request_id=readable");
    assert_eq!(upstream.hits(), 1, "the preflight was answered by the gateway, the POST forwarded");

    let outcome = browse(&page(denied), &mut denied_reports).await;
    assert_eq!(outcome, "error=TypeError", "the browser refused the disallowed origin");
    assert_eq!(upstream.hits(), 1, "the refused preflight stopped the POST before the upstream");
}
