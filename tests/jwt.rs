//! JWTs end to end: generated RSA, EC and Ed25519 keys (PEM files, JWKS files, a local IdP
//! serving a JWKS the tests rotate), HMAC secrets, every token attack of the issue, and the
//! IdP being down, slow or returning garbage. Every refused token gets a 401/403 JSON error
//! and never reaches the upstream.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/keys.rs"]
mod keys;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use common::{assert_error, raw, Gateway, RawResponse, Upstream};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use keys::{jwks, now, SigningKey};
use serde_json::{json, Value};
use tokio::net::TcpListener;

const INVALID_TOKEN: &str = r#"Bearer realm="portcullis", error="invalid_token""#;
const INVALID_REQUEST: &str = r#"Bearer realm="portcullis", error="invalid_request""#;
const HMAC_SECRET: &str = "an-hmac-secret-that-is-long-enough-0123456789";

/// What the local IdP answers on `/jwks.json`.
#[derive(Clone)]
enum Jwks {
    Serve(String),
    Status(u16),
    Garbage,
    Slow,
    /// A redirect to this location.
    Redirect(String),
}

/// A local IdP serving a JWKS document the test can change.
struct Idp {
    addr: SocketAddr,
    mode: Arc<Mutex<Jwks>>,
    fetches: Arc<AtomicUsize>,
}

