//! Request-path functions, one benchmark each: host allow-list, path normalisation, route
//! lookup, CORS, rate limits, header hygiene, request ids, API keys, and JWT verification per
//! algorithm (cached and uncached). Run with `cargo bench --bench request_path`.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

#[path = "../tests/common/keys.rs"]
mod keys;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderName, HeaderValue, Method};
use pingora::http::RequestHeader;
use portcullis::pipeline::auth::AuthMode;
use portcullis::pipeline::client::TrustedProxies;
use portcullis::pipeline::forward::{prepare_upstream_request, Forwarding};
use portcullis::pipeline::host::{HostAllowList, HostPattern};
use portcullis::pipeline::route::{Route, RouteTable};
use portcullis::pipeline::{path, request_id};

fn request(path: &str, host: &str) -> RequestHeader {
    let mut req = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
    req.insert_header("host", host).unwrap();
    req.insert_header("user-agent", "bench/1.0").unwrap();
    req.insert_header("accept", "application/json").unwrap();
    req.insert_header("x-api-key", "pk_0123456789abcdef").unwrap();
    req
}

fn hosts(c: &mut Criterion) {
    let patterns = ["localhost", "127.0.0.1", "api.example.com", "*.example.com", "*.internal.example.net"];
    let list = HostAllowList::from_patterns(patterns.iter().map(|p| HostPattern::parse(p).unwrap()));
    let exact = request("/", "API.example.com:8443");
    let wildcard = request("/", "a.b.example.com");
    let denied = request("/", "example.com.evil.net");
    let mut g = c.benchmark_group("host");
    g.bench_function("exact", |b| b.iter(|| list.check(black_box(&exact)).is_ok()));
    g.bench_function("wildcard", |b| b.iter(|| list.check(black_box(&wildcard)).is_ok()));
    g.bench_function("denied", |b| b.iter(|| list.check(black_box(&denied)).is_err()));
    g.finish();
}

fn paths(c: &mut Criterion) {
    let mut g = c.benchmark_group("path");
    g.bench_function("canonical", |b| b.iter(|| path::normalize(black_box("/api/v1/models/42")).is_ok()));
    g.bench_function("rewritten", |b| b.iter(|| path::normalize(black_box("/api//v1/./%6dodels/x/../42")).is_ok()));
    g.bench_function("refused", |b| b.iter(|| path::normalize(black_box("/api/v1/models%2f42")).is_err()));
    g.finish();
}

fn routes(c: &mut Criterion) {
    let mut routes = Vec::new();
    for i in 0..50 {
        routes.push(Route {
            name: format!("r{i}").into(),
            host: None,
            path: format!("/api/v{}/service{}", i % 3, i).into(),
            methods: Some(vec![Method::GET, Method::POST]),
            upstream: 0,
            auth: AuthMode::None,
            permissions: Vec::new(),
            credentials: None,
            cors: false,
            limits_before_auth: Vec::new(),
            limits_after_auth: Vec::new(),
            ratelimit_policy: None,
        });
    }
    routes.push(Route {
        name: "models".into(),
        host: None,
        path: "/api/v1/models".into(),
        methods: Some(vec![Method::GET, Method::HEAD]),
        upstream: 0,
        auth: AuthMode::None,
        permissions: Vec::new(),
        credentials: None,
        cors: false,
        limits_before_auth: Vec::new(),
        limits_after_auth: Vec::new(),
        ratelimit_policy: None,
    });
    let table = RouteTable::new(routes);
    let mut g = c.benchmark_group("route");
    g.bench_function("hit_50_routes", |b| {
        b.iter(|| table.lookup(black_box("api.example.com"), black_box("/api/v1/models/42/versions/3"), &Method::GET))
    });
    g.bench_function("miss_50_routes", |b| {
        b.iter(|| table.lookup(black_box("api.example.com"), black_box("/other/path/entirely"), &Method::GET))
    });
    g.finish();
}

