//! Observability end to end: the admin listener's `/metrics`, `/healthz` and `/readyz`, the
//! access and audit logs after a scripted session, upstream health checks, a full disk, and no
//! secret of the session in any log line or error body.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use common::{assert_error, refusing_port, reserve_addr, send, wait_listening, Gateway, RawResponse, Upstream};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const KEY: &str = "pcs_5e1f0a9c3b7d2e4f6a8b0c1d2e3f40516273849a5b6c7d8e9f0a1b2c3d4e5f6a";
const WRONG_KEY: &str = "pcs_0000aaaa1111bbbb2222cccc3333dddd4444eeee5555ffff6666777788889999";
const HMAC_SECRET: &str = "observability-hmac-secret-0123456789abcdef";
const EMAIL: &str = "jane.doe@example.com";
const PASSWORD: &str = "hunter2-correct-horse";
const QUERY_TOKEN: &str = "querytoken7f3a9";
const BASIC: &str = "Basic YWxpY2U6b3BlbiBzZXNhbWUgNDI="; // alice:open sesame 42
const COOKIE_SECRET: &str = "cookie-session-9f8e7d";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn hs256(secret: &str, claims: &Value) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

/// The tokens of the session: valid (with an e-mail subject), expired, and forged.
struct Tokens {
    good: String,
    expired: String,
    forged: String,
}

impl Tokens {
    fn new() -> Tokens {
        let claims = |exp: u64| json!({"iss": "local", "aud": "api", "sub": EMAIL, "exp": exp, "scope": "read_models"});
        Tokens {
            good: hs256(HMAC_SECRET, &claims(now() + 600)),
            expired: hs256(HMAC_SECRET, &claims(now() - 600)),
            forged: hs256("some-other-secret-of-the-same-length-000", &claims(now() + 600)),
        }
    }
}

/// A gateway with the admin listener, both logs in `logs`, an API key, an HS256 issuer, CORS, a
/// tight limit, a live upstream and a dead one.
async fn observed_gateway(logs: &Path, admin: SocketAddr, upstream: &Upstream, dead: SocketAddr) -> Gateway {
    let secret = logs.join("hmac.secret");
    std::fs::write(&secret, HMAC_SECRET).unwrap();
    let hash = format!("hash = \"sha256:{}\"", hex::encode(Sha256::digest(KEY.as_bytes())));
    let config = format!(
        r#"
[server]
allowed_hosts = ["localhost", "127.0.0.1"]
auth_failure_limit = "off"

[admin]
address = "{admin}"

[log]
access = "{access}"
audit = "{audit}"

[[upstream]]
name = "api"
targets = ["{upstream}"]

[[upstream]]
name = "gone"
targets = ["{dead}"]

[cors]
allowed_origins = ["https://app.example.com"]

[[rate_limit]]
name = "tight"
key = "client"
limit = "2/minute"

[auth]
[[auth.api_key]]
id = "ci-bot"
{hash}
permissions = ["read_models"]

[[auth.jwt]]
name = "local"
issuer = "local"
audiences = ["api"]
algorithms = ["HS256"]
secret = "file:{secret}"

[[route]]
name = "models"
path = "/models"
upstream = "api"
permissions = ["read_models"]

[[route]]
name = "train"
path = "/train"
upstream = "api"
permissions = ["run_training"]

[[route]]
name = "limited"
path = "/limited"
upstream = "api"
auth = "none"
rate_limits = ["tight"]

[[route]]
name = "gone"
path = "/gone"
upstream = "gone"
auth = "none"

[[upstream]]
name = "slow"
targets = ["{upstream}"]
read_timeout = "300ms"

[[route]]
name = "slow"
path = "/slow"
upstream = "slow"
auth = "none"
"#,
        access = logs.join("access.jsonl").display(),
        audit = logs.join("audit.jsonl").display(),
        upstream = upstream.addr,
        hash = hash.trim(),
        secret = secret.display(),
    );
    let gw = Gateway::start(&config).await;
    wait_listening(admin).await;
    gw
}