impl Idp {
    async fn start(mode: Jwks) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(mode));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (m, f) = (mode.clone(), fetches.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (m, f) = (m.clone(), f.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        f.fetch_add(1, Ordering::SeqCst);
                        let mode = m.lock().unwrap().clone();
                        async move {
                            let mut location = None;
                            let (status, body) = match mode {
                                Jwks::Serve(doc) => (200, doc),
                                Jwks::Status(code) => (code, "{}".to_string()),
                                Jwks::Garbage => (200, "<html>not a key set</html>".to_string()),
                                Jwks::Slow => {
                                    tokio::time::sleep(Duration::from_secs(10)).await;
                                    (200, "{}".to_string())
                                }
                                Jwks::Redirect(to) => {
                                    location = Some(to);
                                    (302, String::new())
                                }
                            };
                            let mut response = Response::builder().status(status);
                            if let Some(to) = location {
                                response = response.header(hyper::header::LOCATION, to);
                            }
                            Ok::<_, Infallible>(response.body(Full::new(Bytes::from(body))).unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Idp { addr, mode, fetches }
    }

    fn set(&self, mode: Jwks) {
        *self.mode.lock().unwrap() = mode;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }
}

/// Claims a token of `iss` for `aud` would carry, valid for ten minutes.
fn claims(iss: &str, aud: &str) -> Value {
    json!({"iss": iss, "aud": aud, "sub": "user-42", "exp": now() + 600, "iat": now(),
           "scope": "read_models run_inference", "email": "dev@example.com"})
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

async fn get(gw: &Gateway, path: &str, token: &str) -> RawResponse {
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    raw(gw.addr, req.as_bytes()).await
}

async fn send(gw: &Gateway, path: &str, headers: &str) -> RawResponse {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n");
    raw(gw.addr, req.as_bytes()).await
}

fn assert_401(resp: &RawResponse, challenge: &str) {
    assert_error(resp, 401, "AUTHENTICATION_FAILED");
    assert_eq!(resp.header("www-authenticate"), Some(challenge));
    assert_eq!(resp.json()["error"]["message"], "missing or invalid credentials");
}

fn assert_ok(resp: &RawResponse) -> Value {
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    resp.json()
}

const ROUTES: &str = r#"
[[route]]
name = "models-read"
path = "/api/v1/models"
methods = ["GET"]
upstream = "api"
permissions = ["read_models"]

[[route]]
name = "train"
path = "/api/v1/train"
upstream = "api"
permissions = ["write_models"]
"#;

/// Keys of every family, and a gateway with one issuer per key source.
struct Static {
    gw: Gateway,
    upstream: Upstream,
    rsa: SigningKey,
    ps: SigningKey,
    es256: SigningKey,
    es384: SigningKey,
    ed: SigningKey,
    _dir: tempfile::TempDir,
}

async fn static_issuers() -> Static {
    static_issuers_logging("warn").await
}

/// [`static_issuers`], with the gateway's log at `level`.
async fn static_issuers_logging(level: &str) -> Static {
    let upstream = Upstream::start("api").await;
    let rsa = SigningKey::generate(Algorithm::RS256, "rsa-1");
    let ps = SigningKey::generate(Algorithm::PS384, "ps-1");
    let es256 = SigningKey::generate(Algorithm::ES256, "ec-256");
    let es384 = SigningKey::generate(Algorithm::ES384, "ec-384");
    let ed = SigningKey::generate(Algorithm::EdDSA, "ed-1");
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("rsa.pem");
    std::fs::write(&pem, &rsa.public_pem).unwrap();
    let ps_pem = dir.path().join("ps.pem");
    std::fs::write(&ps_pem, &ps.public_pem).unwrap();
    let set = dir.path().join("jwks.json");
    std::fs::write(&set, jwks(&[&es256, &es384, &ed])).unwrap();
    let secret = dir.path().join("hmac.secret");
    std::fs::write(&secret, format!("{HMAC_SECRET}\n")).unwrap();
    let config = format!(
        r#"
[server]
allowed_hosts = ["localhost"]
# These tests send hundreds of bad tokens from one address on purpose.
auth_failure_limit = "off"

[[upstream]]
name = "api"
targets = ["{addr}"]
{ROUTES}
[auth]

[[auth.jwt]]
name = "rsa"
issuer = "https://rsa.idp.test/"
audiences = ["registry"]
algorithms = ["RS256", "RS512"]
public_key_file = "{pem}"
claims_to_headers = {{ email = "X-Auth-Email" }}

[[auth.jwt]]
name = "pss"
issuer = "https://pss.idp.test/"
audiences = ["registry"]
algorithms = ["PS384"]
public_key_file = "{ps_pem}"
permissions_claim = "permissions"
subject_claim = "client_id"

[[auth.jwt]]
name = "jwks"
issuer = "https://jwks.idp.test/"
audiences = ["registry", "other-api"]
algorithms = ["ES256", "ES384", "EdDSA"]
jwks_file = "{set}"

[[auth.jwt]]
name = "hmac"
issuer = "local"
audiences = ["registry"]
algorithms = ["HS256"]
secret = "file:{secret}"
leeway = "0s"
"#,
        addr = upstream.addr,
        pem = pem.display(),
        ps_pem = ps_pem.display(),
        set = set.display(),
        secret = secret.display(),
    );
    Static { gw: Gateway::start_logging(&config, level).await, upstream, rsa, ps, es256, es384, ed, _dir: dir }
}

fn hs256(claims: &Value) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(HMAC_SECRET.as_bytes())).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn every_algorithm_family_verifies_and_the_upstream_gets_the_identity() {
    let s = static_issuers().await;
    let rsa_claims = claims("https://rsa.idp.test/", "registry");
    let jwks_claims = claims("https://jwks.idp.test/", "registry");
    let tokens = [
        ("https://rsa.idp.test/", s.rsa.sign(&rsa_claims)),
        ("https://jwks.idp.test/", s.es256.sign(&jwks_claims)),
        ("https://jwks.idp.test/", s.es384.sign(&jwks_claims)),
        ("https://jwks.idp.test/", s.ed.sign(&jwks_claims)),
        // Audiences may be an array; one match is enough.
        ("https://jwks.idp.test/", s.ed.sign(&with(jwks_claims.clone(), "aud", json!(["x", "other-api"])))),
        ("local", hs256(&claims("local", "registry"))),
    ];
    for (issuer, token) in &tokens {
        let body = assert_ok(&get(&s.gw, "/api/v1/models", token).await);
        let h = &body["headers"];
        assert_eq!(h["x-auth-method"], json!(["jwt"]), "{issuer}");
        assert_eq!(h["x-auth-subject"], json!(["user-42"]));
        assert_eq!(h["x-auth-issuer"], json!([issuer]));
        assert_eq!(h["x-auth-permissions"], json!(["read_models,run_inference"]));
        assert!(h.get("x-auth-key-id").is_none(), "{h}");
        assert!(h.get("authorization").is_none(), "the token is not forwarded: {h}");
    }
    // claims_to_headers only for the issuer that maps it.
    let body = assert_ok(&get(&s.gw, "/api/v1/models", &tokens[0].1).await);
    assert_eq!(body["headers"]["x-auth-email"], json!(["dev@example.com"]));
    let body = assert_ok(&get(&s.gw, "/api/v1/models", &tokens[1].1).await);
    assert!(body["headers"].get("x-auth-email").is_none());

    // PS384, with permissions as an array and the subject in another claim.
    let pss = json!({"iss": "https://pss.idp.test/", "aud": "registry", "client_id": "svc-7", "exp": now() + 60,
                     "permissions": ["read_models", "write_models", "has space", 7]});
    let body = assert_ok(&get(&s.gw, "/api/v1/train", &s.ps.sign(&pss)).await);
    assert_eq!(body["headers"]["x-auth-subject"], json!(["svc-7"]));
    assert_eq!(body["headers"]["x-auth-permissions"], json!(["read_models,write_models"]));
    assert_eq!(s.upstream.hits(), tokens.len() + 3);
}

#[tokio::test]
async fn a_token_without_the_permission_gets_403_naming_it() {
    let s = static_issuers().await;
    let token = s.rsa.sign(&claims("https://rsa.idp.test/", "registry"));
    let resp = get(&s.gw, "/api/v1/train", &token).await;
    assert_error(&resp, 403, "PERMISSION_DENIED");
    assert_eq!(resp.json()["error"]["details"]["missing_permission"], "write_models");
    assert_eq!(s.upstream.hits(), 0);
}

#[tokio::test]
async fn forged_identity_headers_are_replaced() {
    let s = static_issuers().await;
    let token = s.rsa.sign(&claims("https://rsa.idp.test/", "registry"));
    let headers = format!(
        "Authorization: Bearer {token}\r\nX-Auth-Subject: root\r\nX-Auth-Issuer: https://evil/\r\nX-Auth-Email: ceo@example.com\r\nX-Auth-Key-Id: admin\r\n"
    );
    let body = assert_ok(&send(&s.gw, "/api/v1/models", &headers).await);
    let h = &body["headers"];
    assert_eq!(h["x-auth-subject"], json!(["user-42"]));
    assert_eq!(h["x-auth-issuer"], json!(["https://rsa.idp.test/"]));
    assert_eq!(h["x-auth-email"], json!(["dev@example.com"]));
    assert!(h.get("x-auth-key-id").is_none(), "{h}");
    // A token without the mapped claim leaves no forged value behind.
    let token = s.rsa.sign(&with(claims("https://rsa.idp.test/", "registry"), "email", Value::Null));
    let headers = format!("Authorization: Bearer {token}\r\nX-Auth-Email: ceo@example.com\r\n");
    let body = assert_ok(&send(&s.gw, "/api/v1/models", &headers).await);
    assert!(body["headers"].get("x-auth-email").is_none(), "{body}");
}

#[tokio::test]
async fn every_token_attack_is_refused_before_the_upstream() {
    // Logging everything it logs, so that "the log never holds a token" is a check of the log.
    let s = static_issuers_logging("debug").await;
    let rsa_iss = "https://rsa.idp.test/";
    let good = claims(rsa_iss, "registry");
    let attacker = SigningKey::generate(Algorithm::RS256, "rsa-1");
    let header_b64 = |h: Value| b64(h.to_string().as_bytes());
    let payload = b64(good.to_string().as_bytes());

    // alg: none, in every spelling, with and without a signature.
    let mut attacks: Vec<(&str, String)> = vec![];
    for alg in ["none", "None", "NONE", "nOnE"] {
        attacks.push(("alg none", format!("{}.{payload}.", header_b64(json!({"alg": alg, "typ": "JWT"})))));
        attacks.push(("alg none, signed", format!("{}.{payload}.c2ln", header_b64(json!({"alg": alg})))));
    }
    // HS256 "signed" with the RSA public key as the HMAC secret: the classic key confusion.
    let confusion =
        encode(&Header::new(Algorithm::HS256), &good, &EncodingKey::from_secret(s.rsa.public_pem.as_bytes())).unwrap();
    attacks.push(("HS256 with the RSA public key", confusion));
    // An algorithm the issuer does not list (RS384 is not in [RS256, RS512]).
    let mut rs384 = Header::new(Algorithm::RS384);
    rs384.kid = Some("rsa-1".into());
    attacks.push(("alg not in the allow-list", s.rsa.sign_with(&rs384, &good)));
    // Signed by another key, even one that embeds itself as `jwk` or points at a `jku`.
    attacks.push(("another key", attacker.sign(&good)));
    let mut embedded = Header::new(Algorithm::RS256);
    embedded.jwk = Some(serde_json::from_value(attacker.jwk.clone()).unwrap());
    embedded.jku = Some("http://127.0.0.1:1/jwks.json".into());
    attacks.push(("embedded jwk", attacker.sign_with(&embedded, &good)));
    // A token valid for another issuer: right key, wrong iss; right iss, another audience.
    attacks.push(("another issuer's key", s.es256.sign(&good)));
    attacks.push(("unknown issuer", s.rsa.sign(&with(good.clone(), "iss", json!("https://evil.test/")))));
    attacks.push(("no issuer", s.rsa.sign(&with(good.clone(), "iss", Value::Null))));
    attacks.push(("other audience", s.rsa.sign(&with(good.clone(), "aud", json!("other-api")))));
    attacks.push(("no audience", s.rsa.sign(&with(good.clone(), "aud", Value::Null))));
    // Time.
    attacks.push(("expired", s.rsa.sign(&with(good.clone(), "exp", json!(now() - 120)))));
    attacks.push(("no exp", s.rsa.sign(&with(good.clone(), "exp", Value::Null))));
    attacks.push(("exp as text", s.rsa.sign(&with(good.clone(), "exp", json!("tomorrow")))));
    attacks.push(("not yet valid", s.rsa.sign(&with(good.clone(), "nbf", json!(now() + 3600)))));
    attacks.push(("issued in the future", s.rsa.sign(&with(good.clone(), "iat", json!(now() + 3600)))));
    attacks.push(("HS expired by 1s, no leeway", hs256(&with(claims("local", "registry"), "exp", json!(now() - 1)))));
    // No subject, or one that would inject a header line.
    attacks.push(("no subject", s.rsa.sign(&with(good.clone(), "sub", Value::Null))));
    attacks
        .push(("subject with a newline", s.rsa.sign(&with(good.clone(), "sub", json!("a\r\nX-Auth-Subject: root")))));
    // Tampered payload, truncated and mangled segments.
    let real = s.rsa.sign(&good);
    let parts: Vec<&str> = real.split('.').collect();
    let admin = b64(with(good.clone(), "scope", json!("write_models manage_users")).to_string().as_bytes());
    attacks.push(("tampered payload", format!("{}.{admin}.{}", parts[0], parts[2])));
    attacks.push(("no signature", format!("{}.{}.", parts[0], parts[1])));
    attacks.push(("bad base64", format!("{}.{}!.{}", parts[0], parts[1], parts[2])));
    attacks.push(("header not JSON", format!("{}.{}.{}", b64(b"not json"), parts[1], parts[2])));
    // Properly signed, but with a header extension the gateway does not understand.
    let mut crit = Header::new(Algorithm::RS256);
    crit.crit = Some(vec!["exp".into()]);
    attacks.push(("crit extension", s.rsa.sign_with(&crit, &good)));
    // kid as a path, kid for another key type.
    let mut traversal = Header::new(Algorithm::ES256);
    traversal.kid = Some("../../dev/null".into());
    attacks.push(("kid path traversal", s.es256.sign_with(&traversal, &claims("https://jwks.idp.test/", "registry"))));
    let mut cross = Header::new(Algorithm::ES256);
    cross.kid = Some("ed-1".into());
    attacks.push(("kid of another key type", s.es256.sign_with(&cross, &claims("https://jwks.idp.test/", "registry"))));

    for (what, token) in &attacks {
        let resp = get(&s.gw, "/api/v1/models", token).await;
        assert_401(&resp, INVALID_TOKEN);
        assert!(
            !String::from_utf8_lossy(&resp.body).contains("user-42"),
            "{what}: the error leaks claims: {}",
            String::from_utf8_lossy(&resp.body)
        );
    }
    assert_eq!(s.upstream.hits(), 0, "a refused token reached the upstream");
    // The gateway is still fine, and the log never holds a token.
    assert_ok(&get(&s.gw, "/api/v1/models", &real).await);
    let log = s.gw.stderr();
    assert!(log.lines().count() > 10, "the gateway logged at debug level: {log}");
    assert!(!log.contains(parts[2]), "a token signature is in the log");
}

#[tokio::test]
async fn malformed_bearer_values_are_invalid_requests() {
    let s = static_issuers().await;
    let token = s.rsa.sign(&claims("https://rsa.idp.test/", "registry"));
    let mut huge_kid = Header::new(Algorithm::RS256);
    huge_kid.kid = Some("k".repeat(10 * 1024));
    let huge_kid_token = s.rsa.sign_with(&huge_kid, &claims("https://rsa.idp.test/", "registry"));
    let twenty_kb = format!("{}.{}.{}", "a".repeat(7000), "b".repeat(7000), "c".repeat(7000));
    for headers in [
        "Authorization: Bearer\r\n".to_string(),
        "Authorization: Bearer \r\n".to_string(),
        format!("Authorization: Bearer {token} {token}\r\n"),
        format!("Authorization: Bearer {token}\r\nAuthorization: Bearer {token}\r\n"),
        format!("Authorization: Bearer {huge_kid_token}\r\n"),
        format!("Authorization: Bearer {twenty_kb}\r\n"),
        format!("Authorization: Bearer {token}\r\nX-API-Key: {token}\r\n"),
    ] {
        let resp = send(&s.gw, "/api/v1/models", &headers).await;
        assert_401(&resp, INVALID_REQUEST);
    }
    let resp = send(&s.gw, "/api/v1/models", "").await;
    assert_401(&resp, r#"Bearer realm="portcullis""#);
    assert_eq!(s.upstream.hits(), 0);
}

/// A gateway whose issuer fetches its keys from `idp`.
async fn remote(idp_url: &str, upstream: &Upstream, timing: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[server]
allowed_hosts = ["localhost"]
# These tests send hundreds of bad tokens from one address on purpose.
auth_failure_limit = "off"

[[upstream]]
name = "api"
targets = ["{addr}"]
{ROUTES}
[auth]

[[auth.jwt]]
name = "idp"
issuer = "https://idp.test/"
audiences = ["registry"]
algorithms = ["RS256", "ES256"]
jwks_url = "{idp_url}"
{timing}
"#,
        addr = upstream.addr,
    ))
    .await
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn jwks_rotation_brings_new_keys_and_retires_old_ones() {
    let k1 = SigningKey::generate(Algorithm::RS256, "k1");
    let k2 = SigningKey::generate(Algorithm::ES256, "k2");
    let idp = Idp::start(Jwks::Serve(jwks(&[&k1]))).await;
    let upstream = Upstream::start("api").await;
    let gw = remote(&idp.url(), &upstream, "jwks_min_refresh_interval = \"1s\"\njwks_refresh_interval = \"1h\"").await;
    let c = claims("https://idp.test/", "registry");
    let old = k1.sign(&c);
    assert_ok(&get(&gw, "/api/v1/models", &old).await);
    assert_eq!(idp.fetches(), 1, "fetched once at start");
    assert_ok(&get(&gw, "/api/v1/models", &old).await);

    // The IdP rotates to k2. A k2 token names an unknown kid: the gateway refreshes and accepts it.
    idp.set(Jwks::Serve(jwks(&[&k2])));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_ok(&get(&gw, "/api/v1/models", &k2.sign(&c)).await);
    assert_eq!(idp.fetches(), 2);
    // k1 was rotated out: its token, though cached as verified, is refused now.
    assert_401(&get(&gw, "/api/v1/models", &old).await, INVALID_TOKEN);
    assert_eq!(upstream.hits(), 3);
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_the_idp_one_fetch_per_interval() {
    let k1 = SigningKey::generate(Algorithm::ES256, "k1");
    let idp = Idp::start(Jwks::Serve(jwks(&[&k1]))).await;
    let upstream = Upstream::start("api").await;
    let gw = remote(&idp.url(), &upstream, "jwks_min_refresh_interval = \"1m\"").await;
    wait_for("the first fetch", || idp.fetches() == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let c = claims("https://idp.test/", "registry");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(format!("random-{i}"));
        let token = k1.sign_with(&header, &c);
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            let req = format!(
                "GET /api/v1/models HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            );
            raw(addr, req.as_bytes()).await
        }));
    }
    for t in tasks {
        assert_401(&t.await.unwrap(), INVALID_TOKEN);
    }
    assert_eq!(idp.fetches(), 1, "random kids inside the min interval must not reach the IdP");
    assert_eq!(upstream.hits(), 0);
    assert_ok(&get(&gw, "/api/v1/models", &k1.sign(&c)).await);
}

#[tokio::test]
async fn concurrent_unknown_kids_share_one_fetch() {
    let k1 = SigningKey::generate(Algorithm::ES256, "k1");
    let k2 = SigningKey::generate(Algorithm::ES256, "k2");
    let idp = Idp::start(Jwks::Serve(jwks(&[&k1]))).await;
    let upstream = Upstream::start("api").await;
    let gw = remote(&idp.url(), &upstream, "jwks_min_refresh_interval = \"1s\"").await;
    wait_for("the first fetch", || idp.fetches() == 1).await;
    // The IdP rotates k2 in; once the min interval has passed, 30 clients present k2 at once.
    idp.set(Jwks::Serve(jwks(&[&k1, &k2])));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let token = k2.sign(&claims("https://idp.test/", "registry"));
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let (addr, token) = (gw.addr, token.clone());
            tokio::spawn(async move {
                let req = format!(
                    "GET /api/v1/models HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
                );
                raw(addr, req.as_bytes()).await
            })
        })
        .collect();
    for t in tasks {
        assert_ok(&t.await.unwrap());
    }
    assert_eq!(idp.fetches(), 2, "one fetch served every request that waited for it");
}

