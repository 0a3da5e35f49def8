//! Upstreams: round robin, failover on connect errors, 502 and 504 as JSON without internals.
#![allow(clippy::unwrap_used)]

mod common;

use common::{assert_error, get_with_host, refusing_port, Gateway, Upstream};

fn config(targets: &[String], read_timeout: &str) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        r#"
[server]
allowed_hosts = ["localhost"]

[[upstream]]
name = "api"
targets = [{}]
connect_timeout = "1s"
read_timeout = "{read_timeout}"

[[route]]
name = "all"
path = "/"
upstream = "api"
auth = "none"
"#,
        targets.join(", ")
    )
}

#[tokio::test]
async fn round_robin_spreads_requests() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&config(&[a.addr.to_string(), b.addr.to_string()], "5s")).await;
    for _ in 0..10 {
        assert_eq!(get_with_host(gw.addr, "/x", "localhost").await.status, 200);
    }
    assert_eq!((a.hits(), b.hits()), (5, 5));
}

#[tokio::test]
async fn a_dead_target_is_skipped() {
    let a = Upstream::start("a").await;
    let (_dead, dead) = refusing_port();
    let gw = Gateway::start(&config(&[dead.to_string(), a.addr.to_string()], "5s")).await;
    for _ in 0..6 {
        let resp = get_with_host(gw.addr, "/x", "localhost").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json()["upstream"], "a");
    }
}

#[tokio::test]
async fn no_live_target_is_502_without_internals() {
    let (_dead, dead) = refusing_port();
    let gw = Gateway::start(&config(&[dead.to_string()], "5s")).await;
    let resp = get_with_host(gw.addr, "/x", "localhost").await;
    assert_error(&resp, 502, "UPSTREAM_UNAVAILABLE");
    let body = String::from_utf8_lossy(&resp.body);
    assert!(!body.contains(&dead.port().to_string()) && !body.contains("127.0.0.1"), "{body}");
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let slow = Upstream::start("slow").await;
    let gw = Gateway::start(&config(&[slow.addr.to_string()], "300ms")).await;
    let resp = get_with_host(gw.addr, "/slow", "localhost").await;
    assert_error(&resp, 504, "UPSTREAM_TIMEOUT");
    // The next request on the same gateway is served normally.
    assert_eq!(get_with_host(gw.addr, "/fast", "localhost").await.status, 200);
}
