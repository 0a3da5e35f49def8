//! Rate limits: `X-RateLimit-*` and IETF `RateLimit` headers on every response of a limited
//! route, 429 `RATE_LIMITED` with an exact `Retry-After`, independent keys, `X-Forwarded-For`
//! believed only from trusted proxies, the failed-authentication limit, and which limits run
//! before authentication.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{assert_error, send, Gateway, RawResponse, Upstream};
use sha2::{Digest, Sha256};

const KEY_A: &str = "pk_test_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const KEY_B: &str = "pk_test_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn hash(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

async fn gateway(upstream: &Upstream, server: &str, limits: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[server]
allowed_hosts = ["localhost"]
{server}

[[upstream]]
name = "api"
targets = ["{addr}"]

{limits}

[auth]
[[auth.api_key]]
id = "a"
hash = "{a}"
permissions = ["read_models"]

[[auth.api_key]]
id = "b"
hash = "{b}"
permissions = ["read_models"]
"#,
        addr = upstream.addr,
        a = hash(KEY_A),
        b = hash(KEY_B),
    ))
    .await
}

fn header_u64(resp: &RawResponse, name: &str) -> u64 {
    resp.header(name).unwrap_or_else(|| panic!("no {name}: {:?}", resp.headers)).parse().unwrap()
}

#[tokio::test]
async fn the_101st_request_in_a_minute_is_refused_with_honest_headers() {
    let upstream = Upstream::start("api").await;
    let gw = gateway(
        &upstream,
        "",
        r#"
[[rate_limit]]
name = "per-client"
key = "client"
limit = "100/minute"

[[route]]
path = "/api"
upstream = "api"
auth = "none"
rate_limits = ["per-client"]

[[route]]
path = "/free"
upstream = "api"
auth = "none"
"#,
    )
    .await;
    common::within_one_window(60, Duration::from_secs(15)).await;
    let reset = (now() / 60 + 1) * 60;
    for i in 1..=100u64 {
        let resp = send(gw.addr, "GET", "/api/x", &[]).await;
        assert_eq!(resp.status, 200, "request {i}");
        assert_eq!(header_u64(&resp, "x-ratelimit-limit"), 100);
        assert_eq!(header_u64(&resp, "x-ratelimit-remaining"), 100 - i);
        assert_eq!(header_u64(&resp, "x-ratelimit-reset"), reset);
        assert_eq!(resp.header("ratelimit-policy"), Some("\"per-client\";q=100;w=60"));
        let field = resp.header("ratelimit").unwrap();
        assert!(field.starts_with(&format!("\"per-client\";r={};t=", 100 - i)), "{field}");
    }
    let refused = send(gw.addr, "GET", "/api/x", &[]).await;
    let at = now();
    assert_error(&refused, 429, "RATE_LIMITED");
    assert_eq!(header_u64(&refused, "x-ratelimit-remaining"), 0);
    assert_eq!(header_u64(&refused, "x-ratelimit-reset"), reset);
    let retry_after = header_u64(&refused, "retry-after");
    assert!(
        retry_after == reset - at || retry_after == reset - at + 1,
        "Retry-After {retry_after}, reset in {}",
        reset - at
    );
    let body = refused.json();
    assert_eq!(body["error"]["details"]["policy"], "per-client");
    assert_eq!(body["error"]["details"]["limit"], 100);
    assert_eq!(body["error"]["details"]["retry_after_seconds"], retry_after);
    assert_eq!(upstream.hits(), 100, "the refused request never reached the upstream");

    // A route without limits is untouched, and has no rate-limit headers.
    let free = send(gw.addr, "GET", "/free", &[]).await;
    assert_eq!(free.status, 200);
    assert!(free.header("x-ratelimit-limit").is_none() && free.header("ratelimit").is_none());
}