/// What a test needs around the observed gateway.
struct Observed {
    gw: Gateway,
    admin: SocketAddr,
    upstream: Upstream,
    logs: tempfile::TempDir,
    _dead: tokio::net::TcpSocket,
}

async fn observed() -> Observed {
    let upstream = Upstream::start("api").await;
    let logs = tempfile::tempdir().unwrap();
    let admin = reserve_addr();
    let (dead_socket, dead) = refusing_port();
    let gw = observed_gateway(logs.path(), admin, &upstream, dead).await;
    Observed { gw, admin, upstream, logs, _dead: dead_socket }
}

/// The scripted session: every kind of outcome once (three on the limited route). Returns the
/// responses in order.
async fn session(gw: &Gateway, tokens: &Tokens) -> Vec<RawResponse> {
    let a = gw.addr;
    let bearer = |t: &str| format!("Bearer {t}");
    let mut out = Vec::new();
    // 0: API key (also in the query, where it must be redacted from the log).
    out.push(send(a, "GET", &format!("/models?api_key={KEY}&page=2"), &[("X-API-Key", KEY)]).await);
    // 1: JWT whose subject is an e-mail address.
    out.push(send(a, "GET", "/models", &[("Authorization", &bearer(&tokens.good))]).await);
    // 2-5: no credential, an unknown key, an expired token, a forged token.
    out.push(send(a, "GET", "/models", &[]).await);
    out.push(send(a, "GET", "/models", &[("X-API-Key", WRONG_KEY)]).await);
    out.push(send(a, "GET", "/models", &[("Authorization", &bearer(&tokens.expired))]).await);
    out.push(send(a, "GET", "/models", &[("Authorization", &bearer(&tokens.forged))]).await);
    // 6: a permission the key lacks.
    out.push(send(a, "GET", "/train", &[("X-API-Key", KEY)]).await);
    // 7-9: two within the limit, the third refused (all in one minute of the clock).
    common::within_one_window(60, Duration::from_secs(10)).await;
    for _ in 0..3 {
        out.push(send(a, "GET", "/limited", &[]).await);
    }
    // 10: a preflight from an origin not allowed.
    let preflight = [("Origin", "https://evil.example.net"), ("Access-Control-Request-Method", "GET")];
    out.push(send(a, "OPTIONS", "/models", &preflight).await);
    // 11: a host not allowed.
    out.push(common::get_with_host(a, "/models", "evil.example.com").await);
    // 12: a dead upstream, with secrets in the query (Pingora logs the failure).
    out.push(send(a, "GET", &format!("/gone?password={PASSWORD}&token={QUERY_TOKEN}"), &[]).await);
    // 13-15: Basic credentials, an unknown key as a bearer token, a cookie beside a good key.
    out.push(send(a, "GET", "/models", &[("Authorization", BASIC)]).await);
    out.push(send(a, "GET", "/models", &[("Authorization", &bearer(WRONG_KEY))]).await);
    let cookie = format!("session={COOKIE_SECRET}; theme=dark");
    out.push(send(a, "GET", "/models", &[("X-API-Key", KEY), ("Cookie", &cookie)]).await);
    // 16: an upstream slower than its read_timeout.
    out.push(send(a, "GET", "/slow", &[]).await);
    out
}

/// Requests in the session.
const SESSION: usize = 17;

fn expected_statuses(responses: &[RawResponse]) {
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 401, 401, 401, 401, 403, 200, 200, 429, 403, 421, 502, 401, 401, 200, 504]);
    for r in responses {
        assert!(r.header("x-request-id").is_some_and(|id| !id.is_empty()));
    }
}

/// `GET {path}` on the admin listener.
async fn admin_get(admin: SocketAddr, path: &str) -> RawResponse {
    send(admin, "GET", path, &[]).await
}

