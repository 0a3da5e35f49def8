//! Upstreams: round robin, failover on connect errors, 502 and 504 as JSON without internals.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_error, get_with_host, refusing_port, Gateway, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

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

/// A TCP server that is not an HTTP server: it reads each request head, writes `reply` and
/// closes the connection. Returns its address and how many connections it accepted.
async fn broken_upstream(reply: &'static [u8]) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(reply).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_broken_upstream_response_is_502_without_internals() {
    for reply in [&b"NOT HTTP\r\n\r\n"[..], b"HTTP/1.1 two hundred\r\n\r\n", b""] {
        let (addr, accepted) = broken_upstream(reply).await;
        let gw = Gateway::start(&config(&[addr.to_string()], "5s")).await;
        let resp = get_with_host(gw.addr, "/x", "localhost").await;
        assert_error(&resp, 502, "UPSTREAM_UNAVAILABLE");
        let body = String::from_utf8_lossy(&resp.body);
        assert!(!body.contains("NOT HTTP") && !body.contains(&addr.port().to_string()), "{body}");
        // The request was sent on a fresh connection: it is not sent again.
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "reply {:?}", String::from_utf8_lossy(reply));
    }
}

/// A listener whose accept queue is full: the kernel drops the SYNs of further connections,
/// so a connect to it hangs as one to a host that never answers would. (A non-routable address
/// such as 10.255.255.1 cannot stand for one where the network answers every address at once,
/// as the one these tests were written on does.)
async fn unanswered_address() -> (tokio::net::TcpListener, Vec<TcpStream>, SocketAddr) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    // Fill the queue (never accepted), until a connect does not complete within a second.
    let mut queued = Vec::new();
    while let Ok(stream) = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await {
        queued.push(stream.unwrap());
        assert!(queued.len() < 64, "the accept queue of {addr} never filled");
    }
    (listener, queued, addr)
}

#[tokio::test]
async fn a_connect_timeout_is_504() {
    let (_listener, _queued, addr) = unanswered_address().await;
    let gw = Gateway::start(
        &config(&[addr.to_string()], "5s").replace("connect_timeout = \"1s\"", "connect_timeout = \"300ms\""),
    )
    .await;
    let started = Instant::now();
    let resp = get_with_host(gw.addr, "/x", "localhost").await;
    let waited = started.elapsed();
    assert_error(&resp, 504, "UPSTREAM_TIMEOUT");
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(3), "answered after {waited:?}");
    let body = String::from_utf8_lossy(&resp.body);
    assert!(!body.contains(&addr.port().to_string()), "{body}");
}