#[tokio::test]
async fn the_window_reopens_when_retry_after_says() {
    let upstream = Upstream::start("api").await;
    let gw = gateway(
        &upstream,
        "",
        r#"
[[rate_limit]]
name = "burst"
key = "client"
limit = "2/second"

[[route]]
path = "/api"
upstream = "api"
auth = "none"
rate_limits = ["burst"]
"#,
    )
    .await;
    // Two in this second, then refused until the next second begins. A loaded machine may send
    // the three across a window's end (each response's reset says which window counted it):
    // then again, in the next window.
    let mut sent = 0;
    let refused = loop {
        common::within_one_window(1, Duration::from_millis(700)).await;
        let first = send(gw.addr, "GET", "/api", &[]).await;
        let second = send(gw.addr, "GET", "/api", &[]).await;
        let third = send(gw.addr, "GET", "/api", &[]).await;
        let windows: Vec<u64> = [&first, &second, &third].iter().map(|r| header_u64(r, "x-ratelimit-reset")).collect();
        sent += [&first, &second, &third].iter().filter(|r| r.status == 200).count();
        if windows[0] == windows[2] {
            assert_eq!((first.status, second.status), (200, 200));
            break third;
        }
    };
    assert_error(&refused, 429, "RATE_LIMITED");
    assert_eq!(header_u64(&refused, "retry-after"), 1);
    let reset = header_u64(&refused, "x-ratelimit-reset");
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    tokio::time::sleep(Duration::from_millis((reset * 1000).saturating_sub(now_ms) + 20)).await;
    let reopened = send(gw.addr, "GET", "/api", &[]).await;
    assert_eq!(reopened.status, 200);
    assert_eq!(header_u64(&reopened, "x-ratelimit-remaining"), 1);
    assert_eq!(upstream.hits(), sent + 1);
}

#[tokio::test]
async fn limits_per_key_are_independent() {
    let upstream = Upstream::start("api").await;
    let gw = gateway(
        &upstream,
        "",
        r#"
[[rate_limit]]
name = "tenant"
key = "header:X-Tenant"
limit = "2/hour"

[[rate_limit]]
name = "caller"
key = "identity"
limit = "2/hour"

[[route]]
path = "/tenant"
upstream = "api"
auth = "none"
rate_limits = ["tenant"]

[[route]]
path = "/caller"
upstream = "api"
auth = "optional"
rate_limits = ["caller"]

[[route]]
path = "/open"
upstream = "api"
auth = "none"
rate_limits = ["caller"]
"#,
    )
    .await;
    common::within_one_window(3600, Duration::from_secs(30)).await;
    let tenant = |t: &'static str| [("X-Tenant", t)];
    for _ in 0..2 {
        assert_eq!(send(gw.addr, "GET", "/tenant", &tenant("red")).await.status, 200);
    }
    assert_error(&send(gw.addr, "GET", "/tenant", &tenant("red")).await, 429, "RATE_LIMITED");
    assert_eq!(send(gw.addr, "GET", "/tenant", &tenant("blue")).await.status, 200);
    // Without the header the client address is the key: its own budget.
    assert_eq!(send(gw.addr, "GET", "/tenant", &[]).await.status, 200);

    // Identities: each key its own budget, and anonymous callers counted by address.
    for _ in 0..2 {
        assert_eq!(send(gw.addr, "GET", "/caller", &[("X-API-Key", KEY_A)]).await.status, 200);
    }
    let refused = send(gw.addr, "GET", "/caller", &[("X-API-Key", KEY_A)]).await;
    assert_error(&refused, 429, "RATE_LIMITED");
    assert_eq!(refused.json()["error"]["details"]["policy"], "caller");
    assert_eq!(send(gw.addr, "GET", "/caller", &[("X-API-Key", KEY_B)]).await.status, 200);
    assert_eq!(send(gw.addr, "GET", "/caller", &[]).await.status, 200);
    assert_eq!(send(gw.addr, "GET", "/caller", &[]).await.status, 200);
    assert_error(&send(gw.addr, "GET", "/caller", &[]).await, 429, "RATE_LIMITED");
    // Where nobody is identified (auth = "none"), an identity policy counts by address, and
    // keys are not even read. (A separate budget from /caller's: one policy, but this test's
    // address already spent its anonymous two there.)
    assert_error(&send(gw.addr, "GET", "/open", &[("X-API-Key", KEY_A)]).await, 429, "RATE_LIMITED");
    assert_eq!(upstream.hits(), 4 + 5);
}