#[tokio::test]
async fn the_gateway_starts_while_the_idp_is_down_and_uses_it_once_up() {
    let k1 = SigningKey::generate(Algorithm::RS256, "k1");
    let idp = Idp::start(Jwks::Status(503)).await;
    let upstream = Upstream::start("api").await;
    let gw = remote(&idp.url(), &upstream, "jwks_min_refresh_interval = \"1s\"").await;
    let token = k1.sign(&claims("https://idp.test/", "registry"));
    assert_401(&get(&gw, "/api/v1/models", &token).await, INVALID_TOKEN);
    idp.set(Jwks::Serve(jwks(&[&k1])));
    // Retried in the background every min interval until a fetch succeeds.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = get(&gw, "/api/v1/models", &token).await;
        if resp.status == 200 {
            break;
        }
        assert_401(&resp, INVALID_TOKEN);
        assert!(Instant::now() < deadline, "the key set was never loaded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gw.stderr().contains("JWKS fetch failed"), "the failed fetch is logged: {}", gw.stderr());
}

#[tokio::test]
async fn a_closed_idp_port_fails_fast() {
    let upstream = Upstream::start("api").await;
    let (_closed, closed) = common::refusing_port();
    let gw = remote(&format!("http://{closed}/jwks.json"), &upstream, "jwks_fetch_timeout = \"1s\"").await;
    let k1 = SigningKey::generate(Algorithm::ES256, "k1");
    let started = Instant::now();
    assert_401(&get(&gw, "/api/v1/models", &k1.sign(&claims("https://idp.test/", "registry"))).await, INVALID_TOKEN);
    assert!(started.elapsed() < Duration::from_secs(3), "waited {:?}", started.elapsed());
}

#[tokio::test]
async fn garbage_or_a_slow_idp_keeps_the_last_good_key_set() {
    let k1 = SigningKey::generate(Algorithm::RS256, "k1");
    let k2 = SigningKey::generate(Algorithm::RS256, "k2");
    let idp = Idp::start(Jwks::Serve(jwks(&[&k1]))).await;
    let upstream = Upstream::start("api").await;
    let gw = remote(&idp.url(), &upstream, "jwks_min_refresh_interval = \"1s\"\njwks_fetch_timeout = \"1s\"").await;
    let c = claims("https://idp.test/", "registry");
    let good = k1.sign(&c);
    assert_ok(&get(&gw, "/api/v1/models", &good).await);

    for mode in
        [Jwks::Garbage, Jwks::Status(500), Jwks::Serve(r#"{"keys":[{"kty":"oct","k":"AAAA"}]}"#.into()), Jwks::Slow]
    {
        idp.set(mode);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let before = idp.fetches();
        // An unknown kid asks for a refresh, which fails: bounded wait, then 401.
        let started = Instant::now();
        assert_401(&get(&gw, "/api/v1/models", &k2.sign(&c)).await, INVALID_TOKEN);
        assert!(started.elapsed() < Duration::from_secs(3), "waited {:?}", started.elapsed());
        assert_eq!(idp.fetches(), before + 1, "the unknown kid triggered one fetch");
        // The last good set still verifies, a token it has not seen before included.
        assert_ok(&get(&gw, "/api/v1/models", &good).await);
        let fresh = k1.sign(&with(c.clone(), "jti", json!(format!("{}", idp.fetches()))));
        assert_ok(&get(&gw, "/api/v1/models", &fresh).await);
    }
    assert!(gw.stderr().contains("keeping the last good key set"), "{}", gw.stderr());
}

#[tokio::test]
async fn jwks_fetches_are_counted_by_result() {
    let k1 = SigningKey::generate(Algorithm::RS256, "k1");
    let k2 = SigningKey::generate(Algorithm::RS256, "k2");
    let idp = Idp::start(Jwks::Serve(jwks(&[&k1]))).await;
    let upstream = Upstream::start("api").await;
    let admin = common::reserve_addr();
    let timing =
        format!("jwks_min_refresh_interval = \"1s\"\njwks_refresh_interval = \"1h\"\n[admin]\naddress = \"{admin}\"");
    let gw = remote(&idp.url(), &upstream, &timing).await;
    common::wait_listening(admin).await;
    let series = |result: &str| format!(r#"portcullis_jwks_refresh_total{{issuer="idp",result="{result}"}} "#);
    let scrape = || async {
        let body = common::send(admin, "GET", "/metrics", &[]).await.body;
        String::from_utf8(body).unwrap()
    };
    let count = |scrape: &str, result: &str| -> u64 {
        scrape.lines().find_map(|l| l.strip_prefix(series(result).as_str())?.parse().ok()).unwrap_or(0)
    };
    let c = claims("https://idp.test/", "registry");
    assert_ok(&get(&gw, "/api/v1/models", &k1.sign(&c)).await);
    assert_eq!(count(&scrape().await, "updated"), 1, "the first fetch loaded the set");

    // The IdP fails: an unknown kid asks for a refresh, which is counted as a failure.
    idp.set(Jwks::Status(500));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_401(&get(&gw, "/api/v1/models", &k2.sign(&c)).await, INVALID_TOKEN);
    // The same document again: unchanged.
    idp.set(Jwks::Serve(jwks(&[&k1])));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_401(&get(&gw, "/api/v1/models", &k2.sign(&c)).await, INVALID_TOKEN);
    let text = scrape().await;
    assert_eq!((count(&text, "updated"), count(&text, "failure"), count(&text, "unchanged")), (1, 1, 1), "{text}");
    assert_eq!(idp.fetches(), 3);
}

/// A gateway in front of `upstream` (as upstream `api`) with `rest` (routes, keys, issuers).
fn gateway_config(upstream: SocketAddr, rest: &str) -> String {
    format!("[server]\nallowed_hosts = [\"localhost\"]\n\n[[upstream]]\nname = \"api\"\ntargets = [\"{upstream}\"]\n{rest}\n")
}

/// An HS256 `[[auth.jwt]]` whose secret is in `secret`, for the `registry` audience.
fn hs_issuer(name: &str, issuer: &str, secret: &std::path::Path, extra: &str) -> String {
    format!(
        "[[auth.jwt]]\nname = \"{name}\"\nissuer = \"{issuer}\"\naudiences = [\"registry\"]\nalgorithms = [\"HS256\"]\n\
         secret = \"file:{}\"\n{extra}\n",
        secret.display()
    )
}

/// An ID token is signed by the same IdP with the same key as an access token: with
/// `required_typ`, only tokens typed as access tokens (RFC 9068) pass.
#[tokio::test]
async fn an_id_token_is_not_an_access_token_when_the_issuer_requires_a_typ() {
    let upstream = Upstream::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hmac.secret");
    std::fs::write(&secret, HMAC_SECRET).unwrap();
    let issuer = hs_issuer("idp", "local", &secret, "required_typ = \"at+jwt\"");
    let config = gateway_config(upstream.addr, &format!("{ROUTES}\n{issuer}"));
    let gw = Gateway::start(&config).await;
    let typed = |typ: Option<&str>| {
        let mut header = Header::new(Algorithm::HS256);
        header.typ = typ.map(str::to_string);
        encode(&header, &claims("local", "registry"), &EncodingKey::from_secret(HMAC_SECRET.as_bytes())).unwrap()
    };
    for typ in ["at+jwt", "application/at+jwt", "AT+JWT"] {
        assert_ok(&get(&gw, "/api/v1/models", &typed(Some(typ))).await);
    }
    for typ in [Some("JWT"), None, Some("id+jwt")] {
        assert_401(&get(&gw, "/api/v1/models", &typed(typ)).await, INVALID_TOKEN);
    }
    assert_eq!(upstream.hits(), 3);
}

/// Permissions are names any issuer can grant: a route's `credentials` say whose grants count.
/// A partner IdP minting `scope: "admin"`, or an API key holding `admin`, gets 403 where only
/// the corporate IdP's tokens are accepted.
#[tokio::test]
async fn a_route_accepts_only_the_credentials_it_names() {
    use sha2::{Digest, Sha256};
    let upstream = Upstream::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let (corp_secret, partner_secret) =
        ("corp-secret-0123456789-0123456789-0123", "partner-secret-0123456789-0123456789-01");
    std::fs::write(dir.path().join("corp"), corp_secret).unwrap();
    std::fs::write(dir.path().join("partner"), partner_secret).unwrap();
    let key = "pcs_route-credentials-test-key-0123456789";
    let routes = format!(
        r#"
[[route]]
name = "admin"
path = "/admin"
upstream = "api"
permissions = ["admin"]
credentials = ["jwt:corp"]

[[route]]
name = "reports"
path = "/reports"
upstream = "api"
credentials = ["api_key", "jwt:partner"]

[[auth.api_key]]
id = "ops"
hash = "sha256:{hash}"
permissions = ["admin"]
{corp}
{partner}"#,
        hash = hex::encode(Sha256::digest(key.as_bytes())),
        corp = hs_issuer("corp", "https://corp.idp.test/", &dir.path().join("corp"), ""),
        partner = hs_issuer("partner", "https://partner.idp.test/", &dir.path().join("partner"), ""),
    );
    let config = gateway_config(upstream.addr, &routes);
    let gw = Gateway::start(&config).await;
    let token = |iss: &str, secret: &str| {
        let claims = with(claims(iss, "registry"), "scope", json!("admin"));
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    };
    let corp = format!("Authorization: Bearer {}\r\n", token("https://corp.idp.test/", corp_secret));
    let partner = format!("Authorization: Bearer {}\r\n", token("https://partner.idp.test/", partner_secret));
    let api_key = format!("X-API-Key: {key}\r\n");
    for (path, headers, allowed) in [
        ("/admin", &corp, true),
        ("/admin", &partner, false),
        ("/admin", &api_key, false),
        ("/reports", &api_key, true),
        ("/reports", &partner, true),
        ("/reports", &corp, false),
    ] {
        let resp = send(&gw, path, headers).await;
        if allowed {
            assert_ok(&resp);
        } else {
            assert_error(&resp, 403, "PERMISSION_DENIED");
            assert_eq!(resp.json()["error"]["message"], "this route does not accept this kind of credential");
        }
    }
    assert_eq!(upstream.hits(), 3);
}

/// Retries `token` until it is answered 200 (a key set the gateway fetches in the background),
/// every refusal meanwhile being a 401; fails after 10 s.
async fn until_accepted(gw: &Gateway, token: &str, what: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = get(gw, "/api/v1/models", token).await;
        if resp.status == 200 {
            return resp.json();
        }
        assert_401(&resp, INVALID_TOKEN);
        assert!(Instant::now() < deadline, "not accepted after 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A JWKS document holding `key`, padded with an ignored member to exactly `size` bytes.
fn padded_jwks(key: &SigningKey, size: usize) -> String {
    let doc = jwks(&[key]);
    let open = &doc[..doc.len() - 1];
    let unpadded = format!(r#"{open},"padding":""}}"#);
    let padded = format!(r#"{open},"padding":"{}"}}"#, "x".repeat(size - unpadded.len()));
    assert_eq!(padded.len(), size);
    padded
}

/// `MAX_JWKS_BYTES`: a document of exactly 512 KiB is read; one byte more and the fetch fails,
/// is logged, and the issuer's tokens are refused.
#[tokio::test]
async fn a_jwks_document_over_512_kib_is_refused() {
    let k1 = SigningKey::generate(Algorithm::ES256, "k1");
    let token = k1.sign(&claims("https://idp.test/", "registry"));

    let at_cap = Idp::start(Jwks::Serve(padded_jwks(&k1, 512 * 1024))).await;
    let upstream = Upstream::start("api").await;
    let gw = remote(&at_cap.url(), &upstream, "").await;
    until_accepted(&gw, &token, "a 512 KiB key set").await;
    assert_eq!(upstream.hits(), 1);

    let over = Idp::start(Jwks::Serve(padded_jwks(&k1, 512 * 1024 + 1))).await;
    let upstream = Upstream::start("api").await;
    let gw = remote(&over.url(), &upstream, "").await;
    common::eventually("the failed fetch of the oversize key set is logged", || {
        let log = gw.stderr();
        log.contains("JWKS fetch failed") && log.contains("is larger than 512 KiB")
    })
    .await;
    assert_eq!(over.fetches(), 1);
    for _ in 0..3 {
        assert_401(&get(&gw, "/api/v1/models", &token).await, INVALID_TOKEN);
    }
    assert_eq!(upstream.hits(), 0, "a token of a key set over the cap reached the upstream");
}

/// A JWKS URL that redirects (here to a valid key set) is not followed: the fetch fails, and
/// the issuer's tokens are refused.
#[tokio::test]
async fn a_jwks_redirect_is_not_followed() {
    let k1 = SigningKey::generate(Algorithm::RS256, "k1");
    let elsewhere = Idp::start(Jwks::Serve(jwks(&[&k1]))).await;
    let redirecting = Idp::start(Jwks::Redirect(elsewhere.url())).await;
    let upstream = Upstream::start("api").await;
    let gw = remote(&redirecting.url(), &upstream, "").await;
    common::eventually("the failed fetch is logged", || {
        let log = gw.stderr();
        log.contains("JWKS fetch failed") && log.contains("answered HTTP 302")
    })
    .await;
    let token = k1.sign(&claims("https://idp.test/", "registry"));
    for _ in 0..3 {
        assert_401(&get(&gw, "/api/v1/models", &token).await, INVALID_TOKEN);
    }
    assert_eq!(redirecting.fetches(), 1);
    assert_eq!(elsewhere.fetches(), 0, "the redirect was followed");
    assert_eq!(upstream.hits(), 0);
}

/// `require_exp = false` accepts a token without `exp`; by default such a token is refused. A
/// token that has one is still held to it.
#[tokio::test]
async fn require_exp_false_accepts_tokens_without_exp() {
    let upstream = Upstream::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hmac.secret");
    std::fs::write(&secret, HMAC_SECRET).unwrap();
    let issuers = format!(
        "{}\n{}",
        hs_issuer("lenient", "lenient", &secret, "require_exp = false"),
        hs_issuer("strict", "strict", &secret, "")
    );
    let gw = Gateway::start(&gateway_config(upstream.addr, &format!("{ROUTES}\n{issuers}"))).await;
    // No `exp` member at all (`"exp": null` is a malformed claim, not a missing one).
    let without_exp = |iss: &str| {
        let mut c = claims(iss, "registry");
        c.as_object_mut().unwrap().remove("exp");
        hs256(&c)
    };

    let body = assert_ok(&get(&gw, "/api/v1/models", &without_exp("lenient")).await);
    assert_eq!(body["headers"]["x-auth-issuer"], json!(["lenient"]));
    assert_eq!(body["headers"]["x-auth-subject"], json!(["user-42"]));
    // The default: refused, and so is an expired token of the lenient issuer.
    assert_401(&get(&gw, "/api/v1/models", &without_exp("strict")).await, INVALID_TOKEN);
    let expired = hs256(&with(claims("lenient", "registry"), "exp", json!(now() - 120)));
    assert_401(&get(&gw, "/api/v1/models", &expired).await, INVALID_TOKEN);
    assert_ok(&get(&gw, "/api/v1/models", &hs256(&claims("strict", "registry"))).await);
    assert_eq!(upstream.hits(), 2);
}

/// `token_cache_size = 0` turns the cache off: every token is verified on every request, the
/// same token accepted each time, and a key rotated out of the JWKS refuses its tokens.
#[tokio::test]
async fn with_the_token_cache_off_every_request_is_verified() {
    let k1 = SigningKey::generate(Algorithm::RS256, "k1");
    let k2 = SigningKey::generate(Algorithm::ES256, "k2");
    let idp = Idp::start(Jwks::Serve(jwks(&[&k1]))).await;
    let upstream = Upstream::start("api").await;
    let gw = Gateway::start(&gateway_config(
        upstream.addr,
        &format!(
            r#"{ROUTES}
[auth]
token_cache_size = 0

[[auth.jwt]]
name = "idp"
issuer = "https://idp.test/"
audiences = ["registry"]
algorithms = ["RS256", "ES256"]
jwks_url = "{}"
jwks_min_refresh_interval = "1s"
jwks_refresh_interval = "1h"
"#,
            idp.url()
        ),
    ))
    .await;
    let c = claims("https://idp.test/", "registry");
    let old = k1.sign(&c);
    until_accepted(&gw, &old, "the first key set").await;
    for _ in 0..3 {
        assert_eq!(assert_ok(&get(&gw, "/api/v1/models", &old).await)["headers"]["x-auth-subject"], json!(["user-42"]));
    }
    // The same claims under another key the gateway does not have: refused every time.
    let forged = SigningKey::generate(Algorithm::RS256, "k1").sign(&c);
    for _ in 0..2 {
        assert_401(&get(&gw, "/api/v1/models", &forged).await, INVALID_TOKEN);
    }
    // The IdP rotates k1 out; a k2 token brings the new set (after the min interval).
    idp.set(Jwks::Serve(jwks(&[&k2])));
    until_accepted(&gw, &k2.sign(&c), "the rotated key set").await;
    assert_401(&get(&gw, "/api/v1/models", &old).await, INVALID_TOKEN);
    assert_eq!(upstream.hits(), 5);
}

/// A gateway allowing 2 failed authentications a minute per client, with HS256 issuers whose
/// tokens `hs256` signs (`local`, and `second` when `issuers` is 2, so that `iss` picks one
/// before any signature work), and the access log in `dir/access.log`.
async fn auth_failure_limited(upstream: &Upstream, dir: &std::path::Path, issuers: usize) -> Gateway {
    let secret = dir.join("hmac.secret");
    std::fs::write(&secret, HMAC_SECRET).unwrap();
    let mut auth = hs_issuer("local", "local", &secret, "");
    if issuers == 2 {
        auth.push_str(&hs_issuer("second", "https://second.idp.test/", &secret, ""));
    }
    Gateway::start(&format!(
        r#"
[server]
allowed_hosts = ["localhost"]
auth_failure_limit = "2/minute"

[log]
access = "{access}"

[[upstream]]
name = "api"
targets = ["{addr}"]
{ROUTES}
{auth}
"#,
        access = dir.join("access.log").display(),
        addr = upstream.addr,
    ))
    .await
}

/// What each access-log line says of its request, once there are `n`: the error code and the
/// reason (`ok` for a request served).
fn logged_reasons(dir: &std::path::Path, n: usize) -> Vec<String> {
    let lines = common::wait_json_lines(&dir.join("access.log"), n);
    assert_eq!(lines.len(), n, "{lines:?}");
    lines
        .iter()
        .map(|l| match (l["error"].as_str(), l["reason"].as_str()) {
            (None, _) => "ok".to_string(),
            (Some(error), reason) => format!("{error} {}", reason.unwrap_or("-")),
        })
        .collect()
}

/// Not guesses (`AuthFailure::is_guess`): no credential, an expired token, a token not valid
/// yet (`nbf`, or `iat` in the future). However many, they stay 401 and never bring the
/// failed-authentication limit's 429.
#[tokio::test]
async fn missing_expired_and_not_yet_valid_tokens_do_not_count_as_failed_authentications() {
    let upstream = Upstream::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = auth_failure_limited(&upstream, dir.path(), 1).await;
    common::within_one_window(60, Duration::from_secs(10)).await;
    let good = claims("local", "registry");
    let expired = hs256(&with(good.clone(), "exp", json!(now() - 120)));
    let not_before = hs256(&with(good.clone(), "nbf", json!(now() + 3600)));
    let issued_later = hs256(&with(good.clone(), "iat", json!(now() + 3600)));
    for _ in 0..3 {
        assert_401(&send(&gw, "/api/v1/models", "").await, r#"Bearer realm="portcullis""#);
        for token in [&expired, &not_before, &issued_later] {
            assert_401(&get(&gw, "/api/v1/models", token).await, INVALID_TOKEN);
        }
    }
    // Twelve failures, nine with a token, against a limit of two: a valid token still passes.
    assert_ok(&get(&gw, "/api/v1/models", &hs256(&good)).await);
    assert_eq!(upstream.hits(), 1);
    let reasons = logged_reasons(dir.path(), 13);
    let round = [
        "AUTHENTICATION_FAILED missing",
        "AUTHENTICATION_FAILED expired",
        "AUTHENTICATION_FAILED not_yet_valid",
        "AUTHENTICATION_FAILED not_yet_valid",
    ];
    assert_eq!(reasons[..12], round.repeat(3)[..], "{reasons:?}");
    assert_eq!(reasons[12], "ok");
}

/// Two failures that look like guesses, then the third request from that address is 429
/// `auth_failures` without its (valid) credential being looked at.
async fn two_guesses_then_429(
    gw: &Gateway,
    upstream: &Upstream,
    dir: &std::path::Path,
    guesses: [String; 2],
    reason: &str,
) {
    let good = hs256(&claims("local", "registry"));
    assert_ok(&get(gw, "/api/v1/models", &good).await);
    for guess in &guesses {
        assert_401(&get(gw, "/api/v1/models", guess).await, INVALID_TOKEN);
    }
    let blocked = get(gw, "/api/v1/models", &good).await;
    assert_error(&blocked, 429, "RATE_LIMITED");
    assert_eq!(blocked.json()["error"]["details"]["policy"], "auth_failures");
    assert!(blocked.header("retry-after").is_some());
    assert_eq!(upstream.hits(), 1, "the request after two guesses reached the upstream");
    let failed = format!("AUTHENTICATION_FAILED {reason}");
    let reasons = logged_reasons(dir, 4);
    assert_eq!(reasons[..3], ["ok", failed.as_str(), failed.as_str()], "{reasons:?}");
    assert!(reasons[3].starts_with("RATE_LIMITED"), "{reasons:?}");
}

#[tokio::test]
async fn two_bad_signatures_bring_the_failed_authentication_limit() {
    let upstream = Upstream::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = auth_failure_limited(&upstream, dir.path(), 1).await;
    common::within_one_window(60, Duration::from_secs(10)).await;
    let forge = |jti: &str| {
        let secret = EncodingKey::from_secret(b"a-guessed-secret-that-is-long-enough-0123");
        encode(&Header::new(Algorithm::HS256), &with(claims("local", "registry"), "jti", json!(jti)), &secret).unwrap()
    };
    two_guesses_then_429(&gw, &upstream, dir.path(), [forge("1"), forge("2")], "bad_signature").await;
}

#[tokio::test]
async fn two_tokens_of_an_unknown_issuer_bring_the_failed_authentication_limit() {
    // With several issuers `iss` is refused before any signature work; with one, after it.
    for issuers in [2, 1] {
        let upstream = Upstream::start("api").await;
        let dir = tempfile::tempdir().unwrap();
        let gw = auth_failure_limited(&upstream, dir.path(), issuers).await;
        common::within_one_window(60, Duration::from_secs(10)).await;
        // Signed with the right secret: only the issuer is wrong.
        let unknown = |iss: &str| hs256(&claims(iss, "registry"));
        let guesses = [unknown("https://evil.test/"), unknown("https://other.evil.test/")];
        two_guesses_then_429(&gw, &upstream, dir.path(), guesses, "unknown_issuer").await;
    }
}