/// A scrape taken once `requests` requests have been recorded: the `logging` phase runs after
/// the response went out, so a client can see its answer before the metrics do.
async fn scrape_after(admin: SocketAddr, requests: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = admin_get(admin, "/metrics").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
        let scrape = String::from_utf8(resp.body).unwrap();
        let recorded: f64 = scrape
            .lines()
            .filter(|l| l.starts_with("portcullis_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if recorded >= requests || Instant::now() > deadline {
            assert_eq!(recorded, requests, "{scrape}");
            return scrape;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the sample `name{labels}` in a scrape (labels in Prometheus' sorted order).
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls the scrape until `series` reads `value` (gauges settle after the response is sent).
async fn settles(admin: SocketAddr, series: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = String::from_utf8(admin_get(admin, "/metrics").await.body).unwrap();
        if sample(&scrape, series) == Some(value) {
            return;
        }
        assert!(Instant::now() < deadline, "{series} is not {value}:\n{scrape}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lines by request id (the log is written after each response, so its order may differ from
/// the order the responses arrived in).
fn by_request_id(lines: &[Value]) -> HashMap<String, Vec<&Value>> {
    let mut map: HashMap<String, Vec<&Value>> = HashMap::new();
    for line in lines {
        if let Some(id) = line["request_id"].as_str() {
            map.entry(id.to_string()).or_default().push(line);
        }
    }
    map
}

/// Reads a JSON-lines file until it has `n` lines (the writer thread is asynchronous).
fn read_lines(path: &Path, n: usize) -> Vec<Value> {
    let lines = common::wait_json_lines(path, n);
    assert_eq!(lines.len(), n, "{}: {lines:?}", path.display());
    lines
}

#[tokio::test]
async fn metrics_count_known_traffic() {
    let Observed { gw, admin, upstream: _upstream, logs: _logs, _dead } = observed().await;
    // A keep-alive connection held open: counted as active until it closes.
    let mut held = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut held, b"GET /nothing HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    assert_eq!(common::read_response(&mut held).await.status, 404);
    let active = format!(r#"portcullis_connections_active{{listener="{}"}}"#, gw.addr);
    settles(admin, &active, 1.0).await;
    drop(held);
    settles(admin, &active, 0.0).await;

    let responses = session(&gw, &Tokens::new()).await;
    expected_statuses(&responses);

    let scrape = scrape_after(admin, SESSION as f64 + 1.0).await;
    let count = |series: &str| sample(&scrape, series).unwrap_or_else(|| panic!("no {series} in\n{scrape}"));
    for (series, expected) in [
        (r#"portcullis_requests_total{method="GET",route="models",status="200"}"#, 3.0),
        (r#"portcullis_requests_total{method="GET",route="models",status="401"}"#, 6.0),
        (r#"portcullis_requests_total{method="GET",route="train",status="403"}"#, 1.0),
        (r#"portcullis_requests_total{method="GET",route="limited",status="200"}"#, 2.0),
        (r#"portcullis_requests_total{method="GET",route="limited",status="429"}"#, 1.0),
        (r#"portcullis_requests_total{method="OPTIONS",route="models",status="403"}"#, 1.0),
        (r#"portcullis_requests_total{method="GET",route="",status="421"}"#, 1.0),
        (r#"portcullis_requests_total{method="GET",route="",status="404"}"#, 1.0),
        (r#"portcullis_requests_total{method="GET",route="gone",status="502"}"#, 1.0),
        (r#"portcullis_requests_total{method="GET",route="slow",status="504"}"#, 1.0),
        (r#"portcullis_request_duration_seconds_count{route="models"}"#, 10.0),
        (r#"portcullis_upstream_duration_seconds_count{upstream="api"}"#, 5.0),
        (r#"portcullis_upstream_errors_total{kind="connect_refused",upstream="gone"}"#, 1.0),
        (r#"portcullis_upstream_errors_total{kind="read_timeout",upstream="slow"}"#, 1.0),
        (r#"portcullis_auth_decisions_total{method="api_key",reason="ok",result="success"}"#, 2.0),
        (r#"portcullis_auth_decisions_total{method="jwt",reason="ok",result="success"}"#, 1.0),
        (r#"portcullis_auth_decisions_total{method="none",reason="missing",result="failure"}"#, 1.0),
        (r#"portcullis_auth_decisions_total{method="api_key",reason="unknown_key",result="failure"}"#, 2.0),
        (r#"portcullis_auth_decisions_total{method="unknown",reason="malformed",result="failure"}"#, 1.0),
        (r#"portcullis_auth_decisions_total{method="jwt",reason="expired",result="failure"}"#, 1.0),
        (r#"portcullis_auth_decisions_total{method="jwt",reason="bad_signature",result="failure"}"#, 1.0),
        (r#"portcullis_auth_decisions_total{method="api_key",reason="permission",result="denied"}"#, 1.0),
        (r#"portcullis_rate_limited_total{policy="tight"}"#, 1.0),
        ("portcullis_cors_rejected_total", 1.0),
        ("portcullis_host_rejected_total", 1.0),
        (r#"portcullis_upstream_healthy_targets{upstream="api"}"#, 1.0),
        (&format!(r#"portcullis_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION")), 1.0),
    ] {
        assert_eq!(count(series), expected, "{series}");
    }
    // No connect error was counted for the slow upstream: it connected, then timed out.
    assert_eq!(sample(&scrape, r#"portcullis_upstream_errors_total{kind="connect_refused",upstream="slow"}"#), None);
    assert!(count(&format!(r#"portcullis_connections_total{{listener="{}"}}"#, gw.addr)) >= SESSION as f64);
    assert!(count("process_resident_memory_bytes") > 0.0);
    // Labels stay bounded: no path, address, key or token made it into a label.
    for leak in ["/models", "127.0.0.1:", "pcs_", "eyJ", "evil"] {
        assert!(
            !scrape.lines().filter(|l| !l.starts_with('#')).any(|l| l.contains(leak) && !l.contains("listener=")),
            "{leak} in a label:\n{scrape}"
        );
    }
    settles(admin, "portcullis_requests_in_flight", 0.0).await;
    settles(admin, &active, 0.0).await;

    // More traffic moves the counters.
    send(gw.addr, "GET", "/models", &[("X-API-Key", KEY)]).await;
    let scrape = scrape_after(admin, SESSION as f64 + 2.0).await;
    assert_eq!(sample(&scrape, r#"portcullis_requests_total{method="GET",route="models",status="200"}"#), Some(4.0));

    // promtool is installed by .ci/run: there the exposition is checked by Prometheus' own linter.
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(scrape.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            let complaints =
                format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success() && complaints.trim().is_empty(), "promtool: {complaints}");
        }
        Err(_) if std::env::var_os("PORTCULLIS_REQUIRE_PROMTOOL").is_some() => panic!("promtool is missing on CI"),
        Err(_) => eprintln!("promtool not installed: exposition format not linted"),
    }
}

#[tokio::test]
async fn access_and_audit_logs_record_the_session_without_secrets() {
    let started = std::time::SystemTime::now();
    let Observed { gw, admin: _admin, upstream, logs, _dead } = observed().await;
    let tokens = Tokens::new();
    let responses = session(&gw, &tokens).await;
    expected_statuses(&responses);
    let finished = std::time::SystemTime::now() + Duration::from_secs(1);
    let id = |i: usize| responses[i].header("x-request-id").unwrap().to_string();

    let access_lines = read_lines(&logs.path().join("access.jsonl"), SESSION);
    let access_by_id = by_request_id(&access_lines);
    let access = |i: usize| -> &Value {
        let lines = &access_by_id[&id(i)];
        assert_eq!(lines.len(), 1, "{lines:?}");
        lines[0]
    };
    for (i, resp) in responses.iter().enumerate() {
        let line = access(i);
        assert_eq!(line["log"], "access");
        assert_eq!(line["status"], resp.status);
        assert_eq!(line["client_ip"], "127.0.0.1");
        assert_eq!(line["method"], if i == 10 { "OPTIONS" } else { "GET" });
        assert_eq!(line["protocol"], "HTTP/1.1");
        assert_eq!(line["tls"], false);
        assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
        let time = humantime::parse_rfc3339(line["time"].as_str().unwrap()).unwrap();
        assert!(time >= started - Duration::from_secs(1) && time <= finished, "{line}");
        assert_eq!(line["bytes"].as_u64().unwrap() as usize, resp.body.len(), "{line}");
        if resp.status >= 400 {
            assert_eq!(line["error"], resp.json()["error"]["code"], "{line}");
        } else {
            assert!(line.get("error").is_none());
        }
    }
    let first = access(0);
    assert_eq!(first["route"], "models");
    assert_eq!(first["host"], "localhost");
    assert_eq!(first["path"], "/models?api_key=[REDACTED]&page=2");
    assert_eq!(first["auth_method"], "api_key");
    assert_eq!(first["key_id"], "ci-bot");
    assert_eq!(first["subject"], "ci-bot");
    assert_eq!(first["upstream"], "api");
    assert_eq!(first["upstream_addr"], upstream.addr.to_string());
    assert_eq!(first["upstream_status"], 200);
    assert!(first["upstream_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(access(1)["auth_method"], "jwt");
    assert_eq!(access(1)["issuer"], "local");
    assert_eq!(access(1)["subject"], "[REDACTED]");
    assert_eq!(access(2)["reason"], "missing");
    assert_eq!(access(3)["reason"], "unknown_key");
    assert!(access(3).get("upstream").is_none(), "a refused request never reached an upstream");
    assert!(access(3).get("auth_method").is_none());
    assert_eq!(access(4)["reason"], "expired");
    assert_eq!(access(5)["reason"], "bad_signature");
    assert_eq!(access(6)["reason"], "permission_denied");
    assert_eq!(access(9)["reason"], "rate_limited");
    assert_eq!(access(10)["reason"], "cors_rejected");
    assert_eq!(access(11)["host"], "evil.example.com");
    assert!(access(11).get("route").is_none());
    assert_eq!(access(12)["path"], "/gone?password=[REDACTED]&token=[REDACTED]");
    assert_eq!(access(12)["upstream"], "gone");
    assert!(access(12).get("upstream_status").is_none());
    assert_eq!(access(13)["reason"], "malformed");
    assert_eq!(access(16)["upstream"], "slow");
    assert_eq!(access(16)["reason"], "upstream_timeout");
    assert!(access(16).get("upstream_status").is_none());

    // The audit log: 1 config_loaded + 14 events of the session.
    let audit_lines = read_lines(&logs.path().join("audit.jsonl"), 15);
    assert_eq!(audit_lines[0]["event"], "config_loaded");
    assert!(audit_lines[0]["files"][0].as_str().unwrap().ends_with("gateway.toml"));
    for line in &audit_lines[1..] {
        assert_eq!(line["log"], "audit");
        assert_eq!(line["client_ip"], "127.0.0.1", "{line}");
        assert!(line["request_id"].is_string(), "{line}");
        humantime::parse_rfc3339(line["time"].as_str().unwrap()).unwrap();
    }
    let audit_by_id = by_request_id(&audit_lines);
    let events = |i: usize| -> Vec<&Value> { audit_by_id.get(&id(i)).cloned().unwrap_or_default() };
    let names =
        |i: usize| -> Vec<String> { events(i).iter().map(|l| l["event"].as_str().unwrap().to_string()).collect() };
    for (i, expected) in [
        (0, vec!["auth_success"]),
        (1, vec!["auth_success"]),
        (2, vec!["auth_failure"]),
        (3, vec!["auth_failure"]),
        (4, vec!["auth_failure"]),
        (5, vec!["auth_failure"]),
        (6, vec!["auth_success", "permission_denied"]),
        (7, vec![]),
        (9, vec!["rate_limited"]),
        (10, vec!["cors_rejected"]),
        (11, vec!["host_rejected"]),
        (12, vec![]),
        (13, vec!["auth_failure"]),
        (14, vec!["auth_failure"]),
        (15, vec!["auth_success"]),
        (16, vec![]),
    ] {
        assert_eq!(names(i), expected, "request {i}");
    }
    let ev = |i: usize, n: usize| events(i)[n].clone();
    assert_eq!((ev(0, 0)["key_id"].clone(), ev(0, 0)["method"].clone()), (json!("ci-bot"), json!("api_key")));
    assert_eq!(ev(0, 0)["route"], "models");
    assert_eq!((ev(1, 0)["method"].clone(), ev(1, 0)["issuer"].clone()), (json!("jwt"), json!("local")));
    assert_eq!(ev(1, 0)["subject"], "[REDACTED]");
    assert_eq!((ev(2, 0)["reason"].clone(), ev(2, 0)["method"].clone()), (json!("missing"), json!("none")));
    assert!(ev(2, 0).get("key_prefix").is_none());
    assert_eq!((ev(3, 0)["reason"].clone(), ev(3, 0)["key_prefix"].clone()), (json!("unknown_key"), json!("pcs_")));
    assert_eq!((ev(4, 0)["reason"].clone(), ev(4, 0)["method"].clone()), (json!("expired"), json!("jwt")));
    assert!(ev(4, 0).get("key_prefix").is_none(), "a JWT never gets a prefix");
    assert_eq!(ev(5, 0)["reason"], "bad_signature");
    assert_eq!((ev(6, 1)["permission"].clone(), ev(6, 1)["key_id"].clone()), (json!("run_training"), json!("ci-bot")));
    assert_eq!(ev(6, 1)["route"], "train");
    assert_eq!(ev(9, 0)["policy"], "tight");
    assert_eq!(
        (ev(10, 0)["origin"].clone(), ev(10, 0)["rejected"].clone()),
        (json!("https://evil.example.net"), json!("origin"))
    );
    assert_eq!(ev(11, 0)["host"], "evil.example.com");
    assert_eq!((ev(13, 0)["reason"].clone(), ev(13, 0)["method"].clone()), (json!("malformed"), json!("unknown")));
    assert_eq!((ev(14, 0)["reason"].clone(), ev(14, 0)["key_prefix"].clone()), (json!("unknown_key"), json!("pcs_")));

    // No secret of the session anywhere: logs, the process log, error bodies.
    let mut haystacks = vec![
        std::fs::read_to_string(logs.path().join("access.jsonl")).unwrap(),
        std::fs::read_to_string(logs.path().join("audit.jsonl")).unwrap(),
        gw.stderr(),
    ];
    haystacks
        .extend(responses.iter().filter(|r| r.status >= 400).map(|r| String::from_utf8_lossy(&r.body).into_owned()));
    let jwt_parts = |t: &str| t.split('.').map(str::to_string).collect::<Vec<_>>();
    let mut secrets = vec![
        KEY[4..].to_string(),
        WRONG_KEY[4..].to_string(),
        HMAC_SECRET.to_string(),
        EMAIL.to_string(),
        "jane.doe".to_string(),
        PASSWORD.to_string(),
        QUERY_TOKEN.to_string(),
        BASIC[6..].to_string(),
        COOKIE_SECRET.to_string(),
    ];
    for token in [&tokens.good, &tokens.expired, &tokens.forged] {
        secrets.extend(jwt_parts(token));
    }
    for text in &haystacks {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{secret} leaked into:\n{text}");
        }
    }
    // The process log did record the failed upstream exchange (redacted), so the check above
    // looked at a line that held the query.
    assert!(gw.stderr().contains("/gone?password=[REDACTED]"), "{}", gw.stderr());
}

#[tokio::test]
async fn admin_endpoints_and_nothing_else() {
    let Observed { gw, admin, upstream: _upstream, logs: _logs, _dead } = observed().await;

    let health = admin_get(admin, "/healthz").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json(), json!({"status": "ok"}));
    let head = common::raw_head(admin, b"HEAD /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let ready = admin_get(admin, "/readyz").await;
    assert_eq!(ready.status, 200, "{:?}", ready.json());
    assert_eq!(ready.json()["status"], "ready");
    assert_eq!(
        ready.json()["upstreams"][0],
        json!({"name": "api", "healthy_targets": 1, "targets": 1, "health_check": false})
    );

    let missing = admin_get(admin, "/config").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "ROUTE_NOT_FOUND");
    let post = common::raw(admin, b"POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\nxx").await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));

    // The public listener serves no admin endpoint: these are ordinary requests there.
    for path in ["/metrics", "/healthz", "/readyz"] {
        let resp = send(gw.addr, "GET", path, &[]).await;
        assert_error(&resp, 404, "ROUTE_NOT_FOUND");
    }
}

#[tokio::test]
async fn readiness_follows_upstream_health_checks() {
    let live = Upstream::start("live").await;
    let (_dead_socket, dead) = refusing_port();
    let (revived_socket, revived) = refusing_port();
    let admin = reserve_addr();
    let check = r#"health_check = { path = "/health", interval = "100ms", timeout = "500ms", healthy_threshold = 1, unhealthy_threshold = 1 }"#;
    let gw = Gateway::start(&format!(
        r#"
[server]
allowed_hosts = ["localhost"]
[admin]
address = "{admin}"
[[upstream]]
name = "pool"
targets = ["{live}", "{dead}"]
{check}
[[upstream]]
name = "down"
targets = ["{revived}"]
{check}
[[route]]
name = "pool"
path = "/"
upstream = "pool"
auth = "none"
"#,
        live = live.addr,
    ))
    .await;
    wait_listening(admin).await;

    // Wait until every target was probed: one of "pool" passes and one fails; "down" has none.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = String::from_utf8(admin_get(admin, "/metrics").await.body).unwrap();
        let probed = |upstream: &str, result: &str| {
            let series =
                format!(r#"portcullis_upstream_health_checks_total{{result="{result}",upstream="{upstream}"}}"#);
            sample(&scrape, &series).unwrap_or(0.0) >= 1.0
        };
        if probed("pool", "success") && probed("pool", "failure") && probed("down", "failure") {
            break;
        }
        assert!(Instant::now() < deadline, "{scrape}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = admin_get(admin, "/readyz").await;
    assert_eq!(ready.status, 503);
    let body = ready.json();
    assert_eq!(body["status"], "not_ready");
    assert!(body["reason"].as_str().unwrap().contains("down"), "{body}");
    assert_eq!(body["upstreams"][0]["healthy_targets"], 1, "{body}");
    assert_eq!(body["upstreams"][1]["healthy_targets"], 0, "{body}");

    // Requests skip the failing target: every one is served, none tried the dead address.
    let hits_before = live.hits();
    for _ in 0..10 {
        assert_eq!(send(gw.addr, "GET", "/x", &[]).await.status, 200);
    }
    assert_eq!(live.hits() - hits_before, 10);
    let scrape = scrape_after(admin, 10.0).await;
    assert_eq!(sample(&scrape, r#"portcullis_upstream_errors_total{kind="connect_refused",upstream="pool"}"#), None);
    assert_eq!(sample(&scrape, r#"portcullis_upstream_healthy_targets{upstream="pool"}"#), Some(1.0));
    assert_eq!(sample(&scrape, r#"portcullis_upstream_healthy_targets{upstream="down"}"#), Some(0.0));

    // The target comes up: ready again.
    let _revived = Upstream::start_on_listener("revived", revived_socket.listen(64).unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = admin_get(admin, "/readyz").await;
        if ready.status == 200 {
            assert_eq!(ready.json()["status"], "ready");
            break;
        }
        assert!(Instant::now() < deadline, "{}", ready.json());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    settles(admin, r#"portcullis_upstream_healthy_targets{upstream="down"}"#, 1.0).await;
}

#[tokio::test]
async fn a_full_disk_drops_log_lines_and_never_stalls_requests() {
    let admin = reserve_addr();
    let gw = Gateway::start(&format!(
        r#"
[server]
allowed_hosts = ["localhost"]
[admin]
address = "{admin}"
[log]
access = "/dev/full"
audit = "/dev/full"
[[upstream]]
name = "echo"
targets = ["builtin:echo"]
[[route]]
path = "/"
upstream = "echo"
auth = "none"
"#
    ))
    .await;
    wait_listening(admin).await;
    for _ in 0..20 {
        assert_eq!(send(gw.addr, "GET", "/", &[]).await.status, 200);
    }
    settles(admin, r#"portcullis_log_lines_dropped_total{log="access",reason="write_error"}"#, 20.0).await;
    // config_loaded was dropped too.
    settles(admin, r#"portcullis_log_lines_dropped_total{log="audit",reason="write_error"}"#, 1.0).await;
    // Still serving, and it said why it drops lines, for each log.
    assert_eq!(send(gw.addr, "GET", "/", &[]).await.status, 200);
    let stderr = gw.stderr();
    for log in ["access", "audit"] {
        assert!(
            stderr.lines().any(|l| l.contains("cannot write the log") && l.contains(&format!(r#""log":"{log}""#))),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn http2_streams_share_a_connection_and_a_client_that_leaves_is_499() {
    let upstream = Upstream::start("api").await;
    let logs = tempfile::tempdir().unwrap();
    let admin = reserve_addr();
    let access = logs.path().join("access.jsonl");
    let gw = Gateway::start_with(
        &format!(
            r#"
[server]
allowed_hosts = ["localhost"]
[admin]
address = "{admin}"
[log]
access = "{access}"
[[upstream]]
name = "api"
targets = ["{upstream}"]
[[route]]
path = "/"
upstream = "api"
auth = "none"
"#,
            access = access.display(),
            upstream = upstream.addr,
        ),
        "h2c = true",
    )
    .await;
    wait_listening(admin).await;
    let connections = format!(r#"portcullis_connections_total{{listener="{}"}}"#, gw.addr);
    // The harness's readiness probe is one connection, counted as soon as the gateway gets to it.
    settles(admin, &connections, 1.0).await;
    let before = sample(&String::from_utf8(admin_get(admin, "/metrics").await.body).unwrap(), &connections);

    // Three streams on one HTTP/2 connection.
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    for i in 0..3 {
        let mut client = client.clone().ready().await.unwrap();
        let request = http::Request::get(format!("http://localhost/h2/{i}")).body(()).unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        assert_eq!(response.await.unwrap().status(), 200);
    }
    drop(client);
    let _ = driver.await;
    settles(admin, &connections, before.unwrap_or(0.0) + 1.0).await;

    // A client that gives up before the (slow) upstream answers.
    let hits = upstream.hits();
    let mut leaving = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut leaving, b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    common::eventually("the request reached the upstream", || upstream.hits() > hits).await;
    drop(leaving);

    let lines = read_lines(&access, 4);
    let h2: Vec<&Value> = lines.iter().filter(|l| l["protocol"] == "HTTP/2").collect();
    assert_eq!(h2.len(), 3, "{lines:?}");
    assert!(h2.iter().all(|l| l["status"] == 200 && l["path"].as_str().unwrap().starts_with("/h2/")));
    let left = lines.iter().find(|l| l["path"] == "/slow").unwrap();
    assert_eq!(left["status"], 499, "{left}");
    assert_eq!(left["bytes"], 0);
    settles(admin, r#"portcullis_requests_total{method="GET",route="/",status="499"}"#, 1.0).await;
    settles(admin, "portcullis_requests_in_flight", 0.0).await;
}
