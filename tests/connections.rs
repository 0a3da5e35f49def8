//! Client connections before the pipeline: a request head slower than `header_timeout` gets
//! 408 and is closed while other clients keep being served, idle connections are closed, heads
//! over `max_header_size` get 431, and connections past `max_connections` or
//! `max_connections_per_client` are closed at accept, each counted.
#![allow(clippy::unwrap_used)]

#[path = "common/certs.rs"]
mod certs;
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{assert_error, read_response, reserve_addr, send, wait_listening, Gateway, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(server: &str, listener: &str) -> (Gateway, Upstream, SocketAddr) {
    let upstream = Upstream::start("api").await;
    let admin = reserve_addr();
    let config = format!(
        r#"
[server]
allowed_hosts = ["localhost"]
{server}

[admin]
address = "{admin}"

[[upstream]]
name = "api"
targets = ["{addr}"]

[[route]]
path = "/"
upstream = "api"
auth = "none"
"#,
        addr = upstream.addr,
    );
    let gw = Gateway::start_with(&config, listener).await;
    wait_listening(admin).await;
    (gw, upstream, admin)
}

/// Reads until the peer closes (or 5 s pass): what the gateway sent before closing.
async fn until_closed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut all)).await {
        Ok(_) => Some(all),
        Err(_) => None,
    }
}

async fn rejected(admin: SocketAddr, reason: &str) -> u64 {
    let scrape = String::from_utf8(send(admin, "GET", "/metrics", &[]).await.body).unwrap();
    let series = format!("portcullis_connections_rejected_total{{reason=\"{reason}\"}} ");
    scrape.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_slow_request_head_gets_408_while_other_clients_are_served() {
    let (gw, upstream, admin) = start("header_timeout = \"1s\"", "").await;
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    let started = Instant::now();
    // Meanwhile a normal client keeps working, and the slow one trickles header lines.
    let mut served = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        assert_eq!(send(gw.addr, "GET", "/fast", &[]).await.status, 200);
        served += 1;
        let _ = slow.write_all(b"X-More: 1\r\n").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = until_closed(&mut slow).await.expect("the slow connection was closed");
    let closed_after = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{text}");
    assert!(text.to_ascii_lowercase().contains("connection: close"), "{text}");
    let body: serde_json::Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "REQUEST_TIMEOUT");
    assert!(body["error"]["request_id"].as_str().is_some_and(|id| id.len() == 36), "{body}");
    assert!(closed_after >= Duration::from_millis(950), "closed after {closed_after:?}");
    assert!(served >= 10, "{served}");
    assert_eq!(upstream.hits(), served, "the slow request never reached the upstream");
    assert_eq!(rejected(admin, "header_timeout").await, 1);
}