#[tokio::test]
async fn a_forged_forwarded_for_does_not_escape_the_limit() {
    let limits = r#"
[[rate_limit]]
name = "per-client"
key = "client"
limit = "3/hour"

[[route]]
path = "/api"
upstream = "api"
auth = "none"
rate_limits = ["per-client"]
"#;
    let upstream = Upstream::start("api").await;
    common::within_one_window(3600, Duration::from_secs(30)).await;

    // The test client (127.0.0.1) is not a trusted proxy: its X-Forwarded-For is ignored.
    let untrusted = gateway(&upstream, "", limits).await;
    for i in 0..3 {
        let xff = format!("198.51.100.{i}");
        assert_eq!(send(untrusted.addr, "GET", "/api", &[("X-Forwarded-For", &xff)]).await.status, 200);
    }
    let forged = send(untrusted.addr, "GET", "/api", &[("X-Forwarded-For", "198.51.100.77")]).await;
    assert_error(&forged, 429, "RATE_LIMITED");

    // Behind a trusted proxy, each client it reports has its own budget, and a client cannot
    // escape by prepending addresses of its own.
    let trusted = gateway(&upstream, "trusted_proxies = [\"127.0.0.1\"]", limits).await;
    for client in ["203.0.113.1", "203.0.113.2"] {
        for _ in 0..3 {
            assert_eq!(send(trusted.addr, "GET", "/api", &[("X-Forwarded-For", client)]).await.status, 200);
        }
    }
    let spoofed = send(trusted.addr, "GET", "/api", &[("X-Forwarded-For", "10.9.9.9, 203.0.113.1")]).await;
    assert_error(&spoofed, 429, "RATE_LIMITED");
}

