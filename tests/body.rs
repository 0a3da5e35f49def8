//! Request body limits: 413 before reading a declared oversize body, 413 when a streamed body
//! grows past the limit.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{assert_error, eventually, raw, read_response, Gateway, Upstream};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

async fn setup(target: &str) -> Gateway {
    let config = format!(
        r#"
[server]
allowed_hosts = ["localhost"]
max_body_size = "1KiB"

[[upstream]]
name = "api"
targets = ["{target}"]

[[route]]
name = "all"
path = "/"
upstream = "api"
auth = "none"
"#
    );
    Gateway::start(&config).await
}

fn post(len: usize) -> Vec<u8> {
    let mut req =
        format!("POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
            .into_bytes();
    req.extend(std::iter::repeat_n(b'x', len));
    req
}

fn chunked(chunks: &[usize]) -> Vec<u8> {
    let mut req =
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for &n in chunks {
        req.extend(format!("{n:x}\r\n").into_bytes());
        req.extend(std::iter::repeat_n(b'y', n));
        req.extend(b"\r\n");
    }
    req.extend(b"0\r\n\r\n");
    req
}

#[tokio::test]
async fn bodies_within_the_limit_pass_whole() {
    let upstream = Upstream::start("api").await;
    let gw = setup(&upstream.addr.to_string()).await;
    let resp = raw(gw.addr, &post(1024)).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["body_bytes"], 1024);
    let resp = raw(gw.addr, &chunked(&[500, 524])).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["body_bytes"], 1024);
}

#[tokio::test]
async fn declared_oversize_body_is_refused_before_it_is_sent() {
    let upstream = Upstream::start("api").await;
    let gw = setup(&upstream.addr.to_string()).await;
    // Only the header is sent: the answer must not wait for a body.
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1073741824\r\n\r\n").await.unwrap();
    let resp = read_response(&mut stream).await;
    assert_error(&resp, 413, "PAYLOAD_TOO_LARGE");
    assert_eq!(resp.json()["error"]["details"]["max_body_size"], 1024);
    assert_eq!(resp.header("connection"), Some("close"));
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn streamed_body_past_the_limit_is_cut_off_with_413() {
    let upstream = Upstream::start("api").await;
    let gw = setup(&upstream.addr.to_string()).await;
    let resp = raw(gw.addr, &chunked(&[600, 600, 600])).await;
    assert_error(&resp, 413, "PAYLOAD_TOO_LARGE");
    // The rest of the body was never read: the connection cannot be reused.
    assert_eq!(resp.header("connection"), Some("close"));
}

#[tokio::test]
async fn http2_bodies_are_counted_too() {
    let upstream = Upstream::start("api").await;
    let config = format!(
        "[server]\nallowed_hosts = [\"localhost\"]\nmax_body_size = \"1KiB\"\n[[upstream]]\nname = \"api\"\ntargets = [\"{}\"]\n[[route]]\npath = \"/\"\nupstream = \"api\"\nauth = \"none\"\n",
        upstream.addr
    );
    let gw = Gateway::start_with(&config, "h2c = true").await;
    for (size, status) in [(1000usize, 200u16), (3000, 413)] {
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let request = http::Request::post("http://localhost/upload").body(()).unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        // Sent in chunks, without content-length: only counting can stop it.
        for _ in 0..size / 500 {
            body.reserve_capacity(500);
            let _ = body.send_data(bytes::Bytes::from(vec![b'z'; 500]), false);
        }
        let _ = body.send_data(bytes::Bytes::new(), true);
        let response = response.await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{size} bytes");
    }
}

#[tokio::test]
async fn echo_counts_streamed_bodies_against_the_limit_too() {
    let gw = setup("builtin:echo").await;
    let resp = raw(gw.addr, &chunked(&[1000])).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["body_bytes"], 1000);
    let resp = raw(gw.addr, &chunked(&[1000, 1000])).await;
    assert_error(&resp, 413, "PAYLOAD_TOO_LARGE");
    let resp = raw(gw.addr, &post(1025)).await;
    assert_error(&resp, 413, "PAYLOAD_TOO_LARGE");
}

/// What an upstream received of one request's body: how many bytes, and how it ended (`None`:
/// not yet; `Some(true)`: complete, as its framing said; `Some(false)`: cut off).
#[derive(Debug, Clone, Default)]
struct Received {
    bytes: usize,
    complete: Option<bool>,
}

/// An upstream that records, request by request, what arrived of each body as it streams.
struct RecordingUpstream {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Received>>>,
}

/// Marks a request cut off if its handler is dropped before the body ended (hyper drops it
/// when the connection fails).
struct CutOffUnlessEnded(Arc<Mutex<Vec<Received>>>, usize);

impl Drop for CutOffUnlessEnded {
    fn drop(&mut self) {
        let mut requests = self.0.lock().unwrap();
        requests[self.1].complete.get_or_insert(false);
    }
}