#[tokio::test]
async fn connections_that_send_nothing_and_idle_keep_alive_ones_are_closed() {
    let (gw, _upstream, admin) = start("header_timeout = \"1s\"\nidle_timeout = \"1s\"", "").await;
    // A new connection that never sends a byte: closed at header_timeout, with no answer.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    assert_eq!(until_closed(&mut silent).await.expect("closed"), b"");
    assert!(started.elapsed() >= Duration::from_millis(950));
    // A keep-alive connection: served, then closed after idle_timeout without a request.
    let mut kept = TcpStream::connect(gw.addr).await.unwrap();
    kept.write_all(b"GET /a HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut kept).await.status, 200);
    kept.write_all(b"GET /b HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut kept).await.status, 200, "keep-alive still works");
    let idle_from = Instant::now();
    assert_eq!(until_closed(&mut kept).await.expect("closed"), b"");
    let idle = idle_from.elapsed();
    assert!(idle >= Duration::from_millis(950) && idle < Duration::from_secs(3), "closed after {idle:?}");
    // Neither is a rejection: nothing was refused.
    assert_eq!(rejected(admin, "header_timeout").await, 0);
}

#[tokio::test]
async fn a_head_over_max_header_size_gets_431() {
    let (gw, upstream, admin) = start("max_header_size = \"2KiB\"", "").await;
    let big = "x".repeat(3000);
    let resp = send(gw.addr, "GET", "/", &[("X-Big", &big)]).await;
    assert_error_raw(&resp, 431, "HEADERS_TOO_LARGE");
    assert_eq!(resp.json()["error"]["details"]["max_header_size"], 2048);
    assert_eq!(rejected(admin, "header_too_large").await, 1);
    // The limit does not depend on how the client splits its writes.
    let mut split = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!("GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n", "y".repeat(3500));
    split.write_all(&head.as_bytes()[..1500]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    split.write_all(&head.as_bytes()[1500..]).await.unwrap();
    let answer = until_closed(&mut split).await.expect("closed");
    assert!(answer.starts_with(b"HTTP/1.1 431 "), "{}", String::from_utf8_lossy(&answer));
    assert_eq!(rejected(admin, "header_too_large").await, 2);
    // Just under the limit passes.
    let fits = "x".repeat(1500);
    assert_eq!(send(gw.addr, "GET", "/", &[("X-Big", &fits)]).await.status, 200);
    assert_eq!(upstream.hits(), 1);
}

/// The 408 and 431 answers are written before any route is known: JSON, a request id, and
/// `Connection: close`, like every other refusal.
fn assert_error_raw(resp: &common::RawResponse, status: u16, code: &str) {
    assert_error(resp, status, code);
    assert_eq!(resp.header("connection"), Some("close"));
}

#[tokio::test]
async fn connections_past_the_per_client_limit_are_closed_at_accept() {
    let (gw, _upstream, admin) = start("max_connections_per_client = 3", "").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(gw.addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        assert_eq!(read_response(&mut c).await.status, 200);
        open.push(c);
    }
    let mut fourth = TcpStream::connect(gw.addr).await.unwrap();
    let _ = fourth.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(until_closed(&mut fourth).await.expect("closed").is_empty(), "no answer past the limit");
    assert_eq!(rejected(admin, "max_connections_per_client").await, 1);
    // One leaves: a new one is admitted.
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(send(gw.addr, "GET", "/", &[]).await.status, 200);
}

/// Behind a load balancer every client shares its address: trusted proxies are not limited
/// per client, only by `max_connections`.
#[tokio::test]
async fn trusted_proxies_are_limited_only_in_total() {
    let (gw, _upstream, admin) =
        start("trusted_proxies = [\"127.0.0.1\"]\nmax_connections = 4\nmax_connections_per_client = 2", "").await;
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(gw.addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        assert_eq!(read_response(&mut c).await.status, 200, "past the per-client limit, as a trusted proxy");
        open.push(c);
    }
    let mut fifth = TcpStream::connect(gw.addr).await.unwrap();
    let _ = fifth.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(until_closed(&mut fifth).await.expect("closed").is_empty());
    assert_eq!(rejected(admin, "max_connections").await, 1);
    assert_eq!(rejected(admin, "max_connections_per_client").await, 0);
}

#[tokio::test]
async fn h2c_clients_must_send_the_preface_within_header_timeout() {
    let (gw, _upstream, _admin) = start("header_timeout = \"1s\"", "h2c = true").await;
    // HTTP/2 with prior knowledge works, and so does HTTP/1.1 on the same listener.
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder().uri(format!("http://localhost:{}/h2", gw.addr.port())).body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    assert_eq!(send(gw.addr, "GET", "/h1", &[]).await.status, 200);
    // Half a preface, then nothing: closed at header_timeout.
    let mut partial = TcpStream::connect(gw.addr).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let started = Instant::now();
    assert!(until_closed(&mut partial).await.is_some(), "still open");
    assert!(started.elapsed() >= Duration::from_millis(950));
}

/// A gateway with one TLS listener for `localhost` (header_timeout 1 s, and `server` keys),
/// its upstream, its admin address and the directory holding `ca.pem`.
async fn start_tls(server: &str) -> (Gateway, Upstream, SocketAddr, tempfile::TempDir) {
    let upstream = Upstream::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = certs::Ca::new("Test CA");
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let (cert, key) = ca.server(&["localhost"]).write(dir.path(), "site");
    let admin = reserve_addr();
    let addr = upstream.addr;
    let gw = Gateway::start_from(|listen| {
        format!(
            "[server]\nallowed_hosts = [\"localhost\"]\nheader_timeout = \"1s\"\n{server}\n\
             [admin]\naddress = \"{admin}\"\n[[upstream]]\nname = \"api\"\ntargets = [\"{addr}\"]\n\
             [[route]]\npath = \"/\"\nupstream = \"api\"\nauth = \"none\"\n\
             [[listener]]\naddress = \"{listen}\"\n[listener.tls]\n[[listener.tls.certificate]]\ncert = \"{}\"\nkey = \"file:{}\"\n",
            cert.display(),
            key.display()
        )
    })
    .await;
    wait_listening(admin).await;
    (gw, upstream, admin, dir)
}

/// A TLS request to `localhost` at `gateway` over `tcp`, trusting `ca.pem` in `dir`: the status.
fn tls_get(dir: &std::path::Path, tcp: std::net::TcpStream) -> String {
    use openssl::ssl::{SslConnector, SslMethod};
    use std::io::{Read, Write};
    let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
    builder.set_ca_file(dir.join("ca.pem")).unwrap();
    let mut tls = builder.build().connect("localhost", tcp).unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).split(' ').nth(1).unwrap_or("").to_string()
}

/// The bytes of a real ClientHello for `localhost` (OpenSSL's, as any client sends it).
fn client_hello() -> Vec<u8> {
    use openssl::ssl::{SslConnector, SslMethod};
    /// Keeps what the handshake writes; has nothing to read.
    #[derive(Debug)]
    struct Capture(Vec<u8>);
    impl std::io::Read for Capture {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::WouldBlock.into())
        }
    }
    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let connector = SslConnector::builder(SslMethod::tls_client()).unwrap().build();
    match connector.connect("localhost", Capture(Vec::new())) {
        Err(openssl::ssl::HandshakeError::WouldBlock(mid)) => mid.get_ref().0.clone(),
        other => panic!("the handshake did not wait for the server: {other:?}"),
    }
}