#[tokio::test]
async fn failed_authentication_is_limited_per_client_before_any_check() {
    let upstream = Upstream::start("api").await;
    let gw = gateway(
        &upstream,
        "auth_failure_limit = \"3/hour\"",
        r#"
[[route]]
path = "/api"
upstream = "api"
permissions = ["read_models"]

[[route]]
path = "/public"
upstream = "api"
auth = "none"
"#,
    )
    .await;
    common::within_one_window(3600, Duration::from_secs(30)).await;
    // Requests without credentials are not guesses: they do not count.
    for _ in 0..5 {
        assert_error(&send(gw.addr, "GET", "/api", &[]).await, 401, "AUTHENTICATION_FAILED");
    }
    let guess = "pk_test_cccccccccccccccccccccccccccccccccccccccc";
    for _ in 0..3 {
        assert_error(&send(gw.addr, "GET", "/api", &[("X-API-Key", guess)]).await, 401, "AUTHENTICATION_FAILED");
    }
    // Now even the right key is not looked at from this address.
    let blocked = send(gw.addr, "GET", "/api", &[("X-API-Key", KEY_A)]).await;
    assert_error(&blocked, 429, "RATE_LIMITED");
    assert_eq!(blocked.json()["error"]["details"]["policy"], "auth_failures");
    assert!(header_u64(&blocked, "retry-after") >= 1);
    assert_eq!(header_u64(&blocked, "x-ratelimit-limit"), 3);
    assert_eq!(header_u64(&blocked, "x-ratelimit-remaining"), 0);
    assert!(blocked.header("ratelimit").unwrap().starts_with("\"auth_failures\";r=0;t="));
    // Routes that read no credentials still serve.
    assert_eq!(send(gw.addr, "GET", "/public", &[]).await.status, 200);
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn address_limits_run_before_authentication_and_identity_limits_after() {
    let upstream = Upstream::start("api").await;
    let gw = gateway(
        &upstream,
        "auth_failure_limit = \"off\"",
        r#"
[[rate_limit]]
name = "per-client"
key = "client"
limit = "4/hour"

[[rate_limit]]
name = "per-caller"
key = "identity"
limit = "1/hour"

[[route]]
path = "/api"
upstream = "api"
permissions = ["read_models"]
rate_limits = ["per-caller", "per-client"]
"#,
    )
    .await;
    common::within_one_window(3600, Duration::from_secs(30)).await;
    // Bad credentials use the address budget (the check ran before them) but not an identity's.
    let bad = send(gw.addr, "GET", "/api", &[("X-API-Key", "pk_test_wrong")]).await;
    assert_error(&bad, 401, "AUTHENTICATION_FAILED");
    assert_eq!(header_u64(&bad, "x-ratelimit-remaining"), 3, "a 401 carries the standing too");
    assert_eq!(send(gw.addr, "GET", "/api", &[("X-API-Key", KEY_A)]).await.status, 200);
    // The identity limit is the tightest: it sets the headers.
    let second = send(gw.addr, "GET", "/api", &[("X-API-Key", KEY_A)]).await;
    assert_error(&second, 429, "RATE_LIMITED");
    assert_eq!(second.json()["error"]["details"]["policy"], "per-caller");
    assert_eq!(header_u64(&second, "x-ratelimit-limit"), 1);
    // The address policy counted it all the same (it counts every request that reaches it, as
    // it did the 401): one is left, for key b.
    let b = send(gw.addr, "GET", "/api", &[("X-API-Key", KEY_B)]).await;
    assert_eq!(b.status, 200);
    assert_eq!(header_u64(&b, "x-ratelimit-remaining"), 0);
    assert_eq!(b.header("ratelimit-policy"), Some("\"per-client\";q=4;w=3600, \"per-caller\";q=1;w=3600"));
    // The address budget is spent: cut before any credential is read.
    for headers in [&[][..], &[("X-API-Key", "pk_test_wrong")][..], &[("X-API-Key", KEY_B)][..]] {
        let cut = send(gw.addr, "GET", "/api", headers).await;
        assert_error(&cut, 429, "RATE_LIMITED");
        assert_eq!(cut.json()["error"]["details"]["policy"], "per-client");
    }
    assert_eq!(upstream.hits(), 2);
}

#[test]
fn bad_rate_limit_settings_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = |extra: &str, route: &str| {
        format!(
            "[server]\nallowed_hosts = [\"localhost\"]\n[[listener]]\naddress = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"api\"\ntargets = [\"builtin:echo\"]\n{extra}\n\
             [[route]]\npath = \"/\"\nupstream = \"api\"\nauth = \"none\"\n{route}"
        )
    };
    let policy = "[[rate_limit]]\nname = \"p\"\nkey = \"client\"\nlimit = \"10/minute\"\n";
    let cases = [
        (base(policy, "rate_limits = [\"q\"]"), "route[0].rate_limits[0]", "no [[rate_limit]] is named \"q\""),
        (base(policy, "rate_limits = [\"p\", \"p\"]"), "route[0].rate_limits[1]", "listed twice"),
        (base(&policy.replace("10/minute", "10/fortnight"), ""), "rate_limit[0].limit", "N/minute"),
        (base(&policy.replace("10/minute", "0/minute"), ""), "rate_limit[0].limit", "allows no request"),
        (base(&policy.replace("\"client\"", "\"ip\""), ""), "rate_limit[0].key", "header:NAME"),
        (base(&policy.replace("\"client\"", "\"header:bad name\""), ""), "rate_limit[0].key", "not a header name"),
        (base(&format!("{policy}{policy}"), ""), "rate_limit[1].name", "names two policies"),
        (base(&policy.replace("name = \"p\"", "name = \"a\\\"b\""), ""), "rate_limit[0].name", "not a policy name"),
        (
            base("", "").replace("[server]\n", "[server]\nauth_failure_limit = \"lots\"\n"),
            "server.auth_failure_limit",
            "\"off\"",
        ),
        (base(&policy.replace("\"client\"", "\"header:X-Forwarded-For\""), ""), "rate_limit[0].key", "fresh budget"),
        (base(&policy.replace("\"client\"", "\"header:X-API-Key\""), ""), "rate_limit[0].key", "fresh budget"),
        (base(&policy.replace("name = \"p\"", "name = \"auth_failures\""), ""), "rate_limit[0].name", "choose another"),
        // A refused policy is reported once, not again by the routes naming it.
        (
            base(&policy.replace("10/minute", "ten/minute"), "rate_limits = [\"p\"]"),
            "rate_limit[0].limit",
            "not a rate",
        ),
    ];
    for (text, key, words) in cases {
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, &text).unwrap();
        let (code, out, err) = common::run_cli(&["check", "-c", file.to_str().unwrap()], None);
        assert_eq!(code, 78, "{text}: {out}");
        assert!(err.contains(key) && err.contains(words), "{key}: {err}");
        assert!(!err.contains("no [[rate_limit]] is named \"p\""), "{err}");
    }
}