impl RecordingUpstream {
    async fn start() -> RecordingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let recorded = recorded.clone();
                        async move {
                            let index = {
                                let mut requests = recorded.lock().unwrap();
                                requests.push(Received::default());
                                requests.len() - 1
                            };
                            let guard = CutOffUnlessEnded(recorded.clone(), index);
                            let mut body = req.into_body();
                            let complete = loop {
                                match body.frame().await {
                                    Some(Ok(frame)) => {
                                        let len = frame.data_ref().map_or(0, Bytes::len);
                                        recorded.lock().unwrap()[index].bytes += len;
                                    }
                                    Some(Err(_)) => break false,
                                    None => break true,
                                }
                            };
                            recorded.lock().unwrap()[index].complete = Some(complete);
                            drop(guard);
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"received"))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        RecordingUpstream { addr, requests }
    }

    /// What request `index` has delivered so far, if it arrived.
    fn request(&self, index: usize) -> Option<Received> {
        self.requests.lock().unwrap().get(index).cloned()
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

/// Waits until the upstream's request `index` has received `bytes` body bytes, for `what`.
async fn wait_received(upstream: &RecordingUpstream, index: usize, bytes: usize, what: &str) {
    eventually(&format!("{what}: the upstream received {bytes} body bytes"), || {
        upstream.request(index).is_some_and(|r| r.bytes >= bytes)
    })
    .await;
}

/// Waits until the upstream's request `index` has ended, and asserts it ended cut off.
async fn assert_cut_off(upstream: &RecordingUpstream, index: usize, what: &str) {
    eventually(&format!("{what}: the upstream's request ended"), || {
        upstream.request(index).is_some_and(|r| r.complete.is_some())
    })
    .await;
    let received = upstream.request(index).unwrap();
    assert_eq!(
        received.complete,
        Some(false),
        "{what}: a cut-off body reached the upstream as a whole one: {received:?}"
    );
}

/// A client that closes its connection before its body's end: the upstream has the request and
/// the bytes sent so far, but never a request that ends as if the body were whole (a last
/// chunk, or the declared length, made up by the gateway).
#[tokio::test]
async fn an_http1_body_cut_off_never_reaches_the_upstream_whole() {
    let upstream = RecordingUpstream::start().await;
    let gw = setup(&upstream.addr.to_string()).await;
    let fifty = "b".repeat(50);
    let cases = [
        ("chunked, closed inside a chunk", "Transfer-Encoding: chunked", format!("100\r\n{fifty}")),
        ("chunked, closed before the last chunk", "Transfer-Encoding: chunked", format!("32\r\n{fifty}\r\n")),
        ("Content-Length, closed before the length", "Content-Length: 200", fifty.clone()),
    ];
    for (index, (what, framing, sent)) in cases.iter().enumerate() {
        let mut client = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let head = format!("POST /upload HTTP/1.1\r\nHost: localhost\r\n{framing}\r\n\r\n");
        client.write_all(head.as_bytes()).await.unwrap();
        client.write_all(sent.as_bytes()).await.unwrap();
        // The gateway streams the body: the upstream has the request and the 50 bytes.
        wait_received(&upstream, index, 50, what).await;
        drop(client);
        assert_cut_off(&upstream, index, what).await;
        assert_eq!(upstream.request(index).unwrap().bytes, 50, "{what}");
    }
    assert_eq!(upstream.count(), cases.len(), "a cut-off request was sent again");
}

/// The same over HTTP/2: a stream reset before END_STREAM, or the connection dropped, never
/// delivers the body to the upstream as a whole one.
#[tokio::test]
async fn an_http2_body_reset_before_its_end_never_reaches_the_upstream_whole() {
    let upstream = RecordingUpstream::start().await;
    let config = format!(
        "[server]\nallowed_hosts = [\"localhost\"]\nmax_body_size = \"1KiB\"\n[[upstream]]\nname = \"api\"\ntargets = [\"{}\"]\n[[route]]\npath = \"/\"\nupstream = \"api\"\nauth = \"none\"\n",
        upstream.addr
    );
    let gw = Gateway::start_with(&config, "h2c = true").await;
    let cases = ["RST_STREAM CANCEL", "RST_STREAM NO_ERROR", "connection dropped"];
    for (index, what) in cases.iter().enumerate() {
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        let driver = tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let request = http::Request::post("http://localhost/upload").body(()).unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        body.send_data(Bytes::from(vec![b'z'; 50]), false).unwrap();
        wait_received(&upstream, index, 50, what).await;
        match *what {
            "RST_STREAM CANCEL" => body.send_reset(h2::Reason::CANCEL),
            "RST_STREAM NO_ERROR" => body.send_reset(h2::Reason::NO_ERROR),
            _ => driver.abort(),
        }
        assert_cut_off(&upstream, index, what).await;
        assert_eq!(upstream.request(index).unwrap().bytes, 50, "{what}");
        drop(response);
    }
    assert_eq!(upstream.count(), cases.len(), "a cut-off request was sent again");
}