fn cors(c: &mut Criterion) {
    use portcullis::pipeline::cors::{CorsPolicy, CorsSettings, OriginPattern};
    let policy = CorsPolicy::new(CorsSettings {
        origins: ["https://app.example.com", "https://*.example.com", "http://localhost:3000"]
            .iter()
            .map(|o| OriginPattern::parse(o).unwrap())
            .collect(),
        methods: vec![Method::GET, Method::POST],
        headers: Some(vec![HeaderName::from_static("authorization"), HeaderName::from_static("content-type")]),
        expose: vec![HeaderName::from_static("x-request-id")],
        credentials: true,
        max_age: 600,
    });
    let mut exact = request("/", "api.example.com");
    exact.insert_header("origin", "https://app.example.com").unwrap();
    let mut wildcard = request("/", "api.example.com");
    wildcard.insert_header("origin", "https://a.b.example.com").unwrap();
    let mut denied = request("/", "api.example.com");
    denied.insert_header("origin", "https://example.com.evil.net").unwrap();
    let mut preflight = request("/", "api.example.com");
    preflight.set_method(Method::OPTIONS);
    preflight.insert_header("origin", "https://app.example.com").unwrap();
    preflight.insert_header("access-control-request-method", "POST").unwrap();
    preflight.insert_header("access-control-request-headers", "authorization,content-type").unwrap();
    let mut upstream = http::HeaderMap::with_capacity(8);
    upstream.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let allowed = HeaderValue::from_static("https://app.example.com");
    let mut g = c.benchmark_group("cors");
    g.bench_function("origin_exact", |b| b.iter(|| policy.allow_origin(black_box(&exact))));
    g.bench_function("origin_wildcard", |b| b.iter(|| policy.allow_origin(black_box(&wildcard))));
    g.bench_function("origin_denied", |b| b.iter(|| policy.allow_origin(black_box(&denied))));
    g.bench_function("preflight", |b| b.iter(|| policy.answer_preflight(black_box(&preflight), &Method::POST).is_ok()));
    g.bench_function("decorate_response", |b| {
        b.iter_batched(
            || upstream.clone(),
            |mut headers| policy.decorate(&mut headers, Some(&allowed)),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn rate_limits(c: &mut Criterion) {
    use portcullis::pipeline::ratelimit::{Caller, LimitKey, Policy, Rate, RateLimiter};
    use std::net::IpAddr;
    let unlimited = Rate { count: u32::MAX.into(), period: 60 };
    let limiter = RateLimiter::new(
        vec![
            Policy::new("per-client".into(), LimitKey::Client, unlimited),
            Policy::new("per-identity".into(), LimitKey::Identity, unlimited),
        ],
        None,
    );
    let headers = http::HeaderMap::new();
    let now = 1_800_000_000;
    let mut g = c.benchmark_group("ratelimit");
    let one = Caller { client: "203.0.113.9".parse().unwrap(), headers: &headers, identity: None };
    g.bench_function("one_policy_same_client", |b| {
        b.iter(|| limiter.check(&[0], black_box(&one), now, &mut None).is_ok())
    });
    let who = Caller { identity: Some((b"", b"ci-bot")), ..one };
    g.bench_function("two_policies", |b| b.iter(|| limiter.check(&[0, 1], black_box(&who), now, &mut None).is_ok()));
    let mut quota = None;
    limiter.check(&[0], &one, now, &mut quota).unwrap();
    let quota = quota.unwrap();
    let policy_header = portcullis::pipeline::ratelimit::policy_header(&limiter.policies, &[0, 1]);
    let upstream = http::HeaderMap::with_capacity(8);
    g.bench_function("decorate_response", |b| {
        b.iter_batched(
            || upstream.clone(),
            |mut headers| limiter.decorate(&mut headers, Some(&quota), policy_header.as_ref(), now),
            criterion::BatchSize::SmallInput,
        )
    });
    // Many distinct clients: past the exact table, into the sketch.
    let mut next = 0u32;
    g.bench_function("one_policy_distinct_clients", |b| {
        b.iter(|| {
            next = next.wrapping_add(1);
            let c = Caller { client: IpAddr::V4(next.into()), headers: &headers, identity: None };
            limiter.check(&[0], black_box(&c), now, &mut None).is_ok()
        })
    });
    g.finish();
}

fn forwarding(c: &mut Criterion) {
    let proxies = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
    let base = request("/api/v1/models/42", "api.example.com");
    let host = HeaderValue::from_static("api.example.com");
    let name = HeaderName::from_static("x-request-id");
    let id = request_id::generate();
    let fwd = Forwarding {
        peer: "203.0.113.9".parse().unwrap(),
        scheme: "https",
        host: &host,
        canonical_path: None,
        request_id: (&name, &id),
        identity: None,
        strip_credentials: None,
    };
    let mut g = c.benchmark_group("forward");
    g.bench_function("prepare_upstream_request", |b| {
        b.iter_batched(
            || base.clone(),
            |mut req| prepare_upstream_request(&mut req, &proxies, &fwd).is_ok(),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("request_id_generate", |b| b.iter(request_id::generate));
    g.finish();
}

fn api_keys(c: &mut Criterion) {
    use portcullis::pipeline::auth::apikey::{generate, hash_line, parse_hash, ApiKey, ApiKeys};
    use std::time::SystemTime;
    let mut entries = Vec::new();
    let mut secrets = Vec::new();
    for i in 0..1000 {
        let secret = generate().unwrap();
        let hash = parse_hash(&hash_line(&secret)).unwrap();
        entries.push(ApiKey::new(&format!("k{i}"), hash, "s", vec!["read_models".into()], None, false).unwrap());
        secrets.push(secret);
    }
    let keys = ApiKeys::new(entries).unwrap();
    let now = SystemTime::now();
    let mut g = c.benchmark_group("api_key");
    g.bench_function("verify_hit_1000_keys", |b| b.iter(|| keys.verify(black_box(secrets[500].as_bytes()), now)));
    g.bench_function("verify_miss_1000_keys", |b| b.iter(|| keys.verify(black_box(b"pcs_not_a_key_at_all"), now)));
    g.finish();
}

/// One issuer verifying `alg` with a static key, the token cache on or off.
fn jwt_verifier(alg: jsonwebtoken::Algorithm, cached: bool) -> (portcullis::pipeline::auth::jwt::JwtVerifier, String) {
    use jsonwebtoken::{encode, Algorithm, DecodingKey, EncodingKey, Header};
    use portcullis::pipeline::auth::jwt::{Issuer, IssuerSettings, JwtVerifier, KeySource};
    use portcullis::pipeline::auth::keys::{KeySet, VerifyKey};
    use portcullis::pipeline::auth::token_cache::TokenCache;
    use std::sync::Arc;

    let iss = "https://idp.example.com/";
    let claims = serde_json::json!({"iss": iss, "aud": "registry", "sub": "user-42", "exp": keys::now() + 3600,
                                    "iat": keys::now(), "scope": "read_models run_inference", "email": "a@example.com"});
    let secret = b"an-hmac-secret-that-is-long-enough-0123456789";
    let (token, key) = if alg == Algorithm::HS256 {
        let token = encode(&Header::new(alg), &claims, &EncodingKey::from_secret(secret)).unwrap();
        (token, DecodingKey::from_secret(secret))
    } else {
        let signing = keys::SigningKey::generate(alg, "k1");
        let key = match alg.family() {
            jsonwebtoken::AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(signing.public_pem.as_bytes()),
            jsonwebtoken::AlgorithmFamily::Ec => DecodingKey::from_ec_pem(signing.public_pem.as_bytes()),
            _ => DecodingKey::from_ed_pem(signing.public_pem.as_bytes()),
        }
        .unwrap();
        (signing.sign(&claims), key)
    };
    let set = KeySet { generation: 0, keys: vec![VerifyKey { kid: Some("k1".into()), alg: None, key }] };
    let issuer = Issuer::new(IssuerSettings {
        name: "idp".into(),
        issuer: iss.into(),
        audiences: vec!["registry".into()],
        algorithms: vec![alg],
        keys: KeySource::Static(Arc::new(set)),
        leeway: 30,
        require_exp: true,
        subject_claim: "sub".into(),
        permissions_claim: "scope".into(),
        claims_to_headers: vec![("email".into(), HeaderName::from_static("x-auth-email"))],
        required_typ: None,
    })
    .unwrap();
    (JwtVerifier { issuers: vec![issuer], cache: cached.then(|| TokenCache::new(10_000)) }, token)
}

fn jwts(c: &mut Criterion) {
    use jsonwebtoken::Algorithm;
    let mut g = c.benchmark_group("jwt");
    for alg in
        [Algorithm::HS256, Algorithm::RS256, Algorithm::PS256, Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA]
    {
        for cached in [false, true] {
            let (verifier, token) = jwt_verifier(alg, cached);
            // The clock is read per case: tokens are issued now, and a stale `now` would see
            // their `iat` in the future.
            let now = keys::now();
            if let Err(e) = verifier.verify(token.as_bytes(), now) {
                panic!("{alg:?} token does not verify: {e:?}");
            }
            let name = format!("{alg:?}_{}", if cached { "cached" } else { "uncached" });
            g.bench_function(&name, |b| b.iter(|| verifier.verify(black_box(token.as_bytes()), now).is_ok()));
        }
    }
    g.finish();
}

/// What every access log line pays for its client-supplied fields.
fn redaction(c: &mut Criterion) {
    use portcullis::redact::{redact, redact_target};
    let mut g = c.benchmark_group("redact");
    g.bench_function("plain_path", |b| b.iter(|| redact_target(black_box("/api/v1/models/42"))));
    g.bench_function("path_and_query", |b| {
        b.iter(|| redact_target(black_box("/api/v1/models?page=2&token=abc&q=cats")))
    });
    g.bench_function("uuid", |b| b.iter(|| redact(black_box("550e8400-e29b-41d4-a716-446655440000"))));
    g.bench_function("path_with_uuid", |b| {
        b.iter(|| redact_target(black_box("/api/v1/models/550e8400-e29b-41d4-a716-446655440000")))
    });
    g.bench_function("process_log_line", |b| {
        let line = r#"{"timestamp":"2026-11-25T12:04:51.375098Z","level":"ERROR","fields":{"message":"Fail to proxy: Upstream ConnectRefused context: Peer: addr: 127.0.0.1:1, GET /gone?password=[REDACTED], host: localhost"},"target":"pingora_proxy"}"#;
        b.iter(|| redact(black_box(line)))
    });
    g.finish();
}

criterion_group!(benches, hosts, paths, routes, cors, rate_limits, forwarding, api_keys, jwts, redaction);
criterion_main!(benches);