/// A TLS client is admitted before its handshake: a stalled ClientHello counts toward the
/// limits and is closed at `header_timeout`, rather than holding a connection for Pingora's 60 s
/// handshake limit.
#[tokio::test]
async fn tls_handshakes_count_toward_the_limits_and_must_start_within_header_timeout() {
    let (gw, _upstream, admin, dir) = start_tls("max_connections_per_client = 3").await;
    // Three clients that start a ClientHello and stop: in the record header, after a record
    // holding a byte of it, after a record holding its message header.
    let starts: [&[u8]; 3] = [
        &[0x16, 0x03, 0x01, 0x02, 0x00],
        &[0x16, 0x03, 0x01, 0x00, 0x01, 0x01],
        &[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x02, 0x00],
    ];
    let mut stalled = Vec::new();
    for start in starts {
        let mut c = TcpStream::connect(gw.addr).await.unwrap();
        c.write_all(start).await.unwrap();
        stalled.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let mut fourth = TcpStream::connect(gw.addr).await.unwrap();
    assert_eq!(until_closed(&mut fourth).await.expect("closed"), b"", "over the per-client limit");
    drop(fourth);
    assert!(started.elapsed() < Duration::from_millis(800), "refused at accept, not at a timeout");
    assert!(rejected(admin, "max_connections_per_client").await >= 1);
    for (c, start) in stalled.iter_mut().zip(starts) {
        assert!(until_closed(c).await.is_some(), "a ClientHello stalled after {start:02x?} outlived header_timeout");
    }
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(rejected(admin, "header_timeout").await >= 3);
    // One that sends a whole ClientHello and stalls in the handshake: cut at header_timeout
    // (checked every second), not at Pingora's 60 s.
    let started = Instant::now();
    let mut stalls = TcpStream::connect(gw.addr).await.unwrap();
    stalls.write_all(&client_hello()).await.unwrap();
    let answer = until_closed(&mut stalls).await.expect("a stalled handshake outlived header_timeout");
    assert_eq!(answer[0], 0x16, "the server's handshake records came first");
    // header_timeout (1 s) and the once-a-second check; Pingora alone would wait 60 s.
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    // A real client is served once they are gone.
    let gateway = gw.addr;
    let ca = dir.path().to_path_buf();
    let first = ca.clone();
    let status = tokio::task::spawn_blocking(move || tls_get(&first, std::net::TcpStream::connect(gateway).unwrap()));
    assert_eq!(status.await.unwrap(), "200");
    // A client that connected just before SIGTERM, and is slow to start its handshake, is still
    // served: handshakes under way are waited for, a little.
    let early = std::net::TcpStream::connect(gateway).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = tokio::task::spawn_blocking(move || tls_get(&ca, early)).await.unwrap();
    assert_eq!(status, "200", "the connection accepted before SIGTERM was dropped");
}

/// Plain HTTP (or anything else) sent to a TLS listener is refused at its first bytes, a
/// handshake that fails gives its place back to its client, and the error line Pingora writes
/// for each failed handshake is held to one a second.
#[tokio::test]
async fn what_is_not_a_client_hello_is_refused_and_failed_handshakes_do_not_lock_a_client_out() {
    let (gw, _upstream, admin, dir) = start_tls("max_connections_per_client = 3").await;
    let started = Instant::now();
    let mut plain = TcpStream::connect(gw.addr).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    assert_eq!(until_closed(&mut plain).await.expect("closed"), b"");
    assert!(started.elapsed() < Duration::from_millis(500), "refused at once: {:?}", started.elapsed());
    assert_eq!(rejected(admin, "bad_client_hello").await, 1);
    // Thirty handshakes that OpenSSL fails (a framed ClientHello of garbage), from one client
    // allowed three connections at a time, three at once (a failed one may hold its place until
    // the check a second later, so some may be refused meanwhile).
    for _ in 0..10 {
        let mut batch = Vec::new();
        for _ in 0..3 {
            let mut c = TcpStream::connect(gw.addr).await.unwrap();
            let mut hello = vec![0x16, 0x03, 0x01, 0x00, 0x44, 0x01, 0x00, 0x00, 0x40];
            hello.resize(hello.len() + 0x40, 0xee);
            let _ = c.write_all(&hello).await;
            batch.push(c);
        }
        for c in &mut batch {
            assert!(until_closed(c).await.is_some());
        }
    }
    // Within a second their places are back: three clients at once are served, none refused.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refused = rejected(admin, "max_connections_per_client").await;
    let gateway = gw.addr;
    let served: Vec<_> = (0..3)
        .map(|_| {
            let ca = dir.path().to_path_buf();
            let tcp = std::net::TcpStream::connect(gateway).unwrap();
            tokio::task::spawn_blocking(move || tls_get(&ca, tcp))
        })
        .collect();
    for client in served {
        assert_eq!(client.await.unwrap(), "200");
    }
    assert_eq!(rejected(admin, "max_connections_per_client").await, refused, "a failed handshake kept its place");
    let scrape = String::from_utf8(send(admin, "GET", "/metrics", &[]).await.body).unwrap();
    let series = "portcullis_log_lines_dropped_total{log=\"error\",reason=\"rate_limited\"} ";
    let dropped: u64 = scrape.lines().find_map(|l| l.strip_prefix(series)).map_or(0, |v| v.trim().parse().unwrap());
    let written = gw.stderr().lines().filter(|l| l.contains("handshake")).count();
    assert!(dropped >= 20, "{dropped} lines held back");
    assert!((1..=8).contains(&written), "{written} handshake lines written:\n{}", gw.stderr());
}
