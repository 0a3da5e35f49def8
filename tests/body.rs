//! Request body limits: 413 before reading a declared oversize body, 413 when a streamed body
//! grows past the limit.
#![allow(clippy::unwrap_used)]

mod common;

use common::{assert_error, raw, read_response, Gateway, Upstream};
use tokio::io::AsyncWriteExt;

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
